"""Daemon operations through real processes and real signals: SIGHUP reloads (clients,
listeners, broken configs, log files), SIGTERM with its grace period (idle connections,
a running exec, a running upload), sd_notify, `run --detach` with its pidfile, and the
systemd unit."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support import (
    RADMIN_CLI,
    RADMIND,
    Daemon,
    base_config,
    client_entry,
    make_client_home,
    run_cli,
    wait_until,
)

from radmin.client import ClientOptions, Connection, RemoteError, connect
from radmin.hosts import Target
from radmin.identity import ClientHome
from radmin.protocol import FrameType

UNIT = Path(__file__).resolve().parent.parent / "packaging" / "systemd" / "radmind.service"


# -- helpers --------------------------------------------------------------------------


def events_named(daemon: Daemon, *names: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") in names]


def sighup(daemon: Daemon, timeout: float = 10.0) -> dict[str, Any]:
    """Send SIGHUP and return the daemon's verdict: the next reloaded/reload_rejected."""
    outcomes = ("reloaded", "reload_rejected")
    seen = len(events_named(daemon, *outcomes))
    daemon.signal(signal.SIGHUP)
    return wait_until(
        lambda: events_named(daemon, *outcomes)[seen:][:1] or None,
        timeout,
        "the daemon's answer to SIGHUP",
    )[0]


def api_connect(home: ClientHome, port: int, host: str = "127.0.0.1") -> Connection:
    return connect(Target("d", host, port), ClientOptions(home))


def accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """True for a running process (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def pgrep(pattern: str) -> list[int]:
    result = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in result.stdout.split()]


def only_addresses(event: dict[str, Any], host: str) -> list[int]:
    return [int(a.rsplit(":", 1)[1]) for a in event["addresses"] if a.startswith(f"{host}:")]


class Radmind(Daemon):
    """support.Daemon started with a chosen environment (NOTIFY_SOCKET, WATCHDOG_USEC);
    its stdout/stderr go to stderr.txt, its events to log.file when the config sets one."""

    def __init__(self, folder: Path, config: dict[str, Any], env: dict[str, str] | None = None):
        super().__init__(folder, config, env)
        self.stderr_path = folder / "stderr.txt"
        if not config.get("log", {}).get("file"):
            self.log_path = self.stderr_path


@pytest.fixture
def radmind_factory(tmp_path, server_identity) -> Iterator[Callable[..., Radmind]]:
    started: list[Radmind] = []

    def make(
        clients: dict[str, Any], env: dict[str, str] | None = None, **overrides: Any
    ) -> Radmind:
        folder = tmp_path / f"radmind{len(started)}"
        (folder / "uploads").mkdir(parents=True)
        config = base_config(server_identity, folder, **overrides)
        config["clients"] = clients
        daemon = Radmind(folder, config, env)
        started.append(daemon)
        return daemon.start()

    yield make
    for daemon in started:
        daemon.stop()


# -- SIGHUP: clients ------------------------------------------------------------------


def test_sighup_adds_a_client_without_restart_and_keeps_open_connections(
    daemon, client_home, tmp_path
):
    newcomer = make_client_home(tmp_path / "newcomer")
    assert run_cli(newcomer, "ping", daemon.address).returncode == 255  # not listed yet
    pid = daemon.proc.pid
    with api_connect(client_home, daemon.port) as old:
        assert old.ping().client == "ops"
        daemon.config["clients"]["newcomer"] = client_entry(newcomer)
        daemon.write_config()
        event = sighup(daemon)
        assert event["event"] == "reloaded", event
        assert event["clients"] == ["newcomer", "ops"]
        result = run_cli(newcomer, "ping", daemon.address)
        assert result.returncode == 0, result.stderr
        assert b'known as "newcomer"' in result.stdout
        # The connection opened before the reload is still up and still served.
        assert old.ping().client == "ops"
    assert daemon.proc.pid == pid and daemon.proc.poll() is None  # no restart


def test_sighup_with_broken_config_is_rejected_and_old_config_stays(daemon, client_home, tmp_path):
    newcomer = make_client_home(tmp_path / "newcomer")
    with api_connect(client_home, daemon.port) as old:
        old.ping()
        daemon.config["clients"]["newcomer"] = client_entry(newcomer)
        daemon.write_config()
        with daemon.config_path.open("a") as f:
            f.write("bogus_setting: 1\n")
        bad_line = len(daemon.config_path.read_text().splitlines())
        event = sighup(daemon)
        assert event["event"] == "reload_rejected", event
        assert event["level"] == "error"
        assert any(
            p.startswith(f"{daemon.config_path}:{bad_line}: bogus_setting: unknown key")
            for p in event["problems"]
        ), event["problems"]
        assert daemon.proc.poll() is None
        # The old config is in force: old clients work, the newcomer is still unknown.
        assert old.ping().client == "ops"
        assert run_cli(client_home, "ping", daemon.address).returncode == 0
        assert run_cli(newcomer, "ping", daemon.address).returncode == 255


def test_client_removed_by_sighup_cannot_start_requests_on_a_new_connection(
    daemon_factory, client_home, tmp_path
):
    leaver = make_client_home(tmp_path / "leaver")
    daemon = daemon_factory({"ops": client_entry(client_home), "leaver": client_entry(leaver)})
    assert run_cli(leaver, "ping", daemon.address).returncode == 0
    del daemon.config["clients"]["leaver"]
    daemon.write_config()
    event = sighup(daemon)
    assert event["event"] == "reloaded" and event["clients"] == ["ops"], event
    result = run_cli(leaver, "ping", daemon.address)
    assert result.returncode == 255
    assert b"not authorized" in result.stderr
    assert run_cli(client_home, "ping", daemon.address).returncode == 0


def test_client_removed_by_sighup_cannot_start_requests_on_an_open_connection(
    daemon_factory, client_home, tmp_path
):
    leaver = make_client_home(tmp_path / "leaver")
    daemon = daemon_factory({"ops": client_entry(client_home), "leaver": client_entry(leaver)})
    with api_connect(leaver, daemon.port) as opened_before:
        assert opened_before.ping().client == "leaver"
        del daemon.config["clients"]["leaver"]
        daemon.write_config()
        assert sighup(daemon)["event"] == "reloaded"
        # "new clients and policies apply to new requests": this request is new.
        with pytest.raises(RemoteError) as refused:
            opened_before.ping()
        assert refused.value.code == "not_authorized"


# -- SIGHUP: listeners ----------------------------------------------------------------


def test_sighup_adds_and_removes_listen_addresses(daemon, client_home):
    assert daemon.ports and len(daemon.ports) == 1
    daemon.config["listen"] = ["127.0.0.1:0", "127.0.0.2:0"]
    daemon.write_config()
    event = sighup(daemon)
    assert event["event"] == "reloaded", event
    (second_port,) = only_addresses(event, "127.0.0.2")
    assert only_addresses(event, "127.0.0.1") == [daemon.port]  # kept, not rebound
    result = run_cli(client_home, "ping", f"127.0.0.2:{second_port}")
    assert result.returncode == 0, result.stderr

    daemon.config["listen"] = ["127.0.0.1:0"]
    daemon.write_config()
    event = sighup(daemon)
    assert event["event"] == "reloaded", event
    assert event["addresses"] == [daemon.address]
    assert not accepts_tcp("127.0.0.2", second_port)
    assert run_cli(client_home, "ping", daemon.address).returncode == 0


# -- log.file -------------------------------------------------------------------------


def test_log_file_gets_the_json_lines_not_stderr(radmind_factory, client_home):
    daemon = radmind_factory({"ops": client_entry(client_home)}, log={"file": "radmind-file.log"})
    log = daemon.folder / "radmind-file.log"  # relative to the config's folder
    assert daemon.log_path == log
    assert run_cli(client_home, "ping", daemon.address).returncode == 0
    wait_until(lambda: events_named(daemon, "connection_closed"), 5, "an event in log.file")
    assert all(json.loads(line) for line in log.read_text().splitlines())
    assert "listening" not in daemon.stderr_path.read_text()


def test_log_file_is_reopened_on_sighup_after_logrotate_moved_it(radmind_factory, client_home):
    daemon = radmind_factory({"ops": client_entry(client_home)}, log={"file": "radmind-file.log"})
    log = daemon.folder / "radmind-file.log"
    rotated = log.with_name("radmind-file.log.1")
    log.rename(rotated)  # what logrotate does before its postrotate SIGHUP
    lines_in_rotated = len(rotated.read_text().splitlines())
    daemon.signal(signal.SIGHUP)
    wait_until(
        lambda: events_named(daemon, "reloaded") or daemon.proc.poll() is not None,
        10,
        "reloaded in a new log file",
    )
    assert daemon.proc.poll() is None, daemon.stderr_path.read_text()[-2000:]
    assert events_named(daemon, "reloaded")
    assert run_cli(client_home, "ping", daemon.address).returncode == 0
    wait_until(lambda: events_named(daemon, "connection_closed"), 5, "an event in the new file")
    assert len(rotated.read_text().splitlines()) == lines_in_rotated  # nothing went there
    assert all(json.loads(line) for line in log.read_text().splitlines())


# -- SIGTERM --------------------------------------------------------------------------


def test_sigterm_while_idle_exits_promptly_despite_idle_connections(daemon_factory, client_home):
    daemon = daemon_factory(
        {"ops": client_entry(client_home)}, limits={"handshake_timeout": 2, "shutdown_grace": 20}
    )
    with api_connect(client_home, daemon.port) as idle, api_connect(client_home, daemon.port):
        idle.ping()  # one waits for its next request, one never sent any
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 3  # far below the 20 s grace
    stopped = daemon.wait_for_event(lambda e: e.get("event") == "stopped")
    assert stopped["ended_early"] is False
    stopping = daemon.wait_for_event(lambda e: e.get("event") == "stopping")
    assert stopping["reason"] == "SIGTERM"


def _start_exec(home: ClientHome, address: str, *command: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("RADMIN_HOME", "RADMIN_CONFIG")}
    env["RADMIN_HOME"] = str(home.path)
    return subprocess.Popen(
        [RADMIN_CLI, "exec", "-n", address, *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def test_sigterm_lets_an_exec_finish_within_the_grace(daemon_factory, client_home, tmp_path):
    daemon = daemon_factory(
        {"ops": client_entry(client_home)}, limits={"handshake_timeout": 2, "shutdown_grace": 5}
    )
    started_marker = tmp_path / "exec-started"
    client = _start_exec(client_home, daemon.address, f"touch {started_marker}; sleep 2; echo done")
    try:
        wait_until(started_marker.exists, 10, "the exec to start")
        signalled = time.monotonic()
        daemon.signal(signal.SIGTERM)
        daemon.wait_for_event(lambda e: e.get("event") == "stopping")
        # Stopping means no new connections, while the exec keeps running.
        assert run_cli(client_home, "ping", daemon.address).returncode == 255
        out, err = client.communicate(timeout=15)
        assert client.returncode == 0, err
        assert out == b"done\n"
        assert daemon.proc.wait(timeout=10) == 0
        daemon_done = time.monotonic()
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert daemon_done - signalled < 4.5  # it did not sit out the whole grace period
    stopped = daemon.wait_for_event(lambda e: e.get("event") == "stopped")
    assert stopped["ended_early"] is False
    request = daemon.wait_for_event(lambda e: e.get("event") == "request" and e.get("op") == "exec")
    assert request["exit_code"] == 0
    assert _when(request) <= _when(stopped)  # the exec ended first, then the daemon


def _when(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))


def test_sigterm_kills_an_exec_running_beyond_the_grace(daemon_factory, client_home):
    daemon = daemon_factory(
        {"ops": client_entry(client_home)}, limits={"handshake_timeout": 2, "shutdown_grace": 1}
    )
    # Anchored so that it matches the remote command, not radmin-cli's own command line.
    remote = r"^(/bin/sh -c )?sleep 1000\.456"
    client = _start_exec(client_home, daemon.address, "sleep 1000.456")
    try:
        wait_until(lambda: pgrep(remote), 10, "the remote sleep to start")
        signalled = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=15) == 0
        assert time.monotonic() - signalled >= 0.9  # the grace period was given
        wait_until(lambda: not pgrep(remote), 5, "the process group to be killed")
        _, err = client.communicate(timeout=10)
        assert client.returncode == 143, err  # a RESULT: signal 15, not a dropped connection
        assert b"daemon shutting down" in err
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        for pid in pgrep(remote):
            os.kill(pid, signal.SIGKILL)
    stopped = daemon.wait_for_event(lambda e: e.get("event") == "stopped")
    assert stopped["ended_early"] is True
    daemon.wait_for_event(lambda e: e.get("event") == "ending_requests")


def test_sigterm_during_a_slow_put_beyond_the_grace_keeps_the_old_file(
    daemon_factory, client_home, tmp_path
):
    daemon = daemon_factory(
        {"ops": client_entry(client_home)}, limits={"handshake_timeout": 2, "shutdown_grace": 1}
    )
    folder = tmp_path / "target"
    folder.mkdir()
    destination = folder / "app.conf"
    old = b"old content\n" * 100
    destination.write_bytes(old)
    chunk, chunks = 4096, 200  # at 20 chunks a second: 10 s, far longer than the grace
    new = os.urandom(chunk * chunks)
    inflight = Path(daemon.config["state_dir"]) / "inflight"

    conn = api_connect(client_home, daemon.port)
    stop_sending = threading.Event()
    send_errors: list[BaseException] = []

    def trickle() -> None:
        try:
            for i in range(chunks):
                if stop_sending.is_set():
                    return
                conn.frames.send_frame(FrameType.FILE_DATA, new[i * chunk : (i + 1) * chunk])
                time.sleep(0.05)  # the slow upload under test, not a wait for anything
        except Exception as exc:  # the daemon ended the connection: expected
            send_errors.append(exc)

    sender = threading.Thread(target=trickle, daemon=True)
    try:
        conn.request(
            "put",
            path=str(destination),
            name=destination.name,
            size=len(new),
            sha256=hashlib.sha256(new).hexdigest(),
            mode=0o644,
            owner=None,
            group=None,
        )
        frame_type, _ = conn.frames.recv_json(FrameType.PROCEED)
        assert frame_type is FrameType.PROCEED
        sender.start()
        # The upload is under way: a temporary file beside the destination, journaled.
        wait_until(lambda: list(folder.glob(".radmin-upload-*")), 5, "the temporary file")
        assert list(inflight.iterdir())
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=15) == 0
    finally:
        stop_sending.set()
        if sender.is_alive():
            sender.join(timeout=10)
        conn.close()
    assert destination.read_bytes() == old
    assert sorted(p.name for p in folder.iterdir()) == ["app.conf"]
    assert list(inflight.iterdir()) == []
    stopped = daemon.wait_for_event(lambda e: e.get("event") == "stopped")
    assert stopped["ended_early"] is True


# -- sd_notify ------------------------------------------------------------------------


class NotifySocket:
    """What systemd does: a datagram socket that collects the daemon's notifications."""

    def __init__(self, abstract: bool):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._folder: str | None = None
        if abstract:
            name = f"radmin-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            self._folder = tempfile.mkdtemp(prefix="rn-", dir="/tmp")  # short: sun_path limit
            path = os.path.join(self._folder, "notify")
            self.sock.bind(path)
            self.env_value = path
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self.sock.settimeout(0.2)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def snapshot(self) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, key: str, after: int = 0, timeout: float = 10.0) -> int:
        """Index of the first message from `after` on that carries `key`."""

        def find() -> int | None:
            for i, (_, fields) in enumerate(self.snapshot()[after:], start=after):
                if key in fields:
                    return i + 1  # +1 so that index 0 is truthy for wait_until
            return None

        return wait_until(find, timeout, f"{key} on NOTIFY_SOCKET") - 1

    def count(self, key: str, start: float, end: float) -> int:
        return sum(1 for t, fields in self.snapshot() if key in fields and start <= t <= end)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self.sock.close()
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request) -> Iterator[NotifySocket]:
    listener = NotifySocket(abstract=request.param == "abstract")
    yield listener
    listener.close()


def _systemd_env(notify: NotifySocket, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    return {**env, "NOTIFY_SOCKET": notify.env_value, **extra}


def test_sd_notify_ready_status_watchdog_reloading_stopping(
    radmind_factory, client_home, notify_socket
):
    env = _systemd_env(notify_socket, WATCHDOG_USEC="1000000")
    daemon = radmind_factory({"ops": client_entry(client_home)}, env=env)
    ready = notify_socket.wait_for("READY")
    _, fields = notify_socket.snapshot()[ready]
    status = fields.get("STATUS", "")
    match = re.search(r"listening on 127\.0\.0\.1:(\d+)", status)
    assert match, f"STATUS names the address: {status!r}"
    port = int(match.group(1))
    assert port == daemon.port
    assert accepts_tcp("127.0.0.1", port)  # READY=1 means connections are accepted now

    # WatchdogSec=1s -> WATCHDOG=1 every 0.5 s, while the daemon is healthy.
    window_start = time.monotonic()

    def watchdog_pings() -> list[float]:
        return [t for t, f in notify_socket.snapshot() if "WATCHDOG" in f and t >= window_start]

    wait_until(lambda: len(watchdog_pings()) >= 4, 10, "four WATCHDOG=1 pings")
    first, *_, fourth = watchdog_pings()[:4]
    # Three intervals of 0.5 s: neither a flood nor fewer than one per WatchdogSec.
    assert 0.9 <= fourth - first <= 3.5, watchdog_pings()

    seen = len(notify_socket.snapshot())
    daemon.signal(signal.SIGHUP)
    reloading = notify_socket.wait_for("RELOADING", after=seen)
    reloading_fields = notify_socket.snapshot()[reloading][1]
    assert reloading_fields["RELOADING"] == "1"
    usec = int(reloading_fields["MONOTONIC_USEC"])
    assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 10
    ready_again = notify_socket.wait_for("READY", after=reloading)
    assert notify_socket.snapshot()[ready_again][1]["READY"] == "1"
    assert run_cli(client_home, "ping", daemon.address).returncode == 0

    seen = len(notify_socket.snapshot())
    daemon.signal(signal.SIGTERM)
    stopping = notify_socket.wait_for("STOPPING", after=seen)
    assert notify_socket.snapshot()[stopping][1]["STOPPING"] == "1"
    assert daemon.proc.wait(timeout=10) == 0


def test_sd_notify_no_watchdog_when_watchdog_pid_is_another_process(radmind_factory, client_home):
    notify = NotifySocket(abstract=False)
    try:
        # WATCHDOG_PID names this test process, not radmind: the watchdog is not radmind's.
        env = _systemd_env(notify, WATCHDOG_USEC="400000", WATCHDOG_PID=str(os.getpid()))
        daemon = radmind_factory({"ops": client_entry(client_home)}, env=env)
        notify.wait_for("READY")
        # No event says "no ping is coming": waiting is the behaviour under test. 1.5 s
        # would carry about 7 pings at 0.2 s intervals.
        time.sleep(1.5)
        assert notify.count("WATCHDOG", 0, time.monotonic()) == 0
        assert daemon.proc.poll() is None
    finally:
        notify.close()


# -- run --detach ---------------------------------------------------------------------


@pytest.fixture
def detached(tmp_path, server_identity, client_home) -> Iterator[Callable[..., Any]]:
    """Runs `radmind run --detach`; kills every daemon it started, whatever happens."""
    pidfiles: list[Path] = []
    pids: set[int] = set()

    def run(folder: Path, pidfile: Path, log_file: str | None = "radmind.log"):
        config_path = folder / "radmind.yaml"
        if not config_path.exists():
            (folder / "uploads").mkdir(parents=True)
            config = base_config(server_identity, folder)
            config["clients"] = {"ops": client_entry(client_home)}
            if log_file:
                config["log"]["file"] = log_file
            Daemon(folder, config).write_config()
        pidfiles.append(pidfile)
        started = time.monotonic()
        result = subprocess.run(
            [RADMIND, "run", "-c", str(config_path), "--detach", "--pidfile", str(pidfile)],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=30,
        )
        elapsed = time.monotonic() - started
        match = re.search(rb"pid (\d+)", result.stdout)
        if result.returncode == 0 and match:
            pids.add(int(match.group(1)))
        return result, elapsed

    yield run
    for pidfile in pidfiles:
        try:
            pids.add(int(pidfile.read_text().strip()))
        except (OSError, ValueError):
            pass
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def _port_from_log(log: Path) -> int:
    def find() -> int | None:
        for line in log.read_text().splitlines() if log.exists() else []:
            event = json.loads(line)
            if event.get("event") == "listening":
                return int(event["addresses"][0].rsplit(":", 1)[1])
        return None

    return wait_until(find, 5, f"listening in {log}")


def test_detach_writes_pidfile_serves_refuses_second_start_and_stops(
    detached, tmp_path, client_home
):
    folder, pidfile = tmp_path / "d", tmp_path / "radmind.pid"
    result, elapsed = detached(folder, pidfile)
    assert result.returncode == 0, result.stderr
    assert elapsed < 5
    pid = int(pidfile.read_text().strip())
    assert result.stdout.decode() == f"radmind started, pid {pid}\n"
    assert pid_alive(pid)
    port = _port_from_log(folder / "radmind.log")  # log.file is relative to the config
    ping = run_cli(client_home, "ping", f"127.0.0.1:{port}")
    assert ping.returncode == 0, ping.stderr

    second, _ = detached(folder, pidfile)
    assert second.returncode != 0
    assert f"pid {pid}".encode() in second.stdout + second.stderr
    assert int(pidfile.read_text().strip()) == pid and pid_alive(pid)

    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pid_alive(pid), 10, "the detached daemon to exit")
    assert not pidfile.exists()


def test_detach_takes_over_a_stale_pidfile(detached, tmp_path, client_home):
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidfile = tmp_path / "radmind.pid"
    pidfile.write_text(f"{dead.pid}\n")  # no process, no lock: a crash left it behind
    folder = tmp_path / "d"
    result, _ = detached(folder, pidfile)
    assert result.returncode == 0, result.stdout + result.stderr
    pid = int(pidfile.read_text().strip())
    assert pid != dead.pid and pid_alive(pid)
    port = _port_from_log(folder / "radmind.log")
    assert run_cli(client_home, "ping", f"127.0.0.1:{port}").returncode == 0
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pid_alive(pid), 10, "the detached daemon to exit")
    assert not pidfile.exists()


def test_detach_without_log_file_is_a_clear_error(detached, tmp_path):
    pidfile = tmp_path / "radmind.pid"
    result, elapsed = detached(tmp_path / "d", pidfile, log_file=None)
    assert result.returncode == 1
    assert b"log.file" in result.stderr
    assert elapsed < 5
    assert not pidfile.exists()


# -- the systemd unit -----------------------------------------------------------------


def _unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_settings():
    settings = _unit_settings(UNIT.read_text())
    assert settings["Type"] == ["notify"]
    assert any(re.fullmatch(r"(/usr)?/bin/kill -HUP \$MAINPID", v) for v in settings["ExecReload"])
    assert settings.get("WatchdogSec")
    assert settings.get("KillMode")
    assert settings["Restart"] == ["on-failure"]
    assert settings["ConfigurationDirectory"] == ["radmin"]
    assert settings["StateDirectory"] == ["radmin"]
    assert settings.get("LimitNOFILE")
    assert settings.get("ProtectSystem", ["no"])[-1] != "strict"
    assert settings.get("PrivateTmp", ["no"])[-1] not in ("yes", "true", "on", "1")


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = UNIT.read_text()
    assert "/opt/radmin/bin" in text
    unit = tmp_path / "radmind.service"
    unit.write_text(text.replace("/opt/radmin/bin", str(Path(sys.executable).parent)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not [line for line in output.splitlines() if "radmind.service" in line], output
