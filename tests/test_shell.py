"""shell through the real programs: radmin-cli on a real terminal (a PTY this test
holds both ends of), a real radmind, a real login shell on the daemon's PTY.

The remote processes are found in /proc: by a unique marker in their command line
(`sleep 1000.<random>`), and by the session id they share with the remote shell.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import select
import signal
import stat
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from support import (
    RADMIN_CLI,
    cli_env,
    client_entry,
    frames_after_hello,
    new_marker,
    processes_with,
    run_cli,
    start_cli,
    wait_for_processes,
    wait_until,
    wait_until_gone,
)

from radmin.client import RemoteError, connect
from radmin.config import ClientPolicy
from radmin.explain import describe
from radmin.ops.shell import session_members
from radmin.protocol import FrameType

TIMEOUT = 20.0  # seconds for anything the remote shell prints (a busy 2-core machine)
# A prompt the test sets, written so that the echo of the command does not match it.
SET_PROMPT = b"PS1='rsh''> '; PROMPT_COMMAND=''\r"
PROMPT = b"rsh> "


class Terminal:
    """radmin-cli started on a new PTY as its controlling terminal, as from a terminal
    emulator: the test is the user, typing on the master and reading what it shows."""

    def __init__(self, home: Any, *args: str, rows: int = 24, cols: int = 80, term: str = "xterm"):
        self.master, self.slave = os.openpty()
        set_size(self.slave, rows, cols)
        env = {**cli_env(home), "TERM": term}
        argv = [RADMIN_CLI, *args]
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child
            try:
                os.close(self.master)
                os.login_tty(self.slave)
                os.execve(RADMIN_CLI, argv, env)
            finally:
                os._exit(127)
        self.output = bytearray()
        self.seen = 0  # expect() looks after this offset
        self.status: int | None = None

    def read_some(self, timeout: float) -> int | None:
        """Read what is there, waiting up to `timeout`: how many bytes (0: none came in
        time), or None once nothing more can come."""
        if not select.select([self.master], [], [], timeout)[0]:
            return 0
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the client is gone and nothing is left
            return None
        self.output += data
        return len(data) or None

    def expect(self, pattern: bytes, timeout: float = TIMEOUT) -> re.Match[bytes]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.output, self.seen)
            if match:
                self.seen = match.end()
                return match
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.read_some(min(remaining, 0.5)) is None:
                raise AssertionError(f"{pattern!r} not shown; the terminal shows:\n{self.text()}")

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def ready(self) -> None:
        """Wait for the login shell, then set a prompt the test can recognise."""
        self.expect(rb"[#$] ")
        self.type(SET_PROMPT)
        self.expect(PROMPT)

    def run(self, command: bytes, answer: bytes) -> re.Match[bytes]:
        """Type a command and wait for what it prints, then for the next prompt."""
        self.type(command + b"\r")
        match = self.expect(answer)
        self.expect(PROMPT)
        return match

    def resize(self, rows: int, cols: int) -> None:
        """As a terminal emulator does: the kernel then sends SIGWINCH to radmin-cli."""
        set_size(self.master, rows, cols)

    def wait(self, timeout: float = TIMEOUT) -> int:
        """radmin-cli's exit status (reading its output meanwhile, as a terminal does)."""
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"radmin-cli did not exit; the terminal shows:\n{self.text()}")
            self.read_some(0.05)
        while self.read_some(0):  # what it printed last
            pass
        return self.status

    def attributes(self) -> list[Any]:
        """The terminal's settings, as radmin-cli left them (the test keeps the slave)."""
        return termios.tcgetattr(self.slave)

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def close(self) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        os.close(self.master)
        os.close(self.slave)


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def is_raw(attributes: list[Any]) -> bool:
    return not attributes[3] & (termios.ICANON | termios.ECHO | termios.ISIG)


def is_cooked(attributes: list[Any]) -> bool:
    return bool(attributes[3] & termios.ICANON and attributes[3] & termios.ECHO)


def session_of(pid: int) -> int:
    stat_line = Path(f"/proc/{pid}/stat").read_bytes()
    return int(stat_line[stat_line.rindex(b")") + 2 :].split()[3])


@pytest.fixture
def terminals() -> Any:
    opened: list[Terminal] = []

    def start(home: Any, *args: str, **kwargs: Any) -> Terminal:
        terminal = Terminal(home, *args, **kwargs)
        opened.append(terminal)
        return terminal

    yield start
    for terminal in opened:
        terminal.close()


@pytest.fixture
def shell_daemon(daemon_factory, client_home):
    """A daemon that lets `client_home` ("ops") open shells, and ends a session's
    leftovers 0.5 s after SIGHUP/SIGTERM."""
    return daemon_factory(
        {"ops": client_entry(client_home, shell=True)}, limits={"kill_grace": 0.5}
    )


def first_other_user() -> pwd.struct_passwd | None:
    """A user other than root with a real login shell (for run_as), if this host has one."""
    shells = set(Path("/etc/shells").read_text().split()) if Path("/etc/shells").exists() else set()
    for user in pwd.getpwall():
        if user.pw_uid != 0 and user.pw_shell in shells and os.access(user.pw_shell, os.X_OK):
            return user
    return None


# -- a terminal on both sides ------------------------------------------------------------


def test_shell_shows_the_prompt_and_the_window_size_sent(shell_daemon, client_home, terminals):
    terminal = terminals(client_home, "shell", shell_daemon.address, rows=33, cols=101)
    terminal.ready()
    terminal.run(b"stty size", rb"\r33 101\r\n")
    terminal.run(b"echo $TERM", rb"\rxterm\r\n")
    assert is_raw(terminal.attributes()), "the local terminal is in raw mode during the shell"
    terminal.type(b"exit\r")
    assert terminal.wait() == 0
    assert is_cooked(terminal.attributes()), "the local terminal is restored"


def test_shell_sees_a_resize(shell_daemon, client_home, terminals):
    terminal = terminals(client_home, "shell", shell_daemon.address, rows=24, cols=80)
    terminal.ready()
    terminal.run(b"trap 'echo resized-$(stty size | tr \" \" x)' WINCH", b"")
    terminal.resize(50, 132)
    terminal.expect(rb"resized-50x132")
    terminal.run(b"stty size", rb"\r50 132\r\n")
    terminal.type(b"exit\r")
    assert terminal.wait() == 0


def test_an_open_shell_is_in_the_log_before_it_ends(shell_daemon, client_home, terminals):
    terminal = terminals(client_home, "shell", shell_daemon.address)
    terminal.ready()
    started = shell_daemon.wait_for_event(lambda e: e.get("event") == "shell_started")
    assert (started["client"], started["run_as"]) == ("ops", pwd.getpwuid(os.getuid()).pw_name)
    assert os.getsid(started["pid"]) == started["pid"]  # the live shell, leading its session
    assert not [e for e in shell_daemon.events() if e.get("event") == "request"]
    terminal.type(b"exit\r")
    terminal.wait()


def test_shell_exit_status_is_the_clients(shell_daemon, client_home, terminals):
    terminal = terminals(client_home, "shell", shell_daemon.address)
    terminal.ready()
    terminal.type(b"exit 3\r")
    assert terminal.wait() == 3
    assert is_cooked(terminal.attributes())


def test_shell_killed_by_a_signal_gives_128_plus_n(shell_daemon, client_home, terminals):
    terminal = terminals(client_home, "shell", shell_daemon.address)
    terminal.ready()
    terminal.type(b"kill -KILL $$\r")
    assert terminal.wait() == 128 + signal.SIGKILL


def test_ctrl_c_interrupts_a_remote_command_not_the_shell(shell_daemon, client_home, terminals):
    marker = new_marker()
    terminal = terminals(client_home, "shell", shell_daemon.address)
    terminal.ready()
    terminal.type(f"sleep {marker}\r".encode())
    wait_for_processes(marker, 1, exclude=(terminal.pid,), timeout=TIMEOUT)
    terminal.type(b"\x03")
    wait_until_gone(marker, TIMEOUT)
    terminal.expect(PROMPT)
    terminal.run(b"echo still-$((20 + 22))", rb"still-42")
    terminal.type(b"exit 0\r")
    assert terminal.wait() == 0


def test_ctrl_z_and_job_control_work_remotely(shell_daemon, client_home, terminals):
    marker = new_marker()
    terminal = terminals(client_home, "shell", shell_daemon.address)
    terminal.ready()
    terminal.type(f"sleep {marker}\r".encode())
    (pid,) = wait_for_processes(marker, 1, exclude=(terminal.pid,), timeout=TIMEOUT)
    terminal.type(b"\x1a")  # Ctrl-Z: stopped, the shell is back
    terminal.expect(rb"Stopped")
    terminal.expect(PROMPT)
    assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    terminal.run(b"kill %1", b"")
    wait_until_gone(marker, TIMEOUT)
    terminal.type(b"exit 0\r")
    try:
        status = terminal.wait(timeout=5)
    except AssertionError:
        # bash's job table may lag the kill ("There are stopped jobs."): as at any bash
        # prompt, a second exit leaves.
        assert b"There are stopped jobs" in terminal.output
        terminal.type(b"exit 0\r")
        status = terminal.wait()
    assert status == 0


def test_idle_timeout_does_not_end_an_open_shell(daemon_factory, client_home, terminals):
    daemon = daemon_factory(
        {"ops": client_entry(client_home, shell=True)}, limits={"idle_timeout": 1}
    )
    terminal = terminals(client_home, "shell", daemon.address)
    terminal.ready()
    # Nothing crosses the connection for 2.5 idle_timeouts.
    terminal.run(b"sleep 2.5; echo after-$((2 * 21))", rb"after-42")
    terminal.type(b"exit 5\r")
    assert terminal.wait() == 5


# -- the end of a session ----------------------------------------------------------------


def test_a_killed_client_ends_the_remote_shells_whole_session(shell_daemon, client_home, terminals):
    foreground, background, stubborn, stopped = (new_marker() for _ in range(4))
    terminal = terminals(client_home, "shell", shell_daemon.address)
    terminal.ready()
    # Each job in its own process group: a background job, one that ignores SIGHUP and
    # SIGTERM, a stopped one (stopped from here: bash's own `kill -STOP %3` right before
    # a foreground job sometimes leaves that job unstarted), and one in the foreground.
    terminal.run(f"sleep {background} &".encode(), b"")
    terminal.run(f"sh -c \"trap '' HUP TERM; sleep {stubborn}\" &".encode(), b"")
    terminal.run(f"sleep {stopped} &".encode(), b"")
    markers = (background, stubborn, stopped, foreground)
    pids = [
        wait_for_processes(m, 1, exclude=(terminal.pid,), timeout=TIMEOUT)[0] for m in markers[:3]
    ]
    os.kill(pids[2], signal.SIGSTOP)
    terminal.type(f"sleep {foreground}\r".encode())
    pids.append(wait_for_processes(foreground, 1, exclude=(terminal.pid,), timeout=TIMEOUT)[0])
    sessions = {session_of(pid) for pid in pids}
    groups = {os.getpgid(pid) for pid in pids}
    assert len(sessions) == 1 and len(groups) == 4, "one session, a process group per job"
    (sid,) = sessions
    assert session_members(sid)

    os.kill(terminal.pid, signal.SIGKILL)
    terminal.wait()

    for marker in markers:
        wait_until_gone(marker, TIMEOUT)
    wait_until(lambda: not session_members(sid), TIMEOUT, "the shell's session to be empty")
    event = shell_daemon.wait_for_event(
        lambda e: e.get("event") == "request" and e.get("op") == "shell", timeout=TIMEOUT
    )
    assert event["outcome"] == "disconnected"


def test_the_shell_ending_ends_what_it_left_behind(shell_daemon, client_home, terminals):
    marker = new_marker()
    terminal = terminals(client_home, "shell", shell_daemon.address)
    terminal.ready()
    terminal.run(f"sleep {marker} &".encode(), b"")
    wait_for_processes(marker, 1, exclude=(terminal.pid,), timeout=TIMEOUT)
    terminal.type(b"exit 7\r")
    assert terminal.wait() == 7
    wait_until_gone(marker, TIMEOUT)


def test_sigterm_to_the_client_restores_the_terminal(shell_daemon, client_home, terminals):
    marker = new_marker()
    terminal = terminals(client_home, "shell", shell_daemon.address)
    terminal.ready()
    terminal.type(f"sleep {marker}\r".encode())
    wait_for_processes(marker, 1, exclude=(terminal.pid,), timeout=TIMEOUT)
    assert is_raw(terminal.attributes())
    os.kill(terminal.pid, signal.SIGTERM)
    assert terminal.wait() == 128 + signal.SIGTERM
    assert is_cooked(terminal.attributes())
    wait_until_gone(marker, TIMEOUT)


def test_a_lost_daemon_gives_255_and_restores_the_terminal(daemon_factory, client_home, terminals):
    daemon = daemon_factory({"ops": client_entry(client_home, shell=True)})
    terminal = terminals(client_home, "shell", daemon.address)
    terminal.ready()
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait()
    assert terminal.wait() == 255
    assert is_cooked(terminal.attributes())
    assert "connection" in terminal.text().splitlines()[-1]


# -- policy ------------------------------------------------------------------------------


def test_shell_refused_without_allow_shell(daemon_factory, client_home):
    daemon = daemon_factory({"ops": client_entry(client_home)})  # exec "*", no shell
    done = run_cli(client_home, "shell", daemon.address, input=b"id\n")
    assert done.returncode == 126, done.stderr
    assert b"refused by the daemon's policy: allow.shell is not true" in done.stderr
    event = daemon.wait_for_event(lambda e: e.get("event") == "request" and e.get("op") == "shell")
    assert event["outcome"] == "denied"


def test_shell_refused_on_a_terminal_leaves_it_as_it_was(daemon_factory, client_home, terminals):
    daemon = daemon_factory({"ops": client_entry(client_home)})
    terminal = terminals(client_home, "shell", daemon.address)
    assert terminal.wait() == 126
    assert "allow.shell is not true" in terminal.text()
    assert is_cooked(terminal.attributes())


def test_shell_takes_one_host(daemon_factory, client_home):
    done = run_cli(client_home, "shell", "127.0.0.1:1,127.0.0.2:1")
    assert done.returncode == 2
    assert b"shell takes one host" in done.stderr


def test_shell_unreachable_is_255(client_home):
    done = run_cli(client_home, "shell", "127.0.0.1:1")
    assert done.returncode == 255, done.stderr


def test_shell_runs_as_run_as_with_its_own_uid(daemon_factory, client_home, tmp_path):
    user = first_other_user()
    if user is None:
        pytest.skip("no non-root user with a login shell on this host")
    entry = client_entry(client_home, exec_allow=(), put_allow=(), run_as=user.pw_name, shell=True)
    daemon = daemon_factory({"ops": entry})
    script = b"echo uid=$(id -u) user=$USER home=$HOME owner=$(stat -c %U $(tty)); exit 0\n"
    done = run_cli(client_home, "shell", daemon.address, input=script)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = f"uid={user.pw_uid} user={user.pw_name} home={user.pw_dir} owner={user.pw_name}"
    assert expected.encode() in done.stdout


def test_terminal_type_must_be_a_terminfo_name(shell_daemon, client_home):
    with connect(shell_daemon.address, home_path(client_home)) as conn:
        conn.request("shell", term="../../../tmp/evil", rows=24, cols=80)
        _, reply = conn.receive(FrameType.RESULT)
    assert reply["ok"] is False and reply["error"] == "bad_request"
    assert "term" in reply["message"]


def test_a_bad_resize_is_a_protocol_error_and_ends_the_session(shell_daemon, client_home):
    marker = new_marker()
    frames = frames_after_hello(client_home, shell_daemon.port)
    frames.send_json(FrameType.REQUEST, {"op": "shell", "term": "dumb", "rows": 24, "cols": 80})
    _, proceed = frames.recv_json(FrameType.PROCEED)
    frames.send_frame(FrameType.STDIN, f"sleep {marker}\n".encode())
    wait_for_processes(marker, 1, timeout=TIMEOUT)
    frames.send_json(FrameType.RESIZE, {"rows": 0, "cols": 80})
    while (frame := frames.recv_frame()).type is FrameType.STDOUT:
        pass
    assert frame.type is FrameType.ERROR
    assert "rows" in frame.json()["message"]
    wait_until_gone(marker, TIMEOUT)
    assert not session_members(proceed["pid"])
    frames.close()


def test_explain_says_what_allow_shell_grants():
    policy = ClientPolicy("ops", "SHA256:x", "", (), (), "deploy", allow_shell=True)
    assert "shell: yes, deploy's login shell on a PTY" in "\n".join(describe(policy))
    closed = ClientPolicy("ops", "SHA256:x", "", (), (), "deploy")
    assert "shell: no (allow.shell is not true)" in describe(closed)


def test_the_api_refuses_with_a_remote_error(daemon_factory, client_home):
    daemon = daemon_factory({"ops": client_entry(client_home)})
    read_end, write_end = os.pipe()
    os.close(write_end)
    with (
        connect(daemon.address, home_path(client_home)) as conn,
        pytest.raises(RemoteError) as refused,
    ):
        conn.shell(stdin=read_end, on_output=lambda data: None)
    os.close(read_end)
    assert refused.value.code == "denied"


# -- stdin not a terminal ----------------------------------------------------------------


def test_piped_input_runs_in_the_shell_and_its_exit_status_is_ours(shell_daemon, client_home):
    done = run_cli(client_home, "shell", shell_daemon.address, input=b"echo hi; exit 4\n")
    assert done.returncode == 4, done.stdout + done.stderr
    assert re.search(rb"\rhi\r\n", done.stdout), done.stdout


def test_piped_input_without_exit_ends_with_its_eof(shell_daemon, client_home):
    script = b"echo one-$((1 + 1))\nsleep 0.5\necho three-$((1 + 2))\n"
    done = run_cli(client_home, "shell", shell_daemon.address, input=script)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(rb"\rone-2\r\n", done.stdout), done.stdout
    assert re.search(rb"\rthree-3\r\n", done.stdout), done.stdout


def test_piped_input_gets_a_terminal_on_the_host(shell_daemon, client_home):
    done = run_cli(client_home, "shell", shell_daemon.address, input=b"test -t 0 && echo tty-yes\n")
    assert done.returncode == 0
    assert re.search(rb"\rtty-yes\r\n", done.stdout), done.stdout


# -- recording ---------------------------------------------------------------------------


def read_asciicast(path: Path) -> tuple[dict[str, Any], list[list[Any]]]:
    """Parse an asciicast v2 file strictly (https://docs.asciinema.org/manual/asciicast/v2/):
    a header object, then one event array per line, times never decreasing."""
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "", "the file ends with a newline"
    header = json.loads(lines[0])
    assert isinstance(header, dict)
    assert header["version"] == 2
    for key in ("width", "height", "timestamp"):
        assert isinstance(header[key], int) and not isinstance(header[key], bool), key
    assert header["width"] > 0 and header["height"] > 0
    assert isinstance(header.get("env", {}), dict)
    assert all(isinstance(v, str) for v in header.get("env", {}).values())
    events = []
    last = 0.0
    for line in lines[1:-1]:
        event = json.loads(line)
        assert isinstance(event, list) and len(event) == 3, line
        moment, code, data = event
        assert isinstance(moment, int | float) and moment >= last, line
        assert code in ("o", "i", "r", "m"), line
        assert isinstance(data, str), line
        if code == "r":
            assert re.fullmatch(r"\d+x\d+", data), line
        last = moment
        events.append(event)
    return header, events


def test_recording_is_asciicast_v2_and_replays_the_typed_commands(
    daemon_factory, client_home, terminals
):
    daemon = daemon_factory({"ops": client_entry(client_home, shell=True)}, shell={"record": True})
    terminal = terminals(
        client_home, "shell", "--run-id", "CHG-4711", daemon.address, rows=30, cols=90
    )
    terminal.ready()
    terminal.run(b"echo recorded-$((6 * 7))", rb"recorded-42")
    terminal.resize(40, 100)
    terminal.run(b"stty size", rb"\r40 100\r\n")
    terminal.type(b"exit\r")
    assert terminal.wait() == 0

    sessions = Path(daemon.config["state_dir"]) / "sessions"
    (path,) = sessions.iterdir()
    assert re.fullmatch(r"CHG-4711-ops-\d{8}T\d{6}Z\.cast", path.name)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(sessions.stat().st_mode) == 0o700
    header, events = read_asciicast(path)
    assert (header["width"], header["height"]) == (90, 30)
    assert header["env"] == {"TERM": "xterm", "SHELL": pwd.getpwuid(os.geteuid()).pw_shell}
    shown = "".join(data for _, code, data in events if code == "o")
    assert "echo recorded-$((6 * 7))" in shown  # what was typed, through the echo
    assert "recorded-42" in shown
    assert ["r", "100x40"] in [event[1:] for event in events]
    logged = daemon.wait_for_event(lambda e: e.get("event") == "shell_recording")
    assert logged["path"] == str(path) and logged["run_id"] == "CHG-4711"


def test_recording_refuses_the_shell_when_the_file_cannot_be_made(daemon_factory, client_home):
    daemon = daemon_factory({"ops": client_entry(client_home, shell=True)}, shell={"record": True})
    sessions = Path(daemon.config["state_dir"]) / "sessions"
    sessions.symlink_to("/tmp")  # not followed: refused rather than written elsewhere
    marker = new_marker()
    done = run_cli(client_home, "shell", daemon.address, input=f"sleep {marker}\n".encode())
    assert done.returncode == 126
    assert b"cannot record the session" in done.stderr
    assert not processes_with(marker)


def home_path(home: Any) -> Any:
    """connect()'s options for a test client home."""
    from radmin.client import ClientOptions

    return ClientOptions(home)


def test_a_full_disk_ends_the_recording_not_the_session(
    daemon_factory, client_home, terminals, tmpfs
):
    daemon = daemon_factory({"ops": client_entry(client_home, shell=True)}, shell={"record": True})
    sessions = Path(daemon.config["state_dir"]) / "sessions"
    tmpfs(str(sessions.relative_to(daemon.folder.parent)), "size=64k")
    terminal = terminals(client_home, "shell", daemon.address)
    terminal.ready()
    terminal.run(b"head -c 300000 /dev/zero | tr '\\0' x; echo; echo done-$((40 + 2))", b"done-42")
    terminal.run(b"echo still-$((40 + 3))", b"still-43")
    terminal.type(b"exit\r")
    assert terminal.wait() == 0
    failed = daemon.wait_for_event(lambda e: e.get("event") == "shell_recording_failed")
    assert "No space left" in failed["error"]


def test_ctrl_c_with_piped_input_ends_the_remote_session(shell_daemon, client_home):
    marker = new_marker()
    proc = start_cli(
        client_home,
        "shell",
        shell_daemon.address,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(f"sleep {marker}\n".encode())
        proc.stdin.flush()
        wait_for_processes(marker, 1, exclude=(proc.pid,), timeout=TIMEOUT)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT) == 130
        wait_until_gone(marker, TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_no_input_at_all_ends_the_shell_at_its_first_prompt(shell_daemon, client_home):
    done = run_cli(client_home, "shell", shell_daemon.address, input=b"")
    assert done.returncode == 0, done.stdout + done.stderr
    assert b"logout" in done.stdout


def test_a_run_as_without_a_login_shell_gets_what_its_passwd_shell_does(
    daemon_factory, client_home
):
    """As with ssh: the passwd entry's shell runs, and nologin says no."""
    user = pwd.getpwnam("nobody")
    if not user.pw_shell.endswith("nologin"):
        pytest.skip("nobody has a login shell on this host")
    entry = client_entry(client_home, exec_allow=(), put_allow=(), run_as="nobody", shell=True)
    daemon = daemon_factory({"ops": entry})
    done = run_cli(client_home, "shell", daemon.address, input=b"id\n")
    assert done.returncode == 1, done.stdout + done.stderr
    assert b"not available" in done.stdout


# -- heartbeats: an idle shell stays, a frozen host is noticed ---------------------------


def test_an_idle_shell_outlives_many_heartbeat_intervals(shell_daemon, client_home, terminals):
    terminal = terminals(client_home, "shell", "--heartbeat-interval", "0.2", shell_daemon.address)
    terminal.ready()
    # 2 s of silence from the user and the shell: ten intervals, three would be "dead".
    terminal.run(b"sleep 2; echo still-$((6 * 7))", rb"still-42")
    terminal.type(b"exit 6\r")
    assert terminal.wait() == 6


def test_a_frozen_daemon_ends_the_shell_with_255_and_restores_the_terminal(
    daemon_factory, client_home, terminals
):
    daemon = daemon_factory({"ops": client_entry(client_home, shell=True)})
    terminal = terminals(client_home, "shell", "--heartbeat-interval", "0.5", daemon.address)
    terminal.ready()
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        assert terminal.wait() == 255
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    assert b"no answer from" in terminal.output and b"while running the shell" in terminal.output
    assert is_cooked(terminal.attributes())
