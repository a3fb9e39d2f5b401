"""`radmin-cli mux`: the client home's connection helper (radmin/mux), with real radminds
and real helper processes. What it must keep: exactly a direct connection's outputs,
exit statuses and errors, and none of ControlPath's pitfalls (long paths, stale
sockets, expiry races, other users)."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from radmin.identity import ClientHome, create_identity
from tests.support import (
    RADMIN_CLI,
    client_entry,
    make_client_home,
    new_marker,
    run_cli,
    start_cli,
    trust,
    wait_for_processes,
    wait_until,
    wait_until_gone,
)


def authenticated(daemon) -> int:
    """Connections the daemon accepted (one `authenticated` event each)."""
    return sum(1 for e in daemon.events() if e.get("event") == "authenticated")


def mux_exec(home: ClientHome, daemon, *command: str, **kwargs):
    return run_cli(home, "exec", "--mux", daemon.address, *command, **kwargs)


def helper_pid(home: ClientHome) -> int | None:
    status = run_cli(home, "mux", "--status")
    if status.returncode != 0:
        return None
    return int(status.stdout.split(b"pid ")[1].split(b",")[0])


@pytest.fixture
def stop_helpers():
    """Homes whose helpers are stopped after the test (they would idle for 60 s)."""
    homes: list[ClientHome] = []
    yield homes.append
    for home in homes:
        run_cli(home, "mux", "--stop")


@pytest.fixture
def home(client_home, stop_helpers) -> ClientHome:
    stop_helpers(client_home)
    return client_home


def test_execs_through_the_helper_share_one_daemon_connection(home, daemon):
    trust(home, daemon)
    direct = run_cli(home, "exec", daemon.address, "echo out; echo err >&2; exit 3")
    before = authenticated(daemon)
    runs = [mux_exec(home, daemon, "echo out; echo err >&2; exit 3") for _ in range(5)]
    for run in runs:
        assert (run.returncode, run.stdout, run.stderr) == (3, direct.stdout, direct.stderr)
    assert authenticated(daemon) - before == 1
    assert helper_pid(home) is not None


def test_stdin_and_signal_status_are_relayed(home, daemon):
    data = os.urandom(3 * 1024 * 1024)
    run = mux_exec(home, daemon, "sha256sum", input=data)
    import hashlib

    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    killed = mux_exec(home, daemon, "kill -9 $$")
    assert killed.returncode == 137


def test_config_yaml_mux_true_uses_the_helper(home, daemon):
    home.config.write_text("mux: true\n")
    before = authenticated(daemon)
    for _ in range(3):
        assert run_cli(home, "exec", daemon.address, "true").returncode == 0
    assert authenticated(daemon) - before == 1


def test_config_yaml_mux_must_be_a_boolean(home, daemon):
    home.config.write_text("mux: 60\n")
    run = run_cli(home, "exec", daemon.address, "true")
    assert run.returncode == 2
    assert b"config.yaml:1: mux: expected true or false" in run.stderr


def test_put_and_get_go_through_the_helper(home, daemon, tmp_path):
    source = tmp_path / "source"
    source.write_bytes(os.urandom(2 * 1024 * 1024 + 7))
    daemon.config["clients"]["ops"]["allow"]["get"] = ["/**"]
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_event(lambda e: e.get("event") == "reloaded")
    target = daemon.folder / "uploads" / "copy"
    put = run_cli(home, "put", "--mux", str(source), daemon.address, str(target))
    assert put.returncode == 0, put.stderr
    got = run_cli(home, "get", "--mux", daemon.address, str(target), str(tmp_path / "back"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "back").read_bytes() == source.read_bytes()


def test_a_killed_helper_leaves_nothing_stale(home, daemon):
    assert mux_exec(home, daemon, "true").returncode == 0
    first = helper_pid(home)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{first}").exists(), 5, "the helper to die")
    assert (home.path / "mux" / "sock").exists()  # the dead helper's name is still there
    run = mux_exec(home, daemon, "echo again")
    assert (run.returncode, run.stdout) == (0, b"again\n"), run.stderr
    second = helper_pid(home)
    assert second is not None and second != first


def test_a_home_path_longer_than_sun_path(tmp_path, daemon_factory, stop_helpers):
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "client"
    home = make_client_home(deep)
    stop_helpers(home)
    assert len(str(home.path / "mux" / "sock")) > 120
    daemon = daemon_factory({"ops": client_entry(home)})
    for _ in range(2):
        run = mux_exec(home, daemon, "echo deep")
        assert (run.returncode, run.stdout) == (0, b"deep\n"), run.stderr
    assert authenticated(daemon) == 1


@pytest.fixture
def open_home(daemon_factory, stop_helpers):
    """A client home whose parents others may traverse (pytest's tmp folders are 0700),
    so only the helper's own walls stand between another user and its socket."""
    import tempfile

    parent = Path(tempfile.mkdtemp(prefix="radmin-mux-"))
    parent.chmod(0o711)
    home = make_client_home(parent / "client")
    home.path.chmod(0o711)
    stop_helpers(home)
    yield home, daemon_factory({"ops": client_entry(home)})
    run_cli(home, "mux", "--stop")
    shutil.rmtree(parent)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as nobody")
def test_another_user_cannot_use_the_helper(open_home):
    home, daemon = open_home
    assert mux_exec(home, daemon, "true").returncode == 0
    sock = home.path / "mux" / "sock"
    probe = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({str(sock)!r})\n"
        "except OSError as e:\n"
        "    print('refused', e.errno); sys.exit(0)\n"
        "print('connected'); s.settimeout(5); print(repr(s.recv(10)))\n"
    )
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    as_nobody += ["/usr/bin/python3", "-I", "-c", probe]
    behind_dir = subprocess.run(as_nobody, capture_output=True, text=True, timeout=20)
    assert "refused 13" in behind_dir.stdout, behind_dir  # EACCES: the 0700 folder
    # Even with the folder opened up, SO_PEERCRED refuses the other uid.
    os.chmod(home.path / "mux", 0o777)
    os.chmod(sock, 0o777)
    try:
        past_dir = subprocess.run(as_nobody, capture_output=True, text=True, timeout=20)
    finally:
        os.chmod(home.path / "mux", 0o700)
    assert "connected" in past_dir.stdout and "b''" in past_dir.stdout, past_dir
    log = (home.path / "mux" / "log").read_text()
    assert "peer_refused" in log and f"peer_uid={_nobody_uid()}" in log
    # The owner still gets through.
    assert mux_exec(home, daemon, "echo mine").stdout == b"mine\n"


def _nobody_uid() -> int:
    import pwd

    return pwd.getpwnam("nobody").pw_uid


def test_a_restarted_daemon_is_not_reused_and_the_command_runs_once(home, daemon, tmp_path):
    counter = tmp_path / "count"
    assert mux_exec(home, daemon, f"echo x >> {counter}").returncode == 0
    daemon.stop()
    daemon.start()  # same port? not necessarily: a fresh one
    run = mux_exec(home, daemon, f"echo x >> {counter}", timeout=30)
    assert run.returncode == 0, run.stderr
    assert counter.read_text() == "x\nx\n"


def test_a_restarted_daemon_on_the_same_port_is_discarded(home, daemon_factory, tmp_path):
    daemon = daemon_factory({"ops": client_entry(home)})
    counter = tmp_path / "count"
    assert mux_exec(home, daemon, f"echo x >> {counter}").returncode == 0
    port = daemon.port
    daemon.stop()
    daemon.config["listen"] = [f"127.0.0.1:{port}"]
    daemon.start()
    run = mux_exec(home, daemon, f"echo x >> {counter}", timeout=30)
    assert run.returncode == 0, run.stderr
    assert counter.read_text() == "x\nx\n"
    assert authenticated(daemon) == 1  # the new daemon saw one fresh connection


def test_a_changed_host_key_fails_as_a_direct_connection_does(
    home, daemon_factory, tmp_path, stop_helpers
):
    daemon = daemon_factory({"ops": client_entry(home)})
    assert mux_exec(home, daemon, "true").returncode == 0
    port = daemon.port
    daemon.stop()
    other = tmp_path / "other-identity"
    other.mkdir()
    create_identity(other / "server.key", other / "server.crt", "radmind")
    daemon.config["identity"] = {
        "key": str(other / "server.key"),
        "cert": str(other / "server.crt"),
    }
    daemon.config["listen"] = [f"127.0.0.1:{port}"]
    daemon.start()
    direct = run_cli(home, "exec", daemon.address, "true")
    through = mux_exec(home, daemon, "true")
    assert direct.returncode == through.returncode == 255
    assert b"HOST KEY CHANGED" in direct.stderr
    assert through.stderr == direct.stderr


def test_unknown_host_warning_and_strict_refusal_are_the_direct_ones(home, daemon):
    strict_direct = run_cli(home, "exec", "--strict-host-key", daemon.address, "true")
    strict_mux = run_cli(home, "exec", "--mux", "--strict-host-key", daemon.address, "true")
    assert strict_direct.returncode == strict_mux.returncode == 255
    assert strict_mux.stderr == strict_direct.stderr
    first = mux_exec(home, daemon, "true")
    assert first.returncode == 0
    assert b"Warning: permanently added" in first.stderr
    assert daemon.address.encode() in home.known_hosts.read_bytes()


def test_an_unreachable_host_fails_as_a_direct_connection_does(home):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    direct = run_cli(home, "exec", f"127.0.0.1:{port}", "true")
    through = run_cli(home, "exec", "--mux", f"127.0.0.1:{port}", "true")
    assert direct.returncode == through.returncode == 255
    assert through.stderr == direct.stderr


def test_a_client_killed_mid_exec_ends_the_remote_process_group(home, daemon):
    marker = new_marker()
    client = start_cli(home, "exec", "--mux", daemon.address, f"sleep {marker}")
    wait_for_processes(marker, 1, timeout=20)
    client.kill()
    client.wait()
    assert wait_until_gone(marker, 10) < 10
    # The helper lives on, and the next command gets a fresh connection.
    run = mux_exec(home, daemon, "echo next")
    assert (run.returncode, run.stdout) == (0, b"next\n")


def test_expiry_under_load_every_client_succeeds(home, daemon):
    home.config.write_text("mux: true\n")
    assert run_cli(home, "mux", "--status").returncode == 1
    failures: list[bytes] = []
    helpers: set[int] = set()
    stop = threading.Event()

    def watch_helpers() -> None:
        while not stop.is_set():
            pid = helper_pid(home)
            if pid:
                helpers.add(pid)

    def client() -> None:
        for _ in range(12):
            run = run_cli(home, "exec", daemon.address, "echo ok", env={})
            if (run.returncode, run.stdout) != (0, b"ok\n"):
                failures.append(run.stderr)

    # A helper that expires after 0.3 s idle, while clients keep coming and going.
    started = subprocess.Popen(
        [RADMIN_CLI, "mux", "--idle-timeout", "0.3"],
        env={**os.environ, "RADMIN_HOME": str(home.path)},
        stderr=subprocess.PIPE,
    )
    wait_until(lambda: helper_pid(home) is not None, 10, "the helper to listen")
    threads = [threading.Thread(target=client) for _ in range(3)]
    watcher = threading.Thread(target=watch_helpers)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    watcher.join()
    started.wait(timeout=30)
    assert failures == []
    assert started.returncode == 0


def test_stop_and_status(home, daemon):
    missing = run_cli(home, "mux", "--status")
    assert missing.returncode == 1
    assert b"no mux helper runs" in missing.stdout
    not_running = run_cli(home, "mux", "--stop")
    assert not_running.returncode == 1
    assert b"no mux helper runs" in not_running.stderr
    assert mux_exec(home, daemon, "true").returncode == 0
    status = run_cli(home, "mux", "--status")
    assert status.returncode == 0
    assert b"1 pooled connection(s)" in status.stdout
    pid = helper_pid(home)
    stopped = run_cli(home, "mux", "--stop")
    assert stopped.returncode == 0, stopped.stderr
    assert _gone(pid)
    assert not (home.path / "mux" / "sock").exists()
    assert run_cli(home, "mux", "--status").returncode == 1


def _gone(pid: int) -> bool:
    try:
        return " Z " in Path(f"/proc/{pid}/stat").read_text()  # not our child to reap
    except FileNotFoundError:
        return True


def test_a_second_foreground_helper_says_already_running(home, daemon):
    assert mux_exec(home, daemon, "true").returncode == 0
    second = run_cli(home, "mux")
    assert second.returncode == 0
    assert b"already running" in second.stderr


def test_the_mux_folder_is_private_and_the_lock_held(home, daemon):
    assert mux_exec(home, daemon, "true").returncode == 0
    folder = home.path / "mux"
    assert folder.stat().st_mode & 0o777 == 0o700
    fd = os.open(folder / "lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_the_daemon_hello_announces_its_idle_timeout(home, daemon):
    import radmin.client

    trust(home, daemon)
    with radmin.client.connect(daemon.address, radmin.client.ClientOptions(home)) as conn:
        assert conn.wait_hello()["idle_timeout"] == 300


def test_exec_through_a_running_helper_loads_no_key_and_imports_nothing_heavy(home, daemon):
    from tests.support import cli_env
    from tests.test_cold_start import HEAVY, imported_by

    home.config.write_text("mux: true  # through radmin-cli mux\n")
    assert run_cli(home, "exec", daemon.address, "true").returncode == 0  # starts it
    for argv in (["exec", daemon.address, "true"], ["exec", "--mux", daemon.address, "true"]):
        found = imported_by(argv, env=cli_env(home))
        assert "radmin.mux.client" in found
        assert not found & (HEAVY | {"radmin.tls", "radmin.mux.server"}), sorted(found & HEAVY)


def test_a_frozen_daemon_reads_as_it_does_without_the_helper(home, daemon):
    """The helper falls silent when its daemon does: the client's own heartbeats judge
    it and print the direct client's words, exit 255."""
    from tests.test_heartbeat import frozen

    marker = new_marker()
    client = start_cli(
        home,
        "exec",
        "--mux",
        "-n",
        "--heartbeat-interval",
        "0.5",
        daemon.address,
        f"sleep {marker}",
        stderr=subprocess.PIPE,
    )
    wait_for_processes(marker, 1, exclude=(client.pid,), timeout=20)
    assert daemon.proc is not None
    with frozen(daemon.proc):
        _, stderr = client.communicate(timeout=30)
    assert client.returncode == 255, stderr
    assert f"no answer from {daemon.address} for 1.5 s while running the command".encode() in (
        stderr
    )
    wait_until_gone(marker, timeout=15)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", False),
        ("mux: true\n", True),
        ("mux: false  # radmin-cli mux\n", False),
        ("# mux: true   # commented out\nhosts:\n  web1: 10.0.0.1\n", False),
        ("hosts:\n  web1: 10.0.0.1\nmux: yes\n", True),  # YAML 1.1 booleans: parsed
        ("hosts:\n  mux: 10.0.0.1\n", False),  # an alias named mux
    ],
)
def test_config_yaml_mux_key(tmp_path, text, expected):
    from radmin.hosts import configured_mux

    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert configured_mux(path) is expected


def test_clients_starting_helpers_at_once_all_use_the_one_that_won(home, daemon):
    clients = [
        start_cli(home, "exec", "--mux", daemon.address, "echo hi", stdout=subprocess.PIPE)
        for _ in range(6)
    ]
    for client in clients:
        out, _ = client.communicate(timeout=60)
        assert (client.returncode, out) == (0, b"hi\n")
    log = (home.path / "mux" / "log").read_text()
    assert log.count("mux_started") == 1, log
    assert log.count("] session ") == 6, log  # none of them went direct


def test_no_helper_to_be_had_means_a_direct_connection(home, daemon):
    (home.path / "mux").write_text("not a folder\n")
    before = authenticated(daemon)
    run = mux_exec(home, daemon, "echo direct")
    assert (run.returncode, run.stdout) == (0, b"direct\n"), run.stderr
    assert authenticated(daemon) - before == 1
    assert run_cli(home, "mux", "--status").returncode == 1
