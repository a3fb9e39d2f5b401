"""shell, daemon side: the run_as user's login shell on a pseudo-terminal.

request -> policy (allow.shell) -> run_as user, a PTY sized as the client's window ->
the user's login shell (`-bash`, as login(1) starts it) in a new session whose
controlling terminal is the PTY -> pump -> end the whole session -> RESULT.

Why not Popen alone: a program only gets a controlling terminal by opening it as a
session leader or with TIOCSCTTY, which must happen in the child, after setsid() and
before exec -- subprocess's `start_new_session` does the setsid(), a preexec_fn the
ioctl. Without it Ctrl-C, Ctrl-Z and job control would not work.

Why the *session*, not a process group, is ended: an interactive shell puts every job
in its own process group, so killpg(shell) would leave `sleep 100 &` or a stopped vim
running. Every process whose session id is the shell's (read from /proc/*/stat) gets
SIGHUP, SIGTERM and SIGCONT -- what a hung-up terminal means -- then SIGKILL after
limits.kill_grace. A process that left the session on purpose (setsid, a daemon it
started) is not ours to end, as with ssh. The shell is reaped only at the very end:
while it is a zombie its PID -- the session id -- cannot be reused.

The socket is always read (input is bounded by the same window as exec's stdin), so a
client that goes away is noticed at once; `limits.idle_timeout` applies between
requests, never inside an open shell.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import os
import pwd
import resource
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from radmin import policy
from radmin.config import Limits
from radmin.errors import ConnectionClosed, ProtocolError, RequestError
from radmin.ops import Outcome, Request, fields, run_as_user
from radmin.ops.exec import (
    STDIN_WINDOW,
    InputWindow,
    command_env,
    command_nofile,
    peek_exit,
    reset_resources,
)
from radmin.protocol import HIGH_WATER, Frame, FrameSocket, FrameType, wait_ready
from radmin.recording import Recording, open_recording

READ_SIZE = 64 * 1024
DEFAULT_ROWS, DEFAULT_COLS = 24, 80
# After the shell exited: how long the rest of its output may take to come out of the
# PTY once the session has been ended (a process that left the session may hold it).
DRAIN_AFTER_EXIT = 1.0
EOF_POLL = 0.05  # seconds between looks at whether the shell waits for input (^D)
EOF_SETTLE = 0.3  # how long a canonical-mode shell must sit idle before ^D is typed
_HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)
_WINSIZE = struct.Struct("HHHH")

FIELDS = (
    fields.Field(
        "term", fields.TERMINAL_TYPE, "the client's $TERM, set for the shell", default="dumb"
    ),
    fields.Field("rows", fields.TERMINAL_SIZE, "the window's height", default=DEFAULT_ROWS),
    fields.Field("cols", fields.TERMINAL_SIZE, "the window's width", default=DEFAULT_COLS),
)
RESIZE_FIELDS = FIELDS[1:]


@dataclass(frozen=True)
class ShellParams:
    term: str
    rows: int
    cols: int


def parse_params(params: dict[str, Any]) -> ShellParams:
    values = fields.parse("shell", FIELDS, params)
    return ShellParams(values["term"], values["rows"], values["cols"])


def run(request: Request) -> Outcome:
    client, config = request.client, request.config
    params = parse_params(request.params)
    request.audit.update(term=params.term, rows=params.rows, cols=params.cols, rule=None)
    verdict = policy.shell_verdict(client.allow_shell)
    verdict.enforce()
    request.audit["rule"] = verdict.rule
    user = run_as_user(client.run_as)
    shell = user.pw_shell or "/bin/sh"
    request.audit.update(run_as=user.pw_name, shell=shell)
    env = command_env(user, {"TERM": params.term})
    recording = _start_recording(request, params, env)
    limit = config.limits.per_client.max_processes
    try:
        with request.usage.hold(client.name, "processes", limit):
            proc, master, slave = spawn_shell(shell, user, env, (params.rows, params.cols))
            # At once, not only in the `request` event at its end: a session may last
            # hours, and an auditor must see who holds a shell while they hold it.
            request.log.info("shell_started", pid=proc.pid, run_as=user.pw_name, shell=shell)
            pump = ShellPump(
                request.conn, proc, (master, slave), config.limits, recording, request.log
            )
            # Journaled like exec's commands (a crashed daemon's next start ends the
            # shell) and reachable by the daemon's stop, which hangs the session up.
            with request.commands.running(config.state_dir, proc.pid, pump):
                try:
                    request.conn.send_json(
                        FrameType.PROCEED,
                        {
                            "pid": proc.pid,
                            "stdin_window": STDIN_WINDOW,
                            "recorded": bool(recording),
                        },
                    )
                    pump.run()
                except BaseException as exc:
                    pump.terminate()
                    if isinstance(exc, ConnectionClosed | OSError):
                        request.audit.update(pump.summary())
                        who = pump.ended_by or "client went away"
                        raise ConnectionClosed(f"{who} during the shell: {exc}") from None
                    raise
    finally:
        if recording is not None:
            recording.close()
    summary = pump.summary()
    return Outcome(
        reply={k: summary[k] for k in ("exit_code", "signal", "cancelled", "duration_s")},
        log=summary,
        after_reply=pump.drain_client_input,
    )


def _start_recording(
    request: Request, params: ShellParams, env: dict[str, str]
) -> Recording | None:
    """shell.record: open the session's asciicast file, or refuse the shell -- a session
    the admin asked to have recorded never runs unrecorded."""
    if not request.config.shell.record:
        return None
    run_id = request.params.get("run_id") or f"norunid{os.urandom(3).hex()}"
    try:
        recording = open_recording(
            request.config.state_dir,
            run_id,
            request.client.name,
            (params.rows, params.cols),
            {"TERM": params.term, "SHELL": env["SHELL"]},
        )
    except OSError as exc:
        request.log.error("shell_recording_failed", error=str(exc))
        raise RequestError(
            f"cannot record the session (shell.record is on): {exc.strerror or exc}"
        ) from None
    request.audit["recording"] = str(recording.path)
    request.log.info("shell_recording", path=str(recording.path))
    return recording


# -- starting the shell ------------------------------------------------------------------


def spawn_shell(
    shell: str, user: pwd.struct_passwd, env: dict[str, str], size: tuple[int, int]
) -> tuple[subprocess.Popen[bytes], int, int]:
    """The login shell on a new PTY: (process, master fd, slave fd). The slave end is
    the shell's stdin, stdout, stderr and controlling terminal, and belongs to the user
    (as sshd makes it), so `tty`, `mesg` and programs that reopen it work. The daemon
    keeps a slave fd only to see how much typed input is still unread (ShellPump)."""
    master, slave = os.openpty()
    try:
        set_window_size(master, *size)
        _give_terminal(slave, user)
        cwd = user.pw_dir if user.pw_dir and os.path.isdir(user.pw_dir) else "/"
        switch_user: dict[str, Any] = {}
        if user.pw_uid != os.geteuid():
            switch_user = {
                "user": user.pw_uid,
                "group": user.pw_gid,
                "extra_groups": os.getgrouplist(user.pw_name, user.pw_gid),
            }
        nofile = command_nofile()
        try:
            proc = subprocess.Popen(
                [f"-{os.path.basename(shell)}"],  # a leading '-': a login shell
                executable=shell,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
                preexec_fn=lambda: _take_terminal(nofile),
                **switch_user,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise RequestError(f"cannot start the shell {shell}: {_reason(exc)}") from None
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    reset_resources(proc.pid, in_child=True)
    return proc, master, slave


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc)


def _give_terminal(slave: int, user: pwd.struct_passwd) -> None:
    """The terminal belongs to its user, group tty, mode 0620 (sshd's pty_setowner)."""
    if os.geteuid() != 0:
        return
    try:
        tty_gid = grp.getgrnam("tty").gr_gid
    except KeyError:
        tty_gid = user.pw_gid
    os.fchown(slave, user.pw_uid, tty_gid)
    os.fchmod(slave, 0o620)


def _take_terminal(nofile: tuple[int, int]) -> None:  # pragma: no cover - in the child
    """Between fork and exec, in the new session: the PTY on fd 0 becomes the
    controlling terminal; the open-file limit is a login's, not the daemon's."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    resource.setrlimit(resource.RLIMIT_NOFILE, nofile)


def set_window_size(fd: int, rows: int, cols: int) -> None:
    """TIOCSWINSZ; on the master it also sends SIGWINCH to the foreground job."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, _WINSIZE.pack(rows, cols, 0, 0))


# -- ending the session ------------------------------------------------------------------


def session_members(sid: int) -> list[int]:
    """PIDs of the living processes (zombies left out) whose session id is `sid`."""
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _session_of(entry.name) == sid:
            members.append(int(entry.name))
    return members


def _session_of(pid: str) -> int | None:
    """The session id in /proc/PID/stat, None for a zombie or a process gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # "PID (COMM) STATE PPID PGRP SESSION ...": COMM may hold spaces and ')'.
        fields_after = stat[stat.rindex(b")") + 2 :].split()
        if fields_after[0] in (b"Z", b"X"):
            return None
        return int(fields_after[3])
    except (OSError, ValueError, IndexError):
        return None


def signal_session(sid: int, signums: tuple[int, ...]) -> int:
    """Send `signums` to every process of session `sid`; how many there were.

    Each process is pinned with a pidfd and its session read again before it is
    signalled, so a PID that was reused between the /proc walk and the kill is never hit.
    """
    members = session_members(sid)
    for pid in members:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue  # gone already
        try:
            if _session_of(str(pid)) != sid:
                continue
            for signum in signums:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signum)
        finally:
            os.close(pidfd)
    return len(members)


HANGUP_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGCONT)


def kill_session(sid: int) -> None:
    """SIGKILL the session until no process of it is left (a process forking while it
    is swept is caught on the next pass)."""
    for _ in range(100):
        if not signal_session(sid, (signal.SIGKILL,)):
            return
        time.sleep(0.01)


# -- the pump ----------------------------------------------------------------------------


class ShellPump:
    """Moves bytes between the PTY and the client until the shell is done."""

    def __init__(
        self,
        conn: FrameSocket,
        proc: subprocess.Popen[bytes],
        terminal: tuple[int, int],
        limits: Limits,
        recording: Recording | None,
        log: Any,
    ):
        self.conn = conn
        self.proc = proc
        self.sid = proc.pid  # start_new_session: the shell leads its own session
        self.master: int | None = terminal[0]
        # Closed when the shell ends: the master then reads EIO once the rest is gone.
        self.slave: int | None = terminal[1]
        os.set_blocking(terminal[0], False)
        self.eof_check_at: float | None = None  # when to look whether ^D may be typed
        self.shell_waiting_since: float | None = None
        self.shell_activity: int | None = None  # the shell's CPU ticks while it sleeps
        self.recording = recording
        self.log = log  # the request's logger: a failed recording is reported there
        self.idle_timeout = limits.idle_timeout
        self.kill_grace = limits.kill_grace
        self.started = time.monotonic()
        self.input_pending = bytearray()
        self.window = InputWindow()
        self.client_eof = False
        self.eof_written = False
        self.status: tuple[int | None, int | None] | None = None
        self.cancelled = False
        self.hung_up = False
        self.kill_at: float | None = None
        self.drain_until: float | None = None
        self.bytes_out = 0
        self.resizes = 0
        self.pidfd = _pidfd(proc.pid)
        self.duration = 0.0
        self.ended_by: str | None = None  # the daemon ended it (stopping), not a client

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        self.conn.sock.setblocking(False)
        sock_fd = self.conn.sock.fileno()
        self.conn.activity = "running the shell"
        while not self._finished():
            # A HEARTBEAT when quiet (an idle shell is kept open by them); PeerSilent
            # (a client gone without a FIN) ends the session as a dropped client does.
            self.conn.keep_alive()
            ready = wait_ready(self._interest(sock_fd), self._timeout())
            if self.conn.buffered or ready.get(sock_fd, 0) & (select.POLLIN | _HANGUP):
                while (frame := self.conn.poll_frame()) is not None:
                    self._on_frame(frame)
            if self.master is not None and self.master in ready:
                events = ready[self.master]
                if events & select.POLLOUT:
                    self._write_input()
                if events & (select.POLLIN | _HANGUP):
                    self._read_output()
            self._check_exit()
            self._check_timers()
            self.conn.flush()
        self._finish()

    def _finished(self) -> bool:
        if self.status is None:
            return False
        return self.master is None or (
            self.drain_until is not None and time.monotonic() >= self.drain_until
        )

    def _interest(self, sock_fd: int) -> dict[int, int]:
        sock_mask = _HANGUP | select.POLLIN
        if self.conn.queued:
            sock_mask |= select.POLLOUT
        wanted = {sock_fd: sock_mask}
        if self.master is not None:
            mask = 0
            if self.conn.queued < HIGH_WATER:
                mask |= select.POLLIN
            if self.status is None and self.input_pending:
                mask |= select.POLLOUT
            if mask:
                wanted[self.master] = mask
        if self.pidfd is not None and self.status is None:
            wanted[self.pidfd] = select.POLLIN
        return wanted

    def _timeout(self) -> float | None:
        """No timer of the shell's own while it simply runs (an idle shell stays open);
        only the heartbeat's, which keeps it open across a silent network."""
        if self.conn.buffered:
            return 0
        now = time.monotonic()
        timers = [
            t - now for t in (self.kill_at, self.drain_until, self.eof_check_at) if t is not None
        ]
        beat = self.conn.heartbeat_wait(now)
        if beat is not None:
            timers.append(beat)
        if self.pidfd is None and self.status is None:
            timers.append(0.05)
        return max(0.0, min(timers)) if timers else None

    # -- client frames -----------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        kind = frame.type
        if kind is FrameType.STDIN:
            if self.client_eof:
                raise ProtocolError("STDIN after EOF")
            self.window.receive(len(frame.payload))
            if self.master is None or self.status is not None:
                self._consumed(len(frame.payload))
            else:
                self.input_pending += frame.payload
                self._write_input()
        elif kind is FrameType.EOF:
            if self.client_eof:
                raise ProtocolError("a second EOF")
            self.client_eof = True
            self.eof_check_at = time.monotonic()
        elif kind is FrameType.RESIZE:
            self._resize(frame)
        elif kind is FrameType.CANCEL:
            frame.json()
            if not self.cancelled:
                self.cancelled = True
                self._hang_up()
        else:
            raise ProtocolError(f"unexpected {kind.name} frame during a shell")

    def _resize(self, frame: Frame) -> None:
        try:
            values = fields.parse("RESIZE", RESIZE_FIELDS, frame.json())
        except RequestError as exc:
            raise ProtocolError(str(exc)) from None
        rows, cols = values["rows"], values["cols"]
        self.resizes += 1
        if self.master is not None:
            with contextlib.suppress(OSError):
                set_window_size(self.master, rows, cols)
        self._record(lambda recording: recording.resize(rows, cols))

    # -- the terminal ------------------------------------------------------------------

    def _write_input(self) -> None:
        """Typed bytes to the PTY, as fast as it takes them."""
        if self.master is None or self.status is not None:
            self._consumed(len(self.input_pending))
            self.input_pending.clear()
            return
        try:
            while self.input_pending:
                written = os.write(self.master, self.input_pending[:READ_SIZE])
                del self.input_pending[:written]
                self._consumed(written)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: nothing holds the terminal any more
            if exc.errno != errno.EIO:
                raise
            self._consumed(len(self.input_pending))
            self.input_pending.clear()

    def _read_output(self) -> None:
        assert self.master is not None
        try:
            data = os.read(self.master, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: every process holding the terminal is gone
                raise
            data = b""
        if not data:
            self._close_master()
            return
        self.bytes_out += len(data)
        self.shell_waiting_since = None  # something is still happening: no ^D yet
        self.conn.queue(FrameType.STDOUT, data)
        self._record(lambda recording: recording.output(data))

    def _record(self, write: Callable[[Recording], None]) -> None:
        """Append to the recording; a write that fails (disk full) ends the recording,
        logged, not the user's session."""
        if self.recording is None:
            return
        try:
            write(self.recording)
        except OSError as exc:
            self.log.error("shell_recording_failed", path=str(self.recording.path), error=str(exc))
            self.recording.close()
            self.recording = None

    def _consumed(self, count: int) -> None:
        self.window.consumed(self.conn, count)

    def _close_master(self) -> None:
        if self.master is not None:
            os.close(self.master)
            self.master = None

    def _close_slave(self) -> None:
        if self.slave is not None:
            os.close(self.slave)
            self.slave = None

    # -- process state -----------------------------------------------------------------

    def _check_exit(self) -> None:
        if self.status is not None:
            return
        self.status = peek_exit(self.proc.pid)  # the zombie keeps the session id ours
        if self.status is None:
            return
        # The shell is gone: so is its terminal, for whatever it left behind.
        self._close_slave()
        self._hang_up()
        self.drain_until = time.monotonic() + self.kill_grace + DRAIN_AFTER_EXIT

    def end_by_daemon(self, reason: str, signum: int) -> None:
        """Called from the daemon's stop (another thread): hang the session up as a
        closed terminal would; this pump then sees the shell end and sends its RESULT."""
        if self.status is None:
            self.ended_by = reason
            signal_session(self.sid, HANGUP_SIGNALS)

    def _hang_up(self) -> None:
        if not self.hung_up:
            self.hung_up = True
            signal_session(self.sid, HANGUP_SIGNALS)
            self.kill_at = time.monotonic() + self.kill_grace

    def _check_timers(self) -> None:
        now = time.monotonic()
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            kill_session(self.sid)
        if self.eof_check_at is not None and now >= self.eof_check_at:
            self._type_eof(now)

    def _type_eof(self, now: float) -> None:
        """The client's input has ended (a pipe or a file): type ^D, as a user would to
        end the shell -- but only once the shell itself waits for input with everything
        before read, or the ^D would go to a command, or be lost.

        A ^D reaching a terminal in canonical mode becomes an end-of-file marker that
        readline (bash reads in raw mode) never sees if it switches to raw mode later:
        so with the terminal in raw mode (readline at its prompt) it is typed at once.
        In canonical mode (dash, `read`, or bash still starting up, maybe waiting for a
        command of its profile) only once the shell has sat asleep in a terminal read
        (its wchan, where the kernel shows it), using no CPU and printing nothing, for
        EOF_SETTLE.
        """
        self.eof_check_at = None
        if self.status is not None or self.master is None or self.slave is None:
            return
        self.eof_check_at = now + EOF_POLL
        if self.input_pending or not self._shell_waits():
            self.shell_waiting_since = None
            return
        if termios.tcgetattr(self.slave)[3] & termios.ICANON:
            activity = _activity(self.sid)
            if activity is None or activity != self.shell_activity or not _may_read_tty(self.sid):
                self.shell_activity = activity
                self.shell_waiting_since = None
            if self.shell_waiting_since is None:
                self.shell_waiting_since = now
            if now - self.shell_waiting_since < EOF_SETTLE:
                return
        os.write(self.master, _eof_character(self.slave))
        self.eof_written = True
        self.eof_check_at = None

    def _shell_waits(self) -> bool:
        """The shell's own process group holds the terminal and every typed byte has
        been read."""
        assert self.slave is not None and self.master is not None
        try:  # asked on the master: the slave is not the daemon's controlling terminal
            foreground = os.tcgetpgrp(self.master)
            unread = struct.unpack("i", fcntl.ioctl(self.slave, termios.FIONREAD, b"\0" * 4))[0]
        except OSError:
            return False
        return foreground == self.sid and unread == 0

    def _finish(self) -> None:
        """Send every queued output frame before the RESULT; end what is left."""
        while not self.conn.flush():
            _wait_writable(self.conn, self.idle_timeout)
        self._reap()
        self.conn.sock.settimeout(self.idle_timeout)
        self.duration = time.monotonic() - self.started

    def terminate(self) -> None:
        """The client is gone (or a bug): hang up, give the session kill_grace to go,
        SIGKILL what is left, reap."""
        self._hang_up()
        give_up = time.monotonic() + self.kill_grace
        while session_members(self.sid) and time.monotonic() < give_up:
            if self.pidfd is not None and self.status is None:
                wait_ready({self.pidfd: select.POLLIN}, min(0.05, give_up - time.monotonic()))
                self._check_exit()
            else:
                time.sleep(0.02)
        self._reap()

    def _reap(self) -> None:
        kill_session(self.sid)
        self.proc.wait()
        self._close_slave()
        self._close_master()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    # -- after the RESULT --------------------------------------------------------------

    def drain_client_input(self) -> None:
        """Discard input until the client's EOF: the next frame must be a REQUEST."""
        while not self.client_eof:
            frame = self.conn.recv_frame()
            if frame.type is FrameType.EOF:
                self.client_eof = True
            elif frame.type not in (FrameType.STDIN, FrameType.RESIZE, FrameType.CANCEL):
                raise ProtocolError(f"expected STDIN or EOF after a shell, got {frame.type.name}")

    def summary(self) -> dict[str, Any]:
        exit_code, signum = self.status or (None, None)
        return {
            "exit_code": exit_code,
            "signal": signum,
            "cancelled": self.cancelled,
            "duration_s": round(self.duration or time.monotonic() - self.started, 4),
            "bytes_out": self.bytes_out,
            "resizes": self.resizes,
            "pid": self.proc.pid,
        }


def _activity(pid: int) -> int | None:
    """The process's CPU ticks (utime + stime) if it is asleep (state S), else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        fields_after = stat[stat.rindex(b")") + 2 :].split()
    except (OSError, ValueError):
        return None
    if fields_after[0] != b"S":
        return None
    return int(fields_after[11]) + int(fields_after[12])


def _may_read_tty(pid: int) -> bool:
    """False if the kernel shows the process asleep elsewhere than in a terminal read
    (waiting for a child, sleeping); True if in one, or if the kernel does not say."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            wchan = f.read().strip()
    except OSError:
        return True
    return wchan in ("", "0", "n_tty_read", "wait_woken")


def _eof_character(fd: int) -> bytes:
    """The terminal's VEOF (^D unless the shell changed it)."""
    try:
        char = termios.tcgetattr(fd)[6][termios.VEOF]
    except termios.error:
        return b"\x04"
    return char if isinstance(char, bytes) and char != b"\0" else b"\x04"


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _wait_writable(conn: FrameSocket, timeout: float) -> None:
    if not wait_ready({conn.sock.fileno(): select.POLLOUT}, timeout):
        raise ConnectionClosed("client stopped reading output")
