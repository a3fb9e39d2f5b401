"""exec, daemon side: run one shell command and stream its output live.

The command runs as `/bin/sh -c COMMAND` in a new session (its own process group), so a
timeout, a CANCEL or a dropped connection can end it *and* everything it started.

One thread drives everything with poll(): the TLS socket, the command's stdout, stderr
and stdin pipes, and a pidfd for its exit. Nothing is buffered without bound: when the
client reads slowly we stop reading the pipes at a high-water mark (the command blocks
on a full pipe); stdin is bounded by a window the daemon grants (STDIN_WINDOW, then
WINDOW frames as the command reads, as SSH channels do), so the socket is always read
and a client that goes away is noticed at once, even while its input is backed up.

The group leader is reaped only at the very end: while it is a zombie its PID -- the
process group ID -- cannot be reused, so a late killpg() can never hit a stranger.
"""

from __future__ import annotations

import errno
import os
import pwd
import re
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from radmin import policy
from radmin.errors import BadRequest, ConnectionClosed, ProtocolError, RequestError
from radmin.ops import Outcome, Request
from radmin.protocol import HIGH_WATER, FrameSocket, FrameType, wait_ready

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
STDIN_WINDOW = 1024 * 1024  # stdin bytes a client may send ahead of the command's reads
READ_SIZE = 64 * 1024
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_PATH = "/usr/local/bin:/usr/bin:/bin"
_HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)


@dataclass(frozen=True)
class ExecParams:
    command: str
    cwd: str | None
    env: dict[str, str]
    timeout: float
    stdin: bool


def parse_params(params: dict[str, Any], timeout_ceiling: float) -> ExecParams:
    command = params.get("command")
    if not isinstance(command, str) or not command.strip():
        raise BadRequest("exec needs a non-empty command")
    if "\0" in command:
        raise BadRequest("the command contains a NUL byte")
    cwd = params.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or not cwd.startswith("/")):
        raise BadRequest(f"--cwd must be an absolute path, got {cwd!r}")
    env = params.get("env") or {}
    if not isinstance(env, dict):
        raise BadRequest("env must be a mapping of NAME to VALUE")
    for name, value in env.items():
        if not ENV_NAME.fullmatch(name):
            raise BadRequest(f"invalid environment variable name {name!r}")
        if not isinstance(value, str) or "\0" in value:
            raise BadRequest(f"invalid value for environment variable {name}")
    timeout = params.get("timeout")
    if timeout is None:
        timeout = timeout_ceiling
    elif isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise BadRequest(f"timeout must be a positive number of seconds, got {timeout!r}")
    return ExecParams(
        command=command,
        cwd=cwd,
        env=dict(env),
        timeout=min(float(timeout), timeout_ceiling),
        stdin=bool(params.get("stdin", False)),
    )


def target_user(run_as: str | None) -> pwd.struct_passwd:
    if run_as is None:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam(run_as)
    except KeyError:
        raise RequestError(f"run_as user {run_as!r} does not exist on this host") from None


def login_env(user: pwd.struct_passwd, extra: dict[str, str]) -> dict[str, str]:
    """A clean, login-like environment: the daemon's own variables never leak in."""
    env = {
        "PATH": ROOT_PATH if user.pw_uid == 0 else USER_PATH,
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
        "SHELL": user.pw_shell or "/bin/sh",
        "LANG": os.environ.get("LANG") or "C.UTF-8",
    }
    env.update(extra)
    return env


def _spawn(params: ExecParams, user: pwd.struct_passwd, cwd: str) -> subprocess.Popen[bytes]:
    switch_user: dict[str, Any] = {}
    if user.pw_uid != os.geteuid():
        switch_user = {
            "user": user.pw_uid,
            "group": user.pw_gid,
            "extra_groups": os.getgrouplist(user.pw_name, user.pw_gid),
        }
    try:
        return subprocess.Popen(
            ["/bin/sh", "-c", params.command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=login_env(user, params.env),
            start_new_session=True,
            close_fds=True,
            **switch_user,
        )
    except OSError as exc:
        raise RequestError(f"cannot start the command: {exc.strerror or exc}") from None


def run(request: Request) -> Outcome:
    config = request.config
    params = parse_params(request.params, config.limits.exec_timeout)
    policy.check_exec(request.client.name, request.client.allow_exec, params.command)
    user = target_user(request.client.run_as)
    cwd = params.cwd or user.pw_dir
    if not os.path.isdir(cwd):
        raise BadRequest(f"working directory {cwd} does not exist")
    log_fields: dict[str, Any] = {
        "command": params.command,
        "cwd": cwd,
        "user": user.pw_name,
        "env_names": sorted(params.env),
    }
    proc = _spawn(params, user, cwd)
    pump = ProcessPump(request.conn, proc, params.timeout, config.limits.idle_timeout)
    try:
        request.conn.send_json(FrameType.PROCEED, {"pid": proc.pid, "stdin_window": STDIN_WINDOW})
        pump.run()
    except BaseException as exc:
        pump.terminate_group()
        if isinstance(exc, ConnectionClosed | OSError):
            gone = ConnectionClosed(f"client went away during exec: {exc}")
            gone.details = {**log_fields, **pump.summary()}
            raise gone from None
        raise
    summary = pump.summary()
    return Outcome(
        reply={
            k: summary[k] for k in ("exit_code", "signal", "timed_out", "cancelled", "duration_s")
        },
        log={**log_fields, **summary},
        after_reply=pump.drain_client_input,
    )


class ProcessPump:
    """Moves bytes between one process and one client until the process is done."""

    def __init__(
        self, conn: FrameSocket, proc: subprocess.Popen[bytes], timeout: float, idle_timeout: float
    ):
        self.conn = conn
        self.proc = proc
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.idle_timeout = idle_timeout
        assert proc.stdin and proc.stdout and proc.stderr
        self.outputs = {
            proc.stdout.fileno(): (proc.stdout, FrameType.STDOUT),
            proc.stderr.fileno(): (proc.stderr, FrameType.STDERR),
        }
        self.stdin = proc.stdin
        os.set_blocking(self.stdin.fileno(), False)
        self.stdin_pending = bytearray()
        self.stdin_granted = STDIN_WINDOW  # total STDIN bytes the client may have sent
        self.stdin_received = 0
        self.stdin_unacked = 0  # consumed since the last WINDOW grant
        self.client_eof = False
        self.status: tuple[int | None, int | None] | None = None  # (exit code, signal)
        self.timed_out = False
        self.cancelled = False
        self.kill_at: float | None = None  # when SIGKILL follows the SIGTERM
        self.abandon_at: float | None = None  # when to stop waiting for escaped holders
        self.byte_counts = {FrameType.STDOUT: 0, FrameType.STDERR: 0}
        self.pidfd = _pidfd(proc.pid)
        self.duration = 0.0

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        self.conn.sock.setblocking(False)
        poller = select.poll()
        registered: set[int] = set()
        sock_fd = self.conn.sock.fileno()
        while self.status is None or self.outputs:
            wanted = self._interest(sock_fd)
            for fd in registered - wanted.keys():
                poller.unregister(fd)
            for fd, mask in wanted.items():
                poller.register(fd, mask)
            registered = set(wanted)
            ready = poller.poll(self._poll_timeout_ms())
            if self.conn.buffered and not any(fd == sock_fd for fd, _ in ready):
                ready.append((sock_fd, select.POLLIN))
            for fd, events in ready:
                if fd == sock_fd:
                    self._on_socket(events)
                elif fd in self.outputs:
                    self._on_output(fd)
                elif fd == self.stdin_fd:
                    self._write_stdin()
            self._check_exit()
            self._check_timers()
            self.conn.flush()
        self._flush_all()
        self._close_pidfd()
        self.duration = time.monotonic() - self.started

    @property
    def stdin_fd(self) -> int:
        return -1 if self.stdin.closed else self.stdin.fileno()

    def _interest(self, sock_fd: int) -> dict[int, int]:
        wanted: dict[int, int] = {}
        # Always read the socket: the stdin window bounds what can arrive, and reading is
        # how a vanished client is noticed.
        sock_mask = _HANGUP | select.POLLIN
        if self.conn.queued:
            sock_mask |= select.POLLOUT
        wanted[sock_fd] = sock_mask
        if self.conn.queued < HIGH_WATER:
            for fd in self.outputs:
                wanted[fd] = select.POLLIN
        if self.stdin_pending and not self.stdin.closed:
            wanted[self.stdin.fileno()] = select.POLLOUT
        if self.pidfd is not None and self.status is None:
            wanted[self.pidfd] = select.POLLIN
        return wanted

    def _poll_timeout_ms(self) -> int:
        if self.conn.buffered:
            return 0  # decrypted bytes poll() cannot see
        now = time.monotonic()
        timers = [self.deadline if not self.timed_out else now + 1.0]
        timers += [t for t in (self.kill_at, self.abandon_at) if t is not None]
        wait = min(timers) - now
        if self.pidfd is None and self.status is None:
            wait = min(wait, 0.05)
        return max(0, int(wait * 1000) + 1)

    # -- events ------------------------------------------------------------------------

    def _on_socket(self, events: int) -> None:
        if events & (select.POLLIN | _HANGUP):
            while (frame := self.conn.poll_frame()) is not None:
                self._on_frame(frame.type, frame.payload)

    def _on_frame(self, frame_type: FrameType, payload: memoryview) -> None:
        if frame_type is FrameType.STDIN:
            if self.client_eof:
                raise ProtocolError("STDIN after EOF")
            self.stdin_received += len(payload)
            if self.stdin_received > self.stdin_granted:
                raise ProtocolError("client sent more stdin than the daemon's window allows")
            if self.stdin.closed:
                self._consumed(len(payload))
            else:
                self.stdin_pending += payload
                self._write_stdin()
        elif frame_type is FrameType.EOF:
            if self.client_eof:
                raise ProtocolError("a second EOF")
            self.client_eof = True
            if not self.stdin_pending:
                self._close_stdin()
        elif frame_type is FrameType.CANCEL:
            if not self.cancelled:
                self.cancelled = True
                self._start_kill()
        else:
            raise ProtocolError(f"unexpected {frame_type.name} frame during exec")

    def _on_output(self, fd: int) -> None:
        pipe, frame_type = self.outputs[fd]
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            pipe.close()
            del self.outputs[fd]
            return
        self.byte_counts[frame_type] += len(data)
        self.conn.queue(frame_type, data)

    def _consumed(self, count: int) -> None:
        """Stdin bytes left our buffer: grant the client that much more, in batches."""
        self.stdin_unacked += count
        if self.stdin_unacked >= STDIN_WINDOW // 4:
            self.conn.queue_json(FrameType.WINDOW, {"bytes": self.stdin_unacked})
            self.stdin_granted += self.stdin_unacked
            self.stdin_unacked = 0

    def _drop_stdin(self) -> None:
        self._consumed(len(self.stdin_pending))
        self.stdin_pending.clear()

    def _write_stdin(self) -> None:
        if self.stdin.closed:
            self._drop_stdin()
            return
        try:
            written = os.write(self.stdin.fileno(), self.stdin_pending[:READ_SIZE])
        except BlockingIOError:
            return
        except OSError as exc:  # EPIPE: the command closed its stdin; drop the rest
            if exc.errno not in (errno.EPIPE, errno.EBADF):
                raise
            self._drop_stdin()
            self._close_stdin()
            return
        del self.stdin_pending[:written]
        self._consumed(written)
        if not self.stdin_pending and self.client_eof:
            self._close_stdin()

    def _close_stdin(self) -> None:
        try:
            self.stdin.close()
        except OSError:
            pass

    # -- process state -----------------------------------------------------------------

    def _check_exit(self) -> None:
        if self.status is not None:
            return
        try:  # WNOWAIT: learn the status but leave the zombie, so the PGID stays ours
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = None
        if info is None:
            return
        if info.si_code == os.CLD_EXITED:
            self.status = (info.si_status, None)
        else:
            self.status = (None, info.si_status)
        if not self.stdin.closed:
            self._drop_stdin()
            self._close_stdin()

    def _check_timers(self) -> None:
        now = time.monotonic()
        if not self.timed_out and now >= self.deadline:
            self.timed_out = True
            self._start_kill()
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            self._killpg(signal.SIGKILL)
            self.abandon_at = now + 1.0
        if self.abandon_at is not None and now >= self.abandon_at and self.status is not None:
            for pipe, _ in self.outputs.values():  # held open by a process that left the group
                pipe.close()
            self.outputs.clear()

    def _start_kill(self) -> None:
        if self.kill_at is None and self.abandon_at is None:
            self._killpg(signal.SIGTERM)
            self.kill_at = time.monotonic() + KILL_GRACE

    def _killpg(self, signum: int) -> None:
        try:
            os.killpg(self.proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def terminate_group(self) -> None:
        """SIGTERM the group, give it KILL_GRACE to go, SIGKILL what is left, reap."""
        self._killpg(signal.SIGTERM)
        give_up = time.monotonic() + KILL_GRACE
        while self.status is None and time.monotonic() < give_up:
            if self.pidfd is not None:
                wait_ready({self.pidfd: select.POLLIN}, give_up - time.monotonic())
            else:
                time.sleep(0.02)
            self._check_exit()
        self._killpg(signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if self.kill_at is not None or self.abandon_at is not None:
            self._killpg(signal.SIGKILL)  # stragglers of a timed-out or cancelled group
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()
        self._close_pidfd()

    def _close_pidfd(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def _flush_all(self) -> None:
        """Send every queued output frame before the RESULT goes out."""
        while not self.conn.flush():
            _wait_writable(self.conn, self.idle_timeout)
        self._reap()
        self.conn.sock.settimeout(self.idle_timeout)

    # -- after the RESULT --------------------------------------------------------------

    def drain_client_input(self) -> None:
        """Discard STDIN until the client's EOF: the next frame must be a REQUEST."""
        while not self.client_eof:
            frame = self.conn.recv_frame()
            if frame.type is FrameType.EOF:
                self.client_eof = True
            elif frame.type not in (FrameType.STDIN, FrameType.CANCEL):
                raise ProtocolError(f"expected STDIN or EOF after an exec, got {frame.type.name}")

    def summary(self) -> dict[str, Any]:
        exit_code, signum = self.status or (None, None)
        return {
            "exit_code": exit_code,
            "signal": signum,
            "timed_out": self.timed_out,
            "cancelled": self.cancelled,
            "duration_s": round(self.duration or time.monotonic() - self.started, 4),
            "bytes_out": self.byte_counts[FrameType.STDOUT],
            "bytes_err": self.byte_counts[FrameType.STDERR],
            "pid": self.proc.pid,
        }


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # Python < 3.9 or Linux < 5.3: poll with a timeout
        return None


def _wait_writable(conn: FrameSocket, timeout: float) -> None:
    poller = select.poll()
    poller.register(conn.sock.fileno(), select.POLLOUT)
    if not poller.poll(int(timeout * 1000)):
        raise ConnectionClosed("client stopped reading output")
