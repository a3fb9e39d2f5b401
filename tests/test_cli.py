"""radmin-cli's own behaviour: options after HOSTS, exit statuses, run ids, pipes, usage
errors, local errors and the messages users read.

Through the real programs (a real radmind, real radmin-cli processes), except for a few
pure functions -- the command line, the exit-status table, run_parallel -- that get
millisecond tables.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from support import (
    RADMIN_CLI,
    Daemon,
    cli_env,
    client_entry,
    make_client_home,
    new_marker,
    refused_port,
    request_events,
    restricted_entry,
    run_cli,
    start_cli,
    start_three_address_daemon,
    trust,
    wait_for_processes,
    wait_until,
    wait_until_gone,
)

from radmin.cli.command_line import parse
from radmin.cli.radmin_cli import exit_status
from radmin.client import ExecResult, PutResult
from radmin.fanout import (
    CANCELLED,
    CHANGED,
    CRASHED,
    FAILED,
    INTERRUPTED,
    OK,
    OUTPUT_CLOSED,
    REFUSED,
    SKIPPED,
    UNREACHABLE,
    HostOutcome,
    run_parallel,
)
from radmin.hosts import Target
from radmin.identity import ClientHome


class Fleet(NamedTuple):
    daemon: Daemon
    home: ClientHome
    hosts: list[str]  # one daemon on 127.0.0.1, .2 and .3: three hosts


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, server_identity) -> Iterator[Fleet]:
    daemon, home = start_three_address_daemon(tmp_path_factory.mktemp("fleet"), server_identity)
    try:
        yield Fleet(daemon, home, trust(home, daemon))
    finally:
        daemon.stop()


@pytest.fixture
def dead_host() -> Iterator[str]:
    """A host:port that refuses connections."""
    sock, port = refused_port()
    with sock:
        yield f"127.0.0.1:{port}"


def events_with(daemon: Daemon, marker: str) -> list[dict]:
    return [e for e in request_events(daemon, 1) if marker in e.get("command", "")]


# -- 1. options after HOSTS are radmin's, as with ssh -----------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["exec", "web1", "ls", "-l"], {"hosts": "web1", "command": ["ls", "-l"]}),
        (["exec", "web1", "-t", "5", "echo", "hi"], {"timeout": 5.0, "command": ["echo", "hi"]}),
        (
            ["exec", "@web", "-p", "50", "systemctl", "is-active", "nginx"],
            {"parallel": 50, "command": ["systemctl", "is-active", "nginx"]},
        ),
        (["exec", "web1,web2", "--json", "uname -r"], {"json": True, "command": ["uname -r"]}),
        # The first word that is not radmin's starts the command: the rest is its own.
        (
            ["exec", "web1", "echo", "-n", "-t", "5"],
            {"no_stdin": False, "timeout": None, "command": ["echo", "-n", "-t", "5"]},
        ),
        (["exec", "web1", "-z", "y"], {"command": ["-z", "y"]}),
        (
            ["exec", "web[1-3]", "-x", "web2", "-b", "uptime"],
            {"exclude": "web2", "gather": True, "command": ["uptime"]},
        ),
        (
            ["exec", "web1", "-t5", "-nv", "true"],
            {"timeout": 5.0, "no_stdin": True, "verbose": True},
        ),
        (["exec", "web1", "--timeout=5", "-eA=-x", "true"], {"timeout": 5.0, "env": ["A=-x"]}),
        (["exec", "-e", "B=-t", "web1", "true"], {"env": ["B=-t"], "command": ["true"]}),
        (["exec", "web1", "--", "-t", "5"], {"timeout": None, "command": ["-t", "5"]}),
        (["exec", "-t", "5", "--", "web1", "-n"], {"hosts": "web1", "command": ["-n"]}),
        (
            ["put", "app.conf", "web1", "--mode", "600", "/srv/", "--json"],
            {"file": "app.conf", "hosts": "web1", "remote_path": "/srv/", "mode": 0o600},
        ),
        (["put", "--", "-odd-name", "web1"], {"file": "-odd-name", "remote_path": None}),
        (["ping", "web1", "--json", "-p", "3"], {"hosts": "web1", "json": True, "parallel": 3}),
    ],
)
def test_command_line_options_after_hosts_are_radmins_until_the_command(argv, expected):
    args = parse(argv)
    assert {name: getattr(args, name) for name in expected} == expected


def test_exec_option_after_hosts_is_used_by_radmin_not_the_shell(fleet):
    started = time.monotonic()
    result = run_cli(fleet.home, "exec", fleet.hosts[0], "-t", "0.5", "sleep 30")
    assert result.returncode == 143, result.stderr  # /bin/sh -c '-t 0.5 sleep 30' would be 127
    assert time.monotonic() - started < 5


def test_exec_json_and_parallel_after_hosts(fleet):
    result = run_cli(fleet.home, "exec", ",".join(fleet.hosts), "-p", "2", "--json", "echo hi")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert sorted(r["host"] for r in records) == sorted(fleet.hosts)
    assert {r["stdout"] for r in records} == {"hi\n"}


def test_exec_words_after_the_command_are_the_commands_even_radmins_options(fleet):
    result = run_cli(fleet.home, "exec", fleet.hosts[0], "printf", "'%s,'", "-n", "-t", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"-n,-t,5,"


def test_put_options_after_the_operands(fleet, tmp_path):
    local = tmp_path / "app.conf"
    local.write_bytes(b"x=1\n")
    dest = fleet.daemon.folder / "uploads" / "app.conf"
    result = run_cli(fleet.home, "put", str(local), fleet.hosts[0], str(dest), "--mode", "604")
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == b"x=1\n"
    assert dest.stat().st_mode & 0o7777 == 0o604


# -- 2. one outcome -> exit status table; run_parallel never raises; ping like exec ------

T = Target("web1", "10.0.0.1", 7420)


def done(exit_code: int | None = 0, signal_number: int | None = None, timed_out=False):
    return ExecResult(exit_code, signal_number, timed_out, False, 0.1)


def outcome(kind: str, result=None, error: str | None = None) -> HostOutcome:
    return HostOutcome(T, kind, error, result)


@pytest.mark.parametrize(
    ("op", "outcomes", "stopped", "status"),
    [
        ("exec", [outcome(OK, done())], None, 0),
        ("exec", [outcome(FAILED, done(42))], None, 42),
        ("exec", [outcome(FAILED, done(None, 9))], None, 137),
        ("exec", [outcome(FAILED, done(None, 9, timed_out=True))], None, 143),  # -t: always 143
        ("exec", [outcome(FAILED, done(0, timed_out=True))], None, 143),
        ("exec", [outcome(REFUSED, error="refused: x")], None, 126),
        ("exec", [outcome(FAILED, error="failed: cannot start")], None, 126),
        ("exec", [outcome(UNREACHABLE, error="connection refused")], None, 255),
        ("exec", [outcome(CRASHED, error="internal error")], None, 255),
        ("exec", [outcome(CANCELLED, done(None, 15))], INTERRUPTED, 130),
        ("exec", [outcome(OK, done())], OUTPUT_CLOSED, 141),
        ("exec", [outcome(OK, done()), outcome(OK, done())], None, 0),
        ("exec", [outcome(OK, done()), outcome(FAILED, done(3))], None, 1),
        ("exec", [outcome(OK, done()), outcome(FAILED, done(3, timed_out=True))], None, 1),
        ("exec", [outcome(REFUSED), outcome(FAILED, done(3))], None, 1),
        ("exec", [outcome(FAILED, done(3)), outcome(UNREACHABLE)], None, 255),
        ("exec", [outcome(OK, done()), outcome(SKIPPED)], INTERRUPTED, 130),
        ("put", [outcome(CHANGED, PutResult("changed", "/f", 1, "0" * 64, 0.1))], None, 0),
        ("put", [outcome(REFUSED, error="refused by the daemon's policy: x")], None, 1),
        ("put", [outcome(FAILED, error="/local/file: Permission denied")], None, 1),
        ("put", [outcome(UNREACHABLE, error="timed out")], None, 255),
        ("ping", [outcome(REFUSED, error="limit reached: x")], None, 1),
        ("ping", [outcome(OK), outcome(UNREACHABLE)], None, 255),
    ],
)
def test_exit_status_table(op, outcomes, stopped, status):
    assert exit_status(op, outcomes, stopped) == status


def test_run_parallel_turns_a_crash_into_that_hosts_outcome_and_goes_on():
    targets = [Target(f"web{i}", "10.0.0.1", 7420 + i) for i in range(5)]
    reported: list[str] = []

    def work(target: Target) -> HostOutcome:
        if target.label == "web2":
            raise RuntimeError("boom")
        return HostOutcome(target, OK)

    def report(result: HostOutcome) -> None:
        if result.target.label == "web4":
            raise ValueError("cannot print")
        reported.append(result.target.label)

    for parallel in (1, 3):
        reported.clear()
        outcomes = run_parallel(targets, work, parallel, report=report)
        assert [o.kind for o in outcomes] == [OK, OK, CRASHED, OK, CRASHED]
        assert "RuntimeError: boom" in outcomes[2].error
        assert "ValueError: cannot print" in outcomes[4].error
        assert sorted(reported) == ["web0", "web1", "web2", "web3"]
    alone = run_parallel(targets[2:3], work, 8)
    assert [o.kind for o in alone] == [CRASHED]


def test_ping_several_hosts_prints_a_summary_like_exec(fleet, dead_host):
    result = run_cli(fleet.home, "ping", ",".join([*fleet.hosts, dead_host]))
    assert result.returncode == 255
    assert sorted(line.split(": radmind")[0] for line in result.stdout.decode().splitlines()) == (
        sorted(fleet.hosts)
    )
    err_lines = result.stderr.decode().splitlines()
    assert err_lines == [
        f"radmin-cli: {dead_host}: connection refused",
        f"3 ok, 1 unreachable ({dead_host}: connection refused)",
    ]


def test_ping_json_gives_one_object_per_host_and_no_summary(fleet, dead_host):
    result = run_cli(fleet.home, "ping", ",".join([*fleet.hosts, dead_host]), "--json")
    assert result.returncode == 255
    assert result.stderr == b""
    records = {r["host"]: r for r in map(json.loads, result.stdout.decode().splitlines())}
    assert sorted(records) == sorted([*fleet.hosts, dead_host])
    fields = {"host", "status", "version", "client", "rtt_ms", "error", "run_id"}
    assert all(set(r) == fields for r in records.values())
    for host in fleet.hosts:
        assert (records[host]["status"], records[host]["client"]) == ("ok", "ops")
        assert records[host]["rtt_ms"] > 0 and records[host]["error"] is None
    assert records[dead_host]["status"] == "unreachable"
    assert records[dead_host]["error"] == "connection refused"
    assert len({r["run_id"] for r in records.values()}) == 1


def test_exec_json_prints_no_human_line_or_summary(fleet, dead_host):
    result = run_cli(fleet.home, "exec", "--json", f"{fleet.hosts[0]},{dead_host}", "exit 3")
    assert result.returncode == 255
    assert result.stderr == b""
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    statuses = {(r["status"], r["exit_code"]) for r in records}
    assert statuses == {("failed", 3), ("unreachable", None)}


def test_ping_ctrl_c_while_connecting_exits_130_promptly(client_home):
    with socket.socket() as silent:  # accepts TCP (the backlog), never answers TLS
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        hosts = f"127.0.0.1:{port},127.0.0.2:{port}"
        proc = start_cli(client_home, "ping", "-p", "1", hosts, stderr=subprocess.PIPE)
        try:
            time.sleep(0.5)  # connected, waiting for the ServerHello
            assert proc.poll() is None
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=3)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.decode().splitlines() == [  # no line per host: the user knows why
        f"1 cancelled (127.0.0.1:{port}: cancelled), "
        f"1 skipped (127.0.0.2:{port}: not started (interrupted))"
    ]


def test_put_ctrl_c_mid_upload_exits_130_and_leaves_nothing(fleet, tmp_path):
    local = tmp_path / "big"
    with open(local, "wb") as f:
        f.truncate(4 * 1024**3)  # sparse: read at memory speed, longer to send than to stop
    uploads = fleet.daemon.folder / "uploads"
    proc = start_cli(fleet.home, "put", str(local), fleet.hosts[0], f"{uploads}/big")
    try:
        wait_until(lambda: list(uploads.glob(".radmin-upload-*")), 10, "the upload to start")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 130
    finally:
        proc.kill()
        proc.wait()
    wait_until(lambda: not list(uploads.glob(".radmin-upload-*")), 10, "the temporary file to go")
    assert not (uploads / "big").exists()


# -- 3. run ids ---------------------------------------------------------------------------


def test_one_run_id_is_in_every_daemons_log(daemon_factory, client_home):
    daemons = [daemon_factory({"ops": client_entry(client_home)}) for _ in range(3)]
    for daemon in daemons:
        trust(client_home, daemon)
    hosts = ",".join(d.address for d in daemons)
    result = run_cli(client_home, "exec", "-v", hosts, "true")
    assert result.returncode == 0, result.stderr
    told = re.match(
        r"radmin-cli: run id ([0-9a-f]{12}), 3 hosts: 127\.0\.0\.1:", result.stderr.decode()
    )
    assert told, result.stderr
    for daemon in daemons:
        events = request_events(daemon, 1)
        assert [e["run_id"] for e in events] == [told.group(1)], daemon.address


def test_each_invocation_gets_its_own_run_id(fleet):
    runs = [run_cli(fleet.home, "ping", "--json", fleet.hosts[0]) for _ in range(2)]
    first, second = (json.loads(run.stdout)["run_id"] for run in runs)
    assert re.fullmatch(r"[0-9a-f]{12}", first) and first != second


def test_run_id_option_is_sent_and_in_every_json_object(fleet, tmp_path):
    local = tmp_path / "f"
    local.write_bytes(b"data\n")
    dest = fleet.daemon.folder / "uploads" / "run-id-file"
    hosts = ",".join(fleet.hosts)
    execs = run_cli(fleet.home, "exec", "--run-id", "CHG-4711.a_b", "--json", hosts, "true")
    puts = run_cli(
        fleet.home, "put", "--json", "--run-id=CHG-4711.a_b", str(local), hosts, str(dest)
    )
    for result in (execs, puts):
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in result.stdout.decode().splitlines()]
        assert [r["run_id"] for r in records] == ["CHG-4711.a_b"] * 3
    logged = [e for e in fleet.daemon.events() if e.get("run_id") == "CHG-4711.a_b"]
    assert (
        sorted(e["op"] for e in logged if e.get("event") == "request") == ["exec"] * 3 + ["put"] * 3
    )


@pytest.mark.parametrize("run_id", ["", "-x", "_x", "a b", "a/b", "é", "x" * 65])
def test_a_malformed_run_id_is_a_usage_error(client_home, dead_host, run_id):
    result = run_cli(client_home, "exec", f"--run-id={run_id}", dead_host, "true")
    assert result.returncode == 2, result.stderr
    assert b"run-id" in result.stderr and b"Traceback" not in result.stderr


# -- 4. a reader that goes away: quiet, 141, the remote command cancelled ------------------


@pytest.mark.parametrize("count", [1, 3])
def test_exec_into_a_pipe_closed_early_exits_141_quietly_and_cancels(fleet, count):
    marker = new_marker()
    hosts = ",".join(fleet.hosts[:count])
    command = f"while :; do echo tick; sleep 0.05; done; : {marker}"
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    proc = start_cli(fleet.home, "exec", hosts, command, **pipes)
    try:
        wait_for_processes(marker, count, exclude=(proc.pid,))
        assert proc.stdout.readline().endswith(b"tick\n")
        proc.stdout.close()  # what `| head -1` does after its line
        status = proc.wait(timeout=10)
        err = proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert (status, err) == (141, b"")
    wait_until_gone(marker, timeout=3.0)
    events = [e for e in events_with(fleet.daemon, marker) if e.get("cancelled")]
    assert len(events) == count


def test_exec_piped_to_head_in_a_shell_ends_like_a_killed_writer(fleet):
    script = '"$0" exec "$1" "seq 10000000" | head -1; echo "status ${PIPESTATUS[0]}"'
    result = subprocess.run(
        ["bash", "-c", script, RADMIN_CLI, fleet.hosts[0]],
        capture_output=True,
        env=cli_env(fleet.home),
        timeout=30,
    )
    assert (result.stdout, result.stderr) == (b"1\nstatus 141\n", b"")


def test_exec_with_stdout_closed_from_the_start_runs_the_command(fleet):
    result = subprocess.run(
        [
            "sh",
            "-c",
            'exec "$0" exec "$1" "echo out; echo err >&2" >&-',
            RADMIN_CLI,
            fleet.hosts[0],
        ],
        capture_output=True,
        env=cli_env(fleet.home),
        timeout=30,
    )
    assert (result.returncode, result.stderr) == (0, b"err\n")


# -- 5. -t: always 143, with several hosts and in --json ----------------------------------


def test_exec_timeout_is_143_in_json_and_failed_with_several_hosts(fleet):
    marker = new_marker()
    command = f"trap '' TERM; sleep {marker} & sleep {marker}"  # needs the SIGKILL
    one = run_cli(fleet.home, "exec", "--json", "-t", "0.3", fleet.hosts[0], command)
    assert one.returncode == 143, one.stderr
    several = run_cli(fleet.home, "exec", "--json", "-t", "0.3", ",".join(fleet.hosts[1:]), command)
    assert several.returncode == 1, several.stderr
    for result in (one, several):
        for record in map(json.loads, result.stdout.decode().splitlines()):
            assert (record["status"], record["exit_code"], record["error"]) == (
                "failed",
                143,
                "timed out",
            )
    human = run_cli(fleet.home, "exec", "-t", "0.3", ",".join(fleet.hosts[:2]), f"sleep {marker}")
    assert human.returncode == 1
    assert human.stderr.decode().splitlines()[-1].endswith(": timed out)")
    wait_until_gone(marker, timeout=1.0)


# -- 6. values radmin-cli refuses itself: exit 2 ------------------------------------------


@pytest.mark.parametrize(
    "option",
    [
        ("-p", "0"),
        ("-p", "-1"),
        ("-p", "many"),
        ("-t", "0"),
        ("-t", "-1"),
        ("-t", "nan"),
        ("--connect-timeout", "0"),
        ("--host-fingerprint", "SHA256:nope"),
        ("--host-fingerprint", "ab:cd:ef"),
    ],
)
def test_invalid_option_values_are_usage_errors(client_home, dead_host, option):
    result = run_cli(client_home, "exec", dead_host, *option, "true")
    assert result.returncode == 2, result.stderr
    err = result.stderr.decode()
    assert option[0] in err and "usage:" in err
    assert "mismatch" not in err and "Traceback" not in err


def test_user_at_host_is_a_usage_error_saying_the_daemon_chooses_the_user(client_home):
    result = run_cli(client_home, "exec", "root@web1", "id")
    assert result.returncode == 2
    assert result.stderr.decode() == (
        "radmin-cli: 'root@web1': HOSTS names no user: each daemon runs your commands and "
        "writes your files as the run_as user its radmind.yaml sets for this client; "
        "write 'web1'\n"
    )


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        ("hosts:\n  web1: 7420\n", 2, "hosts.web1", "bare port number"),
        ('hosts:\n  db: 10.0.0.9\n  web1: "7421"\n', 3, "hosts.web1", "bare port number"),
        ("hosts:\n  web1: 10.0.0.1\nhost_groups:\n  web: [web1]\n", 3, "host_groups", "unknown"),
        ("hosts:\n  web1: 10.0.0.1\ngroups:\n  web: [web1, 12]\n", 4, "groups.web", "12"),
        ("hosts:\n  web1: 10:20\n", 2, "hosts.web1", "quote it"),
    ],
    ids=["bare-port", "quoted-port", "unknown-key", "number-in-group", "sexagesimal"],
)
def test_host_config_mistakes_are_usage_errors_naming_file_line_and_key(
    client_home, text, line, key, words
):
    client_home.config.write_text(text)
    result = run_cli(client_home, "ping", "web1")
    assert result.returncode == 2
    message = result.stderr.decode()
    assert message.startswith(f"radmin-cli: {client_home.config}:{line}: {key}: "), message
    assert words in message and message.count("\n") == 1


def test_ip_address_hosts_never_read_config_yaml(fleet, tmp_path):
    home = make_client_home(tmp_path / "client")
    shutil.copy(fleet.home.known_hosts, home.known_hosts)
    home.config.write_text("hosts: [this is not: valid\n")
    fleet.daemon.config["clients"]["other"] = client_entry(home)
    fleet.daemon.write_config()
    fleet.daemon.signal(signal.SIGHUP)
    fleet.daemon.wait_for_event(lambda e: e.get("event") == "reloaded")
    assert run_cli(home, "ping", fleet.hosts[0]).returncode == 0
    assert run_cli(home, "ping", "web1").returncode == 2  # an alias: now it is read


# -- 7. local errors: one line naming the file, never a traceback -------------------------


def one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    text = result.stderr.decode()
    assert "Traceback" not in text
    return text


def test_known_hosts_that_is_a_folder_fails_each_host_naming_it(fleet, tmp_path):
    home = make_client_home(tmp_path / "client")
    home.known_hosts.mkdir()
    result = run_cli(home, "exec", ",".join(fleet.hosts[:2]), "true")
    assert result.returncode == 255
    lines = one_line(result).splitlines()
    for host in fleet.hosts[:2]:
        assert f"radmin-cli: {host}: {home.known_hosts}: Is a directory" in lines
    assert lines[-1].startswith("2 unreachable (")


def test_identity_key_that_is_a_folder_is_one_line_for_all_hosts(fleet, tmp_path):
    home = make_client_home(tmp_path / "client")
    home.key.unlink()
    home.key.mkdir(mode=0o700)
    result = run_cli(home, "exec", ",".join(fleet.hosts), "true")
    assert result.returncode == 255
    assert one_line(result) == (
        f"radmin-cli: cannot load the client identity: {home.key}: Is a directory\n"
    )


def test_read_only_home_fails_naming_known_hosts(fleet, tmpfs):
    mount = tmpfs("ro-home", "size=1m")
    home = ClientHome(mount / "client")  # the fleet's listed identity, a new known_hosts
    home.path.mkdir()
    for name in ("identity.key", "identity.crt"):
        shutil.copy2(fleet.home.path / name, home.path / name)
    remounted = subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True)
    if remounted.returncode != 0:
        pytest.skip(f"cannot remount read-only: {remounted.stderr.decode().strip()}")
    # First contact: recorded once the daemon has answered -- and that write fails.
    result = run_cli(home, "exec", fleet.hosts[0], "true")
    assert result.returncode == 255
    assert one_line(result) == (
        f"radmin-cli: {fleet.hosts[0]}: {home.known_hosts}: Read-only file system\n"
    )
    keygen = run_cli(mount / "other", "keygen")
    assert keygen.returncode == 255
    assert "Read-only file system" in one_line(keygen)


AS_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--")


@pytest.fixture
def nobody_home(fleet) -> Iterator[ClientHome]:
    """A client home owned by nobody (known to the fleet's daemon), for radmin-cli run
    as nobody (AS_NOBODY): files root keeps to itself are then really unreadable. In a
    folder of /tmp, since pytest's own are closed to other users."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv")
    folder = Path(tempfile.mkdtemp(prefix="radmin-nobody-"))
    folder.chmod(0o755)
    home = make_client_home(folder / "home")
    shutil.copy(fleet.home.known_hosts, home.known_hosts)
    for path in (home.path, *home.path.iterdir()):
        os.chown(path, 65534, 65534)
    fleet.daemon.config["clients"]["nobody"] = client_entry(home)
    fleet.daemon.write_config()
    fleet.daemon.signal(signal.SIGHUP)
    fleet.daemon.wait_for_event(lambda e: e.get("event") == "reloaded")
    try:
        yield home
    finally:
        shutil.rmtree(folder)


def test_unreadable_known_hosts_is_one_line_naming_it(fleet, nobody_home):
    os.chown(nobody_home.known_hosts, 0, 0)
    nobody_home.known_hosts.chmod(0o600)
    result = run_cli(nobody_home, "exec", fleet.hosts[0], "true", wrapper=AS_NOBODY)
    assert result.returncode == 255
    assert one_line(result) == (
        f"radmin-cli: {fleet.hosts[0]}: {nobody_home.known_hosts}: Permission denied\n"
    )


def test_unreadable_file_to_put_is_one_line_and_exit_1(fleet, nobody_home):
    secret = nobody_home.path.parent / "secret"
    secret.write_bytes(b"root only\n")
    secret.chmod(0o600)
    dest = fleet.daemon.folder / "uploads" / "secret"
    for hosts in (fleet.hosts[:1], fleet.hosts):
        result = run_cli(
            nobody_home, "put", str(secret), ",".join(hosts), str(dest), wrapper=AS_NOBODY
        )
        assert result.returncode == 1
        assert one_line(result) == f"radmin-cli: {secret}: Permission denied\n"
    assert not dest.exists()


def test_running_out_of_file_descriptors_is_a_host_failure_not_a_traceback(fleet):
    """Under ever lower open-file limits radmin-cli fails cleanly wherever it runs out --
    and at some limit it is the connection to a host that fails."""
    connect_failed = False
    for limit in range(_lowest_fd_limit_python_starts_with(), 40):
        wrapper = ("prlimit", f"--nofile={limit}", "--")
        result = run_cli(fleet.home, "exec", ",".join(fleet.hosts), "true", wrapper=wrapper)
        err = one_line(result)
        if result.returncode == 0:
            break
        assert result.returncode == 255, err
        assert "Too many open files" in err, err
        connect_failed |= bool(re.search(r"radmin-cli: 127\.0\.0\.\d:\d+: .*Too many", err))
    assert connect_failed


def _lowest_fd_limit_python_starts_with() -> int:
    for limit in range(3, 40):
        started = subprocess.run(
            ["prlimit", f"--nofile={limit}", "--", "python3", "-c", "pass"], capture_output=True
        )
        if started.returncode == 0:
            return limit
    raise AssertionError("python does not start with 40 open files")


# -- 8. the messages users read -----------------------------------------------------------


def test_refusals_say_what_refused_them_without_internal_codes(daemon_factory, client_home, fleet):
    daemon = daemon_factory({"ops": restricted_entry(client_home)})
    trust(client_home, daemon)
    policy = run_cli(client_home, "exec", daemon.address, "rm -rf /nothing")
    assert policy.returncode == 126
    assert one_line(policy).startswith(
        f"radmin-cli: {daemon.address}: refused by the daemon's policy: "
    )
    host = fleet.hosts[0]
    bad = run_cli(fleet.home, "exec", "--cwd", "/nonexistent/dir", host, "true")
    assert bad.returncode == 126
    assert one_line(bad).startswith(f"radmin-cli: {host}: refused: working directory ")
    for result in (policy, bad):
        assert not re.search(rb"\b(denied|bad_request):", result.stderr)


def test_a_limit_says_limit_reached(daemon_factory, client_home):
    daemon = daemon_factory(
        {"ops": client_entry(client_home)},
        limits={"handshake_timeout": 2, "per_client": {"max_processes": 1}},
    )
    trust(client_home, daemon)
    marker = new_marker()
    running = start_cli(client_home, "exec", daemon.address, f"sleep {marker}")
    try:
        wait_for_processes(marker, 1, exclude=(running.pid,))
        second = run_cli(client_home, "exec", daemon.address, "true")
    finally:
        running.send_signal(signal.SIGINT)
        running.wait(timeout=10)
    assert second.returncode == 126
    assert one_line(second).startswith(f"radmin-cli: {daemon.address}: limit reached: ")
    wait_until_gone(marker, timeout=3.0)


def test_a_failure_on_the_host_says_failed(fleet, tmp_path):
    local = tmp_path / "f"
    local.write_bytes(b"x")
    dest = "/proc/version"  # exists, and no upload can replace it
    result = run_cli(fleet.home, "put", str(local), fleet.hosts[0], dest)
    assert result.returncode == 1
    assert one_line(result).startswith(f"radmin-cli: {fleet.hosts[0]}: failed: ")


def test_a_changed_host_key_is_warned_once_then_one_short_line_per_host(fleet, tmp_path):
    home = make_client_home(tmp_path / "client")
    wrong = "SHA256:" + "A" * 43
    home.known_hosts.write_text("".join(f"{host} {wrong}\n" for host in fleet.hosts))
    result = run_cli(home, "exec", ",".join(fleet.hosts), "true")
    assert result.returncode == 255
    lines = one_line(result).splitlines()
    assert sum("WARNING: HOST KEY CHANGED" in line for line in lines) == 1
    short = [line for line in lines if line.endswith(": HOST KEY CHANGED (see the warning above)")]
    assert len(short) == 2
    assert lines[-1].startswith("3 unreachable (") and lines[-1].endswith(": HOST KEY CHANGED)")
    assert len(lines) == 4
