"""exec through the real programs: a real radmind, real radmin-cli processes, real commands.

Remote processes are found with `pgrep -f` by a unique marker in their command line
(`sleep 1000.<random>`); the radmin-cli process that carries the same marker in its own
argv is excluded by PID.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import re
import select
import signal
import socket
import ssl
import subprocess
import threading
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
    frames_after_hello,
    make_client_home,
    new_marker,
    processes_with,
    refused_port,
    request_events,
    run_cli,
    start_cli,
    start_three_address_daemon,
    trust,
    wait_for_processes,
    wait_until,
    wait_until_gone,
)

from radmin.client import ClientOptions, RemoteError, connect
from radmin.errors import BadRequest
from radmin.hosts import Target
from radmin.identity import ClientHome
from radmin.ops.exec import parse_params
from radmin.protocol import MAX_DATA, FrameType

# -- helpers ----------------------------------------------------------------------------


class Shared(NamedTuple):
    daemon: Daemon
    home: ClientHome
    addresses: list[str]  # host:port on 127.0.0.1, 127.0.0.2 and 127.0.0.3


@pytest.fixture(scope="module")
def shared(tmp_path_factory, server_identity) -> Iterator[Shared]:
    """One daemon for the tests that need no special config (a daemon's stop takes
    ~0.5 s per listener): it listens on 127.0.0.1, .2 and .3, a port each, knows `home`
    as "ops" with every command allowed, and is already in home's known_hosts. That it
    keeps serving after the disconnects and kills of earlier tests is tested too."""
    daemon, home = start_three_address_daemon(
        tmp_path_factory.mktemp("shared-daemon"), server_identity
    )
    try:
        addresses = trust(home, daemon)
        assert [a.split(":")[0] for a in addresses] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        yield Shared(daemon, home, addresses)
    finally:
        daemon.stop()


@pytest.fixture
def home(shared) -> ClientHome:
    return shared.home


@pytest.fixture
def host(shared) -> str:
    """The shared daemon on 127.0.0.1."""
    return shared.addresses[0]


@pytest.fixture
def three_hosts(shared) -> list[str]:
    return shared.addresses


# -- exit statuses ----------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 42])
def test_exec_exits_with_the_remote_commands_status(host, home, code):
    result = run_cli(home, "exec", host, f"exit {code}")
    assert result.returncode == code, result.stderr
    assert result.stdout == b""
    assert result.stderr == b""


def test_exec_killed_by_signal_exits_128_plus_signal(host, home):
    result = run_cli(home, "exec", host, "kill -9 $$")
    assert result.returncode == 137, result.stderr


def test_exec_on_unreachable_host_exits_255_with_one_line_reason(client_home):
    sock, port = refused_port()
    with sock:
        result = run_cli(client_home, "exec", f"127.0.0.1:{port}", "echo never")
    assert result.returncode == 255
    assert result.stdout == b""
    assert result.stderr.decode() == f"radmin-cli: 127.0.0.1:{port}: connection refused\n"


def test_exec_joins_command_words_with_spaces_like_ssh(host, home):
    result = run_cli(home, "exec", host, "echo", "a", "b;", "echo", "c")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"a b\nc\n"


# -- output -----------------------------------------------------------------------------


def test_exec_keeps_stdout_and_stderr_apart(host, home):
    result = run_cli(
        home,
        "exec",
        host,
        "printf 'out1\\n'; printf 'err1\\n' >&2; printf out2; printf err2 >&2",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"out1\nout2"
    assert result.stderr == b"err1\nerr2"


def test_exec_output_is_byte_exact_for_all_256_byte_values(host, home):
    data = bytes(range(256)) * 4096 + b"\r\n\x00tail without newline\xff"
    out = run_cli(home, "exec", host, "cat", input=data)
    assert out.returncode == 0, out.stderr
    assert out.stdout == data
    err = run_cli(home, "exec", host, "cat >&2", input=data)
    assert err.returncode == 0
    assert err.stdout == b""
    assert err.stderr == data


def test_exec_streams_50_mib_of_output_intact(host, home):
    size = 50 * 1024 * 1024
    result = run_cli(home, "exec", host, f"head -c {size} /dev/zero | tr '\\0' x")
    assert result.returncode == 0, result.stderr[-500:]
    assert len(result.stdout) == size
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(b"x" * size).hexdigest()


def test_exec_output_arrives_live_not_at_the_end(host, home):
    proc = start_cli(home, "exec", host, "echo a; sleep 2; echo b", stdout=subprocess.PIPE)
    try:
        first = proc.stdout.readline()
        first_at = time.monotonic()
        second = proc.stdout.readline()
        second_at = time.monotonic()
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
    assert (first, second) == (b"a\n", b"b\n")
    assert second_at - first_at > 1.5, "the first line was held back until the command ended"


def test_exec_stderr_also_arrives_live(host, home):
    proc = start_cli(home, "exec", host, "echo a >&2; sleep 2; echo b >&2", stderr=subprocess.PIPE)
    try:
        first = proc.stderr.readline()
        first_at = time.monotonic()
        second = proc.stderr.readline()
        second_at = time.monotonic()
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
    assert (first, second) == (b"a\n", b"b\n")
    assert second_at - first_at > 1.5


def test_exec_waits_for_output_of_background_children_like_ssh(host, home):
    result = run_cli(home, "exec", host, "(sleep 0.3; echo late) & echo early")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"early\nlate\n"


def test_exec_streams_30_mib_both_ways_at_once_without_deadlock(host, home):
    data = random.Random(3).randbytes(30 * 1024 * 1024)
    result = run_cli(home, "exec", host, "cat", input=data, timeout=30)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == len(data)
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


# -- stdin ------------------------------------------------------------------------------


def test_exec_forwards_piped_stdin(host, home):
    result = run_cli(home, "exec", host, "wc -l", input=b"x\ny\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == b"2"


def wait_with_stdin_open(proc: subprocess.Popen, failure: str) -> tuple[int, bytes]:
    """Wait (5 s at most) for a client whose stdin pipe we keep open; (status, stdout)."""
    try:
        status = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail(failure)
    finally:
        proc.kill()
        proc.stdin.close()
        out = proc.stdout.read()
        proc.stdout.close()
        proc.wait()
    return status, out


def test_exec_dash_n_gives_the_command_eof_at_once(host, home):
    # stdin is a pipe that stays open: without -n, cat would wait for it forever.
    proc = start_cli(
        home, "exec", "-n", host, "cat; echo done", stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    status, out = wait_with_stdin_open(proc, "cat did not get EOF with -n")
    assert status == 0
    assert out == b"done\n"


def test_exec_does_not_forward_a_terminal_stdin(host, home):
    leader, follower = os.openpty()
    try:
        proc = start_cli(
            home,
            "exec",
            host,
            "cat; echo done",
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("a terminal stdin was forwarded: cat never got EOF")
    finally:
        os.close(leader)
        os.close(follower)
    assert proc.returncode == 0, err
    assert out == b"done\n"


def test_exec_returns_when_command_exits_though_stdin_stays_open(host, home):
    proc = start_cli(home, "exec", host, "echo hi", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    proc.stdin.write(b"unread input\n")
    proc.stdin.flush()  # and never closed while we wait
    status, out = wait_with_stdin_open(
        proc, "the client kept waiting for its stdin after the command ended"
    )
    assert status == 0
    assert out == b"hi\n"


def test_exec_forwards_20_mib_of_stdin_intact(host, home):
    data = random.Random(7).randbytes(20 * 1024 * 1024)
    result = run_cli(home, "exec", host, "sha256sum", input=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_exec_command_that_ignores_large_stdin_returns_promptly(host, home):
    started = time.monotonic()
    result = run_cli(home, "exec", host, "true", input=b"y" * (20 * 1024 * 1024))
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10
    after = run_cli(home, "exec", host, "echo still fine")
    assert after.returncode == 0, after.stderr
    assert after.stdout == b"still fine\n"


# -- timeout, disconnect, Ctrl-C: the whole process group goes --------------------------


def test_exec_timeout_kills_process_group_and_exits_143(host, home):
    marker = new_marker()
    started = time.monotonic()
    result = run_cli(home, "exec", "-t", "1", host, f"sleep {marker} & sleep {marker}")
    elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed
    assert result.returncode == 143, result.stderr
    assert b"timed out" in result.stderr
    wait_until_gone(marker, timeout=1.0)


def test_exec_kills_process_group_on_disconnect(shared, host, home):
    marker = new_marker()
    proc = start_cli(home, "exec", host, f"sleep {marker} & sleep {marker}")
    try:
        wait_for_processes(marker, 2, exclude=(proc.pid,))
    finally:
        proc.kill()  # SIGKILL: no CANCEL, the connection just drops
        proc.wait()
    wait_until_gone(marker, timeout=6.0)
    event = shared.daemon.wait_for_event(
        lambda e: e.get("event") == "request" and marker in e.get("command", "")
    )
    assert event["outcome"] == "disconnected"


def test_exec_ctrl_c_exits_130_and_kills_remote_group(shared, host, home):
    marker = new_marker()
    proc = start_cli(home, "exec", host, f"sleep {marker} & sleep {marker}", stderr=subprocess.PIPE)
    try:
        wait_for_processes(marker, 2, exclude=(proc.pid,))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=8)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    wait_until_gone(marker, timeout=2.0)
    event = shared.daemon.wait_for_event(
        lambda e: e.get("event") == "request" and marker in e.get("command", "")
    )
    assert event["cancelled"] is True


def test_exec_second_ctrl_c_exits_at_once(host, home):
    marker, canary = new_marker(), new_marker()
    # The group ignores SIGTERM, so the daemon needs its SIGKILL grace to end it and the
    # first Ctrl-C keeps the client waiting for the daemon's confirmation. Only the canary,
    # started before the trap, dies of the daemon's SIGTERM: proof the CANCEL got there.
    # The shell joins the quoted halves, so only the canary's own argv carries its marker.
    split = f'{canary[:6]}""{canary[6:]}'
    command = f"sleep {split} & trap '' TERM; sleep {marker} & sleep {marker}"
    proc = start_cli(home, "exec", host, command)
    try:
        wait_for_processes(marker, 2, exclude=(proc.pid,))
        wait_for_processes(canary, 1)
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: not processes_with(canary), 10, "the daemon's SIGTERM (the canary)")
        assert proc.poll() is None, "the first Ctrl-C should wait for the daemon"
        second_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        status = proc.wait(timeout=5)
        assert time.monotonic() - second_at < 1.0
    finally:
        proc.kill()
        proc.wait()
    assert status == 130
    wait_until_gone(marker, timeout=6.0)


def test_exec_timeout_kills_a_group_that_ignores_sigterm(host, home):
    marker = new_marker()
    started = time.monotonic()
    result = run_cli(
        home, "exec", "-t", "0.5", host, f"trap '' TERM; sleep {marker} & sleep {marker}"
    )
    assert time.monotonic() - started < 6
    # SIGKILLed after the grace period, yet -t ended it: 143, as every -t timeout.
    assert result.returncode == 143, result.stderr
    assert b"timed out" in result.stderr
    wait_until_gone(marker, timeout=1.0)


def test_exec_timeout_above_the_daemons_exec_timeout_is_refused(
    daemon_factory, client_home, tmp_path
):
    daemon = daemon_factory(
        {"ops": client_entry(client_home)}, limits={"handshake_timeout": 2, "exec_timeout": 1}
    )
    trust(client_home, daemon)
    witness = tmp_path / "ran"
    result = run_cli(client_home, "exec", "-t", "60", daemon.address, f"touch {witness}")
    assert result.returncode == 126, result.stderr
    message = result.stderr.decode()
    assert message.count("\n") == 1 and "limits.exec_timeout" in message, message
    assert "refused: " in message and "bad_request" not in message
    assert not witness.exists()


def test_exec_time_limit_is_t_else_the_daemons_exec_timeout_else_none():
    assert parse_params({"command": "true"}, None).timeout == float("inf")
    assert parse_params({"command": "true"}, 60).timeout == 60
    assert parse_params({"command": "true", "timeout": 5}, None).timeout == 5
    assert parse_params({"command": "true", "timeout": 60}, 60).timeout == 60
    with pytest.raises(BadRequest, match=r"limits\.exec_timeout"):
        parse_params({"command": "true", "timeout": 61}, 60)


def test_exec_with_a_far_deadline_or_none_runs_normally(host, home):
    for limit in (("-t", "1e12"), ()):  # beyond what poll() takes; no limit at all
        result = run_cli(home, "exec", *limit, host, "sleep 0.1; echo done")
        assert (result.returncode, result.stdout) == (0, b"done\n"), result.stderr


def test_exec_without_t_is_ended_by_the_daemons_exec_timeout(daemon_factory, client_home):
    daemon = daemon_factory(
        {"ops": client_entry(client_home)}, limits={"handshake_timeout": 2, "exec_timeout": 0.5}
    )
    trust(client_home, daemon)
    marker = new_marker()
    started = time.monotonic()
    result = run_cli(client_home, "exec", daemon.address, f"sleep {marker}")
    assert time.monotonic() - started < 5
    assert result.returncode == 143, result.stderr
    assert b"timed out" in result.stderr
    wait_until_gone(marker, timeout=1.0)


def blocked_writing_a_pipe(pid: int) -> bool:
    """Whether process `pid` sleeps in the kernel's pipe write (its pipe is full)."""
    try:
        return "pipe_write" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:  # gone meanwhile
        return False


def test_exec_kills_process_group_on_disconnect_while_output_is_blocked(host, home):
    marker = new_marker()
    # Nobody reads the client's stdout: the daemon stops reading the command's pipes.
    proc = start_cli(home, "exec", host, f"yes {marker}", stdout=subprocess.PIPE)
    try:
        wait_for_processes(marker, 1, exclude=(proc.pid,))
        # Every buffer on the way is full once `yes` itself blocks writing into its pipe.
        wait_until(
            lambda: any(blocked_writing_a_pipe(p) for p in processes_with(marker, (proc.pid,))),
            10,
            "the remote command to block on its full output pipe",
        )
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    wait_until_gone(marker, timeout=6.0)


def test_exec_kills_process_group_on_disconnect_while_stdin_is_blocked(host, home):
    marker = new_marker()
    # The command never reads its stdin: the daemon stops reading the socket at its
    # high-water mark, then every buffer on the way fills up.
    proc = start_cli(home, "exec", host, f"sleep {marker}", stdin=subprocess.PIPE)
    last_write = [time.monotonic()]

    def feed() -> None:  # ~25 MiB/s: the daemon keeps up, so it stops at its high water
        with contextlib.suppress(OSError):
            while True:
                proc.stdin.write(bytes(256 * 1024))
                proc.stdin.flush()
                last_write[0] = time.monotonic()
                time.sleep(0.01)  # the pacing under test, not a wait for anything

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        wait_for_processes(marker, 1, exclude=(proc.pid,))
        wait_until(
            lambda: time.monotonic() - last_write[0] >= 0.3,  # no write got through for a while
            10,
            "the client to stop taking input",
        )
    finally:
        proc.kill()
        proc.wait()
        feeder.join(timeout=5)
        with contextlib.suppress(OSError):
            proc.stdin.close()
    wait_until_gone(marker, timeout=6.0)


def test_exec_daemon_buffers_a_bounded_amount_of_unread_stdin(daemon_factory, client_home):
    daemon = daemon_factory({"ops": client_entry(client_home)})

    def daemon_rss_mib() -> float:
        status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024

    marker = new_marker()
    before = daemon_rss_mib()
    frames = frames_after_hello(client_home, daemon.port)
    frames.send_json(
        FrameType.REQUEST,
        {
            "op": "exec",
            "command": f"sleep {marker}",
            "cwd": None,
            "env": {},
            "timeout": None,
            "stdin": True,
        },
    )
    stop = threading.Event()

    def blast() -> None:  # 1 MiB STDIN frames as fast as TLS goes, for a command that never reads
        chunk = bytes(MAX_DATA)
        with contextlib.suppress(OSError, ssl.SSLError):
            while not stop.is_set():
                frames.send_frame(FrameType.STDIN, chunk)
            frames.send_frame(FrameType.EOF)

    sender = threading.Thread(target=blast, daemon=True)
    sender.start()
    try:
        # A client that ignores the stdin window is cut off with a protocol error; until
        # then (and whatever happens) the daemon's memory stays bounded.
        peak = [before]

        def cut_off_or_grown() -> bool:  # sampling the daemon's memory all the while
            peak[0] = max(peak[0], daemon_rss_mib())
            return not sender.is_alive() or peak[0] - before >= 32

        wait_until(cut_off_or_grown, 10, "the daemon to cut off the sender (or to grow)")
        event = daemon.wait_for_event(lambda e: e.get("event") == "protocol_error", timeout=5)
        assert "window" in event["error"]
        wait_until_gone(marker, timeout=5.0)
    finally:
        stop.set()
        for pid in processes_with(marker):  # ends the exec; the daemon then drains our input
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        sender.join(timeout=10)
        frames.close()
    assert peak[0] - before < 32, f"daemon RSS grew from {before:.0f} to {peak[0]:.0f} MiB"


def test_exec_ctrl_c_on_several_hosts_kills_every_group(three_hosts, home):
    marker = new_marker()
    proc = start_cli(home, "exec", ",".join(three_hosts), f"sleep {marker}", stderr=subprocess.PIPE)
    try:
        wait_for_processes(marker, 3, exclude=(proc.pid,))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=8)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    wait_until_gone(marker, timeout=2.0)


def test_exec_ctrl_c_while_connecting_exits_promptly(client_home):
    # A port that accepts TCP (the kernel's backlog) but never answers the TLS handshake.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        proc = start_cli(client_home, "exec", f"127.0.0.1:{port}", "true", stderr=subprocess.PIPE)
        silent.settimeout(10)
        try:
            accepted, _ = silent.accept()
            with accepted:
                # Connected, its ClientHello sent: now waiting for the ServerHello.
                wait_until(lambda: select.select([accepted], [], [], 0)[0], 10, "a ClientHello")
                assert proc.poll() is None
                proc.send_signal(signal.SIGINT)
                sent_at = time.monotonic()
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    pytest.fail("Ctrl-C while connecting did not stop radmin-cli")
                assert time.monotonic() - sent_at < 2
        finally:
            proc.kill()
            proc.wait()
            proc.stderr.close()
    assert proc.returncode == 130


def test_exec_with_closed_stdin_runs_the_command(host, home):
    result = subprocess.run(
        ["/bin/sh", "-c", f'exec "$0" exec {host} "echo hi" <&-', RADMIN_CLI],
        capture_output=True,
        env=cli_env(home),
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hi\n"


def test_exec_ctrl_c_starts_no_further_hosts(shared, three_hosts, home):
    marker = new_marker()
    proc = start_cli(
        home, "exec", "-p", "1", ",".join(three_hosts), f"sleep {marker}", stderr=subprocess.PIPE
    )
    try:
        wait_for_processes(marker, 1, exclude=(proc.pid,))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    wait_until_gone(marker, timeout=3.0)

    def execs_with_marker() -> list[dict]:
        return [
            e
            for e in shared.daemon.events()
            if e.get("event") == "request" and marker in e.get("command", "")
        ]

    # The client is gone, so every connection it made ends; an exec is logged before its
    # connection closes. Once the daemon holds none open, every exec started is logged.
    wait_until(
        lambda: execs_with_marker() and not connections_held(shared.daemon.port),
        10,
        "every connection of the interrupted run to be closed",
    )
    started = execs_with_marker()
    assert len(started) == 1, f"hosts started after Ctrl-C: {[e['peer'] for e in started]}"


def connections_held(port: int) -> int:
    """TCP connections to `port` the daemon has not closed yet (queued for accept,
    established, or closed by the peer only), from the kernel's tables: the daemon logs
    no event when a connection opens, only when it ends."""
    held = {"01", "03", "08"}  # ESTABLISHED, SYN_RECV, CLOSE_WAIT
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                count += local_port == port and fields[3] in held
    return count


# -- working directory and environment --------------------------------------------------


def test_exec_runs_in_the_given_cwd(host, home):
    result = run_cli(home, "exec", "--cwd", "/tmp", host, "pwd")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"/tmp\n"


def test_exec_sets_env_variables(host, home):
    result = run_cli(
        home,
        "exec",
        "-e",
        "FOO=bar",
        "-e",
        "EMPTY=",
        "-e",
        "SP=a b=c",
        host,
        'echo "$FOO|$EMPTY|$SP"',
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"bar||a b=c\n"


@pytest.mark.parametrize("pair", ["1X=y", "NOEQUALS", "A-B=c"])
def test_exec_bad_env_name_is_a_usage_error(host, home, pair):
    result = run_cli(home, "exec", "-e", pair, host, "true")
    assert result.returncode == 2
    assert pair.encode() in result.stderr
    assert b"NAME=VALUE" in result.stderr


def test_exec_missing_cwd_is_refused_with_126_and_nothing_runs(host, home, tmp_path):
    witness = tmp_path / "ran"
    result = run_cli(home, "exec", "--cwd", "/nonexistent/dir", host, f"touch {witness}")
    assert result.returncode == 126
    line = result.stderr.decode()
    assert line.count("\n") == 1 and "/nonexistent/dir" in line and "does not exist" in line
    assert not witness.exists()


def test_exec_environment_is_clean_and_login_like(daemon_factory, client_home, monkeypatch):
    monkeypatch.setenv("RADMIN_LEAK_MARKER", "daemon-secret-value")
    daemon = daemon_factory({"ops": client_entry(client_home)})  # inherits our env
    trust(client_home, daemon)
    result = run_cli(client_home, "exec", daemon.address, "env")
    assert result.returncode == 0, result.stderr
    env = dict(line.split("=", 1) for line in result.stdout.decode().splitlines() if "=" in line)
    assert "RADMIN_LEAK_MARKER" not in env
    assert b"daemon-secret-value" not in result.stdout
    for name in ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG"):
        assert env.get(name), f"{name} missing from {sorted(env)}"
    assert os.path.isdir(env["HOME"])


# -- several hosts ----------------------------------------------------------------------


def test_exec_on_several_hosts_prefixes_lines_and_summarizes(three_hosts, home):
    sock, port = refused_port()
    dead = f"127.0.0.1:{port}"
    with sock:
        result = run_cli(
            home,
            "exec",
            ",".join([*three_hosts, dead]),
            "echo out; echo err >&2; printf partial; printf epartial >&2",
        )
    assert result.returncode == 255
    out_lines = result.stdout.decode().splitlines(keepends=True)
    assert sorted(out_lines) == sorted(
        f"{h}: {text}\n" for h in three_hosts for text in ("out", "partial")
    )
    for h in three_hosts:  # per host, in order
        assert out_lines.index(f"{h}: out\n") < out_lines.index(f"{h}: partial\n")
    err_lines = result.stderr.decode().splitlines()
    for h in three_hosts:
        assert err_lines.index(f"{h}: err") < err_lines.index(f"{h}: epartial")
    assert f"radmin-cli: {dead}: connection refused" in err_lines
    assert err_lines[-1] == f"3 ok, 1 unreachable ({dead}: connection refused)"


def test_exec_on_several_hosts_all_ok_exits_0(three_hosts, home):
    result = run_cli(home, "exec", ",".join(three_hosts), "echo hi")
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode().splitlines()[-1] == "3 ok"


def test_exec_on_several_hosts_one_failing_exits_1_and_names_it(three_hosts, home, tmp_path):
    # All hosts are this machine: the first to create the folder fails, the others not.
    lock = tmp_path / "first"
    result = run_cli(home, "exec", ",".join(three_hosts), f"mkdir {lock} && exit 3; :")
    assert result.returncode == 1, result.stderr
    summary = result.stderr.decode().splitlines()[-1]
    assert re.fullmatch(r"2 ok, 1 failed \((127\.0\.0\.[123]:\d+): exit 3\)", summary), summary
    assert re.search(r"\((.*): exit 3", summary).group(1) in three_hosts


def test_exec_json_gives_one_object_per_host(three_hosts, home):
    sock, port = refused_port()
    dead = f"127.0.0.1:{port}"
    with sock:
        result = run_cli(
            home,
            "exec",
            "--json",
            ",".join([*three_hosts, dead]),
            "echo out; echo err >&2; exit 4",
        )
    assert result.returncode == 255
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert sorted(r["host"] for r in records) == sorted([*three_hosts, dead])
    for record in records:
        assert {"host", "exit_code", "stdout", "stderr", "duration_s", "error"} <= record.keys()
        if record["host"] == dead:
            assert record["exit_code"] is None
            assert "connection refused" in record["error"]
        else:
            assert record["exit_code"] == 4
            assert (record["stdout"], record["stderr"]) == ("out\n", "err\n")
            assert isinstance(record["duration_s"], float)
            assert record["error"] is None


def test_exec_json_gives_non_utf8_output_exactly_in_base64(three_hosts, home):
    result = run_cli(home, "exec", "--json", ",".join(three_hosts), "printf '\\377\\376abc\\200'")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert len(records) == 3
    for record in records:
        assert base64.b64decode(record["stdout_base64"]) == b"\xff\xfeabc\x80"
        assert "abc" in record["stdout"]
        assert "stderr_base64" not in record


def test_exec_on_several_hosts_gives_each_the_same_stdin(three_hosts, home):
    data = b"line one\nline two\n" + bytes(range(10, 256))
    result = run_cli(home, "exec", "--json", ",".join(three_hosts), "sha256sum", input=data)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert len(records) == 3
    for record in records:
        assert record["stdout"].split()[0] == hashlib.sha256(data).hexdigest()


# -- policy -----------------------------------------------------------------------------


def test_exec_refused_when_allow_exec_is_empty_and_nothing_runs(
    daemon_factory, client_home, tmp_path
):
    daemon = daemon_factory({"ops": client_entry(client_home, exec_allow=())})
    trust(client_home, daemon)
    witness = tmp_path / "ran"
    result = run_cli(client_home, "exec", daemon.address, f"touch {witness}")
    assert result.returncode == 126
    assert result.stdout == b""
    message = result.stderr.decode()
    assert message.count("\n") == 1 and "allow.exec" in message, message
    assert not witness.exists()
    events = request_events(daemon, 1)  # the refusal is logged like any request
    assert len(events) == 1
    assert (events[0]["op"], events[0]["outcome"]) == ("exec", "denied")


def test_exec_patterns_allow_only_matching_commands_without_shell_syntax(
    daemon_factory, client_home, tmp_path
):
    daemon = daemon_factory(
        {
            "ops": client_entry(
                client_home, exec_allow=("systemctl status *", f"touch {tmp_path}/ok-*")
            )
        }
    )
    trust(client_home, daemon)
    allowed = run_cli(client_home, "exec", daemon.address, f"touch {tmp_path}/ok-1")
    assert allowed.returncode == 0, allowed.stderr
    assert (tmp_path / "ok-1").exists()

    echo = run_cli(client_home, "exec", daemon.address, "echo hi")
    assert echo.returncode == 126
    assert echo.stdout == b""
    assert b"allow.exec" in echo.stderr

    for sneaky in (
        f"systemctl status x; touch {tmp_path}/bad1",
        f"touch {tmp_path}/ok-2; touch {tmp_path}/bad2",
        f"touch {tmp_path}/ok-$(touch {tmp_path}/bad3)",
        f"touch {tmp_path}/ok-3 && touch {tmp_path}/bad4",
    ):
        result = run_cli(client_home, "exec", daemon.address, sneaky)
        assert result.returncode == 126, sneaky
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("ok-", "bad"))) == [
        "ok-1"
    ]


# -- logging ----------------------------------------------------------------------------


def test_exec_logs_one_request_event_without_env_values(daemon, client_home):
    trust(client_home, daemon)
    host = daemon.address
    result = run_cli(
        client_home,
        "exec",
        "-e",
        "SECRET=hunter2",
        "-e",
        "OTHER=x",
        "--cwd",
        "/tmp",
        host,
        'echo "$SECRET"; echo e >&2; exit 5',
    )
    assert result.returncode == 5, result.stderr
    assert result.stdout == b"hunter2\n"
    events = request_events(daemon, 1)
    assert len(events) == 1, events
    event = events[0]
    assert event["op"] == "exec"
    assert event["client"] == "ops"
    assert event["command"] == 'echo "$SECRET"; echo e >&2; exit 5'
    assert event["cwd"] == "/tmp"
    assert event["exit_code"] == 5
    assert event["bytes_out"] == len(b"hunter2\n")
    assert event["bytes_err"] == len(b"e\n")
    assert isinstance(event["duration_s"], float)
    assert event["env_names"] == ["OTHER", "SECRET"]

    second = run_cli(client_home, "exec", host, "true")
    assert second.returncode == 0
    assert len(request_events(daemon, 2)) == 2
    assert "hunter2" not in daemon.log_path.read_text()


# -- the Python API ---------------------------------------------------------------------


def api_connect(daemon, home):
    return connect(Target("test", "127.0.0.1", daemon.ports[0]), ClientOptions(home))


def test_python_api_run_collects_output(shared):
    with api_connect(shared.daemon, shared.home) as conn:
        result = conn.run("echo hi; echo oops >&2")
    assert result.stdout == b"hi\n"
    assert result.stderr == b"oops\n"
    assert result.status == 0
    assert result.exit_code == 0 and result.signal is None
    assert not result.timed_out and not result.cancelled


def test_python_api_runs_several_execs_on_one_connection(daemon_factory, client_home):
    daemon = daemon_factory(
        {"ops": client_entry(client_home, exec_allow=("echo *", "cat"), cwd=["/**"])}
    )
    with api_connect(daemon, client_home) as conn:
        assert conn.run("echo one").stdout == b"one\n"
        assert conn.run("cat", stdin=b"two\n").stdout == b"two\n"
        with pytest.raises(RemoteError) as refused:
            conn.run("rm -rf /nothing")
        assert refused.value.code == "denied"
        with pytest.raises(RemoteError) as bad_cwd:
            conn.run("echo x", cwd="/nonexistent/dir")
        assert bad_cwd.value.code == "bad_request"
        assert conn.run("echo three").stdout == b"three\n"
    requests = request_events(daemon, 5)
    assert len(requests) == 5
    assert len({e["peer"] for e in requests}) == 1  # all on one connection


def test_python_api_timeout_reports_signal_and_timed_out(shared):
    with api_connect(shared.daemon, shared.home) as conn:
        result = conn.run("sleep 30", timeout=0.5)
        assert result.timed_out
        assert result.exit_code is None and result.signal == signal.SIGTERM
        assert result.status == 143
        assert conn.run("echo after").stdout == b"after\n"


def test_connection_usable_after_command_skips_large_stdin(shared):
    with api_connect(shared.daemon, shared.home) as conn:
        skipped = conn.exec("true", stdin=b"x" * 5_000_000)
        assert skipped.status == 0
        assert conn.run("echo ok").stdout == b"ok\n"
        assert conn.run("wc -c", stdin=b"abc").stdout.strip() == b"3"


def test_unlisted_client_exec_exits_255(host, tmp_path):
    stranger = make_client_home(tmp_path / "stranger")
    result = run_cli(stranger, "exec", host, "echo never")
    assert result.returncode == 255
    assert b"not authorized" in result.stderr
