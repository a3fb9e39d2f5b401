"""Fan-out over a small real fleet: three radmind daemons on their own ports, and six
aliases to them in the client's config.yaml (web1, web4 -> daemon0; web2, web5 ->
daemon1; web3, web6 -> daemon2), plus `down1`, a port that refuses connections.

A command tells the daemons apart by asking which radmind started it (the config path
in its parent's command line), so "the same command" can succeed on some hosts and
fail on others, as on a real fleet.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import yaml
from support import (
    client_entry,
    make_client_home,
    new_marker,
    prepare_daemon,
    refused_port,
    run_cli,
    start_cli,
    trust,
    wait_for_processes,
    wait_until_gone,
)

from radmin.identity import ClientHome

# Prints daemon0 / daemon1 / daemon2: the folder of the radmind that runs the command.
WHO = 'tr "\\0" "\\n" </proc/$PPID/cmdline | tail -1 | xargs dirname | xargs basename'
FAIL_ON_DAEMON1 = f"test $({WHO}) = daemon1 && exit 3; echo hi"


class Fleet:
    def __init__(self, home: ClientHome, daemons, aliases: dict[str, str]):
        self.home = home
        self.daemons = daemons
        self.aliases = aliases

    def cli(self, *args: str, **kwargs):
        return run_cli(self.home, *args, **kwargs)

    def last_run(self) -> dict:
        return json.loads(self.home.last_run.read_text())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, server_identity) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("fleet")
    home = make_client_home(base / "client")
    daemons = []
    refused, refused_at = refused_port()
    try:
        for index in range(3):
            daemon = prepare_daemon(
                base / f"daemon{index}", server_identity, {"ops": client_entry(home)}
            )
            daemons.append(daemon)
            daemon.start()
            trust(home, daemon)
        aliases = {f"web{n}": daemons[(n - 1) % 3].address for n in range(1, 7)}
        aliases["down1"] = f"127.0.0.1:{refused_at}"
        (home.path / "config.yaml").write_text(yaml.safe_dump({"hosts": aliases}))
        yield Fleet(home, daemons, aliases)
    finally:
        for daemon in daemons:
            daemon.stop()
        refused.close()


def lines(data: bytes) -> list[str]:
    return data.decode().splitlines()


# -- node sets on the command line ------------------------------------------------------


def test_ranges_and_exclude_pick_the_hosts(fleet):
    done = fleet.cli("exec", "web[1-6]", "-x", "web[2,5-6]", "-v", WHO)
    assert done.returncode == 0, done.stderr
    assert sorted(lines(done.stdout)) == ["web1: daemon0", "web3: daemon2", "web4: daemon0"]
    assert b"3 hosts: web[1,3-4]" in done.stderr  # -v names them folded
    assert lines(done.stderr)[-1] == "3 ok"


def test_exclude_works_for_ping_and_put(fleet, tmp_path):
    ping = fleet.cli("ping", "web[1-3]", "--exclude", "web2")
    assert ping.returncode == 0, ping.stderr
    assert sorted(line.split(":")[0] for line in lines(ping.stdout)) == ["web1", "web3"]
    local = tmp_path / "f.txt"
    local.write_text("x\n")
    remote = tmp_path / "put-target"
    put = fleet.cli("put", str(local), "web[1-3]", str(remote), "-x", "web[1-2]")
    assert put.returncode == 0, put.stderr
    assert [line.split(":")[0] for line in lines(put.stdout)] == ["web3"]


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        ("web[3-1]", "range 3-1 goes down"),
        ("web[1-100000]", "more than 10,000 hosts"),
        ("web[1-3", "'[' without ']'"),
        ("web1,,web2", "empty entry"),
    ],
)
def test_a_bad_node_set_is_a_usage_error_before_any_host(fleet, hosts, message):
    done = fleet.cli("exec", hosts, "true")
    assert done.returncode == 2
    assert message in done.stderr.decode()
    assert b"Traceback" not in done.stderr


def test_excluding_every_host_is_a_usage_error(fleet):
    done = fleet.cli("exec", "web[1-2]", "-x", "web[1-2]", "true")
    assert done.returncode == 2
    assert b"no hosts left" in done.stderr


# -- gather -------------------------------------------------------------------------------


def test_gather_prints_each_output_once_under_its_folded_hosts(fleet):
    done = fleet.cli("exec", "-b", "web[1-6],down1", WHO)
    assert done.returncode == 255  # down1 is unreachable
    assert done.stdout.decode() == (
        "---------------\n"
        "web[1,4] (2)\n"
        "---------------\n"
        "daemon0\n"
        "---------------\n"
        "web[2,5] (2)\n"
        "---------------\n"
        "daemon1\n"
        "---------------\n"
        "web[3,6] (2)\n"
        "---------------\n"
        "daemon2\n"
        "------------------------------------------\n"
        "down1 (1): unreachable: connection refused\n"
        "------------------------------------------\n"
    )
    assert lines(done.stderr)[-1] == "6 ok, 1 unreachable (down1: connection refused)"


def test_gather_puts_exit_0_first_then_other_statuses_then_unreachable(fleet):
    command = f"echo same; echo oops >&2; case $({WHO}) in daemon1) exit 3;; daemon2) exit 1;; esac"
    done = fleet.cli("exec", "--gather", "down1,web6,web5,web4,web3,web2,web1", command)
    assert done.returncode == 255
    assert done.stdout.decode() == (
        "---------------\n"
        "web[1,4] (2)\n"
        "---------------\n"
        "same\n"
        "--------------------\n"
        "web[3,6] (2): exit 1\n"
        "--------------------\n"
        "same\n"
        "--------------------\n"
        "web[2,5] (2): exit 3\n"
        "--------------------\n"
        "same\n"
        "------------------------------------------\n"
        "down1 (1): unreachable: connection refused\n"
        "------------------------------------------\n"
    )
    # stderr is not gathered: live, each line prefixed with its host
    for n in range(1, 7):
        assert f"web{n}: oops" in lines(done.stderr)


def test_gather_and_json_are_exclusive(fleet):
    done = fleet.cli("exec", "-b", "--json", "web[1-2]", "true")
    assert done.returncode == 2
    assert b"choose one" in done.stderr


# -- batches and --max-fail ----------------------------------------------------------------


def test_batches_run_one_after_another_in_order(fleet, tmp_path):
    journal = tmp_path / "journal"
    command = f"echo start $({WHO}) >> {journal}; sleep 0.2; echo end $({WHO}) >> {journal}"
    done = fleet.cli("exec", "--batch", "2", "web[1-6]", command)
    assert done.returncode == 0, done.stderr
    events = journal.read_text().splitlines()
    assert len(events) == 12
    batches = [{"daemon0", "daemon1"}, {"daemon2", "daemon0"}, {"daemon1", "daemon2"}]
    for index, daemons in enumerate(batches):  # each batch's starts and ends, then the next
        chunk = events[index * 4 : index * 4 + 4]
        assert {line.split()[1] for line in chunk} == daemons, events
        assert sorted(line.split()[0] for line in chunk) == ["end", "end", "start", "start"]


def test_max_fail_stops_new_batches_and_skips_the_rest(fleet):
    done = fleet.cli("exec", "--batch", "2", "--json", "web[1-6]", FAIL_ON_DAEMON1)
    assert done.returncode == 1
    records = {r["host"]: r for r in map(json.loads, lines(done.stdout))}
    assert {h: r["status"] for h, r in records.items()} == {
        "web1": "ok",
        "web2": "failed",
        "web3": "skipped",
        "web4": "skipped",
        "web5": "skipped",
        "web6": "skipped",
    }
    assert records["web3"]["error"] == "not started: more than 0 hosts failed (--max-fail 0)"
    assert records["web3"]["exit_code"] is None


def test_max_fail_counts_over_the_whole_run(fleet):
    # 1 allowed: web2 fails in batch 1, batch 2 runs, web5 fails in batch 3 (the last)
    done = fleet.cli("exec", "--batch", "2", "--max-fail", "1", "web[1-6]", FAIL_ON_DAEMON1)
    assert done.returncode == 1
    assert lines(done.stderr)[-1] == "4 ok, 2 failed (web[2,5]: exit 3)"
    # 20% of 6 hosts = 2 (rounded up): web2 and web5 are not more than that
    done = fleet.cli("exec", "--batch", "50%", "--max-fail", "20%", "web[1-6]", FAIL_ON_DAEMON1)
    assert lines(done.stderr)[-1] == "4 ok, 2 failed (web[2,5]: exit 3)"


def test_summary_folds_skipped_hosts_and_unreachable_means_255(fleet):
    done = fleet.cli("exec", "--batch", "1", "down1,web[1-3]", "true")
    assert done.returncode == 255
    assert lines(done.stderr)[-1] == (
        "1 unreachable (down1: connection refused), 3 skipped (web[1-3]: more than 0 failed)"
    )


def test_max_fail_without_batches_stops_starting_hosts(fleet):
    done = fleet.cli("exec", "-p", "1", "--max-fail", "0", "web[1-6]", FAIL_ON_DAEMON1)
    assert done.returncode == 1
    assert lines(done.stderr)[-1] == (
        "1 ok, 1 failed (web2: exit 3), 4 skipped (web[3-6]: more than 0 failed)"
    )


def test_put_skips_hosts_too(fleet, tmp_path):
    local = tmp_path / "conf"
    local.write_text("a\n")
    done = fleet.cli(
        "put", str(local), "down1,web[1-2]", str(tmp_path / "dest"), "--batch", "1", "--json"
    )
    assert done.returncode == 255
    statuses = [json.loads(line)["status"] for line in lines(done.stdout)]
    assert statuses == ["error", "skipped", "skipped"]


@pytest.mark.parametrize(
    "option", [["--batch", "0"], ["--batch", "101%"], ["--batch", "x"], ["--max-fail", "-1"]]
)
def test_bad_batch_values_are_usage_errors(fleet, option):
    done = fleet.cli("exec", *option, "web[1-2]", "true")
    assert done.returncode == 2
    assert b"expected a whole number" in done.stderr


# -- @failed and @ok ----------------------------------------------------------------------


def test_failed_and_ok_name_the_previous_multi_host_run(fleet):
    first = fleet.cli("exec", "--run-id", "CHG-1", "web[1-6],down1", FAIL_ON_DAEMON1)
    assert first.returncode == 255
    record = fleet.last_run()
    assert record["run_id"] == "CHG-1"
    assert sorted(record["failed"]) == ["down1", "web2", "web5"]
    again = fleet.cli("exec", "@failed", "echo again")
    assert sorted(lines(again.stdout)) == ["web2: again", "web5: again"]
    assert lines(again.stderr)[-1] == "2 ok, 1 unreachable (down1: connection refused)"
    # that rerun is now the previous run
    ok = fleet.cli("exec", "@ok", "echo fine")
    assert sorted(lines(ok.stdout)) == ["web2: fine", "web5: fine"]


def test_a_single_host_run_does_not_replace_the_record(fleet):
    fleet.cli("exec", "web[1-2]", FAIL_ON_DAEMON1)
    assert fleet.cli("exec", "web1", "true").returncode == 0
    assert fleet.last_run()["failed"] == ["web2"]
    assert fleet.cli("exec", "@failed", "true").returncode == 0  # a rerun is recorded
    assert fleet.last_run()["ok"] == ["web2"]


def test_failed_without_a_previous_run_is_a_clear_error(tmp_path, fleet):
    home = make_client_home(tmp_path / "fresh")
    done = run_cli(home, "exec", "@failed", "true")
    assert done.returncode == 2
    assert b"@failed: no previous multi-host run recorded in" in done.stderr


def test_failed_when_nothing_failed_is_a_clear_error(fleet):
    assert fleet.cli("exec", "--run-id", "all-good", "web[1-2]", "true").returncode == 0
    done = fleet.cli("exec", "@failed", "true")
    assert done.returncode == 2
    assert b"@failed: no host is failed in the previous run all-good (exec)" in done.stderr


# -- --retry ------------------------------------------------------------------------------


def test_retry_never_reruns_a_command_that_ran(fleet, tmp_path):
    journal = tmp_path / "ran"
    done = fleet.cli("exec", "--retry", "3", "web1", f"echo x >> {journal}; exit 7")
    assert done.returncode == 7
    assert journal.read_text() == "x\n"


def test_retry_tries_an_unreachable_host_again(fleet):
    started = time.monotonic()
    done = fleet.cli("exec", "--retry", "2", "down1,web1", "true")
    assert done.returncode == 255
    assert b"down1: connection refused (3 attempts)" in done.stderr
    assert time.monotonic() - started >= 0.75  # 0.25 s + 0.5 s between the tries


def test_retry_reaches_a_host_that_comes_back(daemon_factory, client_home, tmp_path):
    """The daemon starts listening only after radmin-cli's first try was refused."""
    hold, port = refused_port()  # bound, not listening: refused until the daemon takes it
    proc = start_cli(
        client_home,
        "exec",
        "--retry",
        "4",
        f"127.0.0.1:{port}",
        "echo reached",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    hold.close()
    daemon_factory({"ops": client_entry(client_home)}, listen=[f"127.0.0.1:{port}"])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == b"reached\n"


def test_retry_does_not_rerun_exec_after_the_request_was_sent(
    daemon_factory, client_home, tmp_path
):
    """The daemon dies while the command runs: the connection is lost after the request
    went out, so exec is not tried again (it may have run)."""
    daemon = daemon_factory({"ops": client_entry(client_home)})
    journal = tmp_path / "ran"
    done = run_cli(
        client_home,
        "exec",
        "--retry",
        "3",
        daemon.address,
        f"echo x >> {journal}; kill -9 $PPID; sleep 5",
    )
    assert done.returncode == 255
    assert journal.read_text() == "x\n"
    assert b"attempts" not in done.stderr


# -- connect timeouts -----------------------------------------------------------------------


def test_each_kind_of_dead_host_fails_within_the_connect_timeout(fleet):
    """No TLS (TCP accepted, nothing answers), a blackhole (no SYN-ACK: a full accept
    queue drops the SYN) and a refused port, beside hosts that answer."""
    silent = socket.create_server(("127.0.0.1", 0))  # TCP accepted by the kernel, no TLS
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    fillers = []
    for _ in range(3):  # fill the accept queue: the next SYN is dropped
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(blackhole.getsockname())
        fillers.append(filler)
    no_tls = f"127.0.0.1:{silent.getsockname()[1]}"
    no_syn_ack = f"127.0.0.1:{blackhole.getsockname()[1]}"
    hosts = ",".join(
        [
            no_tls,
            no_syn_ack,
            fleet.aliases["down1"],
            "web1",
            "web2",
        ]
    )
    try:
        started = time.monotonic()
        done = fleet.cli("exec", "--connect-timeout", "1", "--json", hosts, "echo up")
        elapsed = time.monotonic() - started
    finally:
        for sock in (silent, blackhole, *fillers):
            sock.close()
    assert done.returncode == 255
    assert elapsed < 4, elapsed
    records = [json.loads(line) for line in lines(done.stdout)]
    by_port = {r["host"]: (r["status"], r["error"]) for r in records}
    assert by_port[no_tls] == (
        "unreachable",
        "TLS handshake timed out: the port accepts TCP but does not answer TLS (is it radmind's?)",
    )
    assert by_port[no_syn_ack] == (
        "unreachable",
        "connection timed out",
    )
    assert by_port[fleet.aliases["down1"]] == ("unreachable", "connection refused")
    assert {r["host"]: r["stdout"] for r in records if r["status"] == "ok"} == {
        "web1": "up\n",
        "web2": "up\n",
    }


def test_live_counter_only_on_a_terminal(fleet):
    done = fleet.cli("exec", "-b", "web[1-3]", "true")
    assert b"hosts done" not in done.stderr  # stderr is a pipe here


def test_ctrl_c_prints_what_was_gathered(fleet):
    marker = new_marker()
    command = f"echo before; case $({WHO}) in daemon0) ;; *) sleep {marker};; esac"
    proc = start_cli(
        fleet.home,
        "exec",
        "-b",
        "web[1-3]",
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_processes(marker, 2, timeout=20)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    text = out.decode()
    assert "web1 (1)\n---------------\nbefore\n" in text  # finished before Ctrl-C
    assert "web[2-3] (2): cancelled\n" in text  # stopped, with what they printed
    assert text.count("before\n") == 2
    assert wait_until_gone(marker, 10) >= 0


def test_the_done_counter_runs_on_a_terminal_stderr(fleet):
    import os
    import pty

    primary, secondary = pty.openpty()
    proc = start_cli(
        fleet.home, "exec", "-b", "web[1-3]", "echo x >&2", stdout=subprocess.PIPE, stderr=secondary
    )
    os.close(secondary)
    seen = bytearray()
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO: the terminal's other side closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(primary)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert b"3/3 hosts done" in seen
    assert b"\r\x1b[K" in seen  # erased before the report
    for n in (1, 2, 3):
        assert f"web{n}: x".encode() in seen
    assert b"hosts done" not in out  # the counter never reaches stdout


def test_retry_never_repeats_a_verdict_on_identities(fleet):
    wrong_pin = "SHA256:" + "A" * 43
    done = fleet.cli("ping", "--retry", "3", "--host-fingerprint", wrong_pin, "web[1-2]")
    assert done.returncode == 255
    assert b"host key mismatch" in done.stderr
    assert b"attempts" not in done.stderr
