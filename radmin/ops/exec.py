"""exec, daemon side: run one command and stream its output live.

request -> policy (command, -e names, --cwd; docs/policy.md) -> run_as user, working
directory, an environment built from scratch -> spawn -> pump -> RESULT.

An unrestricted client's command runs as `/bin/sh -c COMMAND`; a restricted client's
runs as the argv its pattern matched, without a shell. Either way in a new session (its
own process group), so a timeout, a CANCEL or a dropped connection can end it *and*
everything it started.

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

import contextlib
import errno
import os
import posixpath
import pwd
import resource
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from radmin import policy
from radmin.config import ClientPolicy, Limits
from radmin.errors import BadRequest, ConnectionClosed, ProtocolError, RequestError
from radmin.ops import Outcome, OutOfDescriptors, Request, fields, out_of_descriptors, run_as_user
from radmin.protocol import HIGH_WATER, FrameSocket, FrameType, wait_ready

STDIN_WINDOW = 1024 * 1024  # stdin bytes a client may send ahead of the command's reads


def peek_exit(pid: int) -> tuple[int | None, int | None] | None:
    """(exit code, None) or (None, signal) once child `pid` has ended, else None.
    WNOWAIT: the status is learnt but the zombie stays, so its process group (and
    session) id cannot be reused by another process while we still signal it."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    if info is None:
        return None
    if info.si_code == os.CLD_EXITED:
        return (info.si_status, None)
    return (None, info.si_status)


class InputWindow:
    """Flow control of a client's STDIN (exec's, and the shell's typing): the client may
    send STDIN_WINDOW bytes ahead of what the command has taken; each byte taken is
    granted again, in WINDOW frames of at least a quarter window (not one per read)."""

    def __init__(self) -> None:
        self.granted = STDIN_WINDOW  # total STDIN bytes the client may have sent
        self.received = 0
        self.unacked = 0  # taken since the last WINDOW grant

    def receive(self, count: int) -> None:
        """Count arriving STDIN; a client past its grant breaks the protocol."""
        self.received += count
        if self.received > self.granted:
            raise ProtocolError("client sent more input than the daemon's window allows")

    def consumed(self, conn: FrameSocket, count: int) -> None:
        """Input bytes left our buffer: grant the client that much more, in batches."""
        self.unacked += count
        if self.unacked >= STDIN_WINDOW // 4:
            conn.queue_json(FrameType.WINDOW, {"bytes": self.unacked})
            self.granted += self.unacked
            self.unacked = 0


READ_SIZE = 64 * 1024
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_PATH = "/usr/local/bin:/usr/bin:/bin"
# Where a restricted client's bare program names are looked up (docs/policy.md): fixed,
# root-owned folders only, whoever the run_as user is.
SAFE_PATH = ROOT_PATH
NOT_FOUND = 127  # what a shell answers for a missing program
COMMAND_NOFILE = 1024  # the soft open-file limit commands get (select()-era programs)
_HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)


@dataclass(frozen=True)
class ExecParams:
    command: str
    cwd: str | None
    env: dict[str, str]
    timeout: float
    stdin: bool


@dataclass(frozen=True)
class ExecPlan:
    """What the policy allowed: argv to run directly, or a shell command line."""

    argv: list[str]
    shell: bool
    rule: str | None


FIELDS = (
    fields.Field(
        "command",
        fields.TEXT,
        "the command line; `/bin/sh -c` for an unrestricted client, argv for a "
        "restricted one (docs/policy.md)",
        required=True,
    ),
    fields.Field("cwd", fields.ABSOLUTE_PATH, "working directory (restricted: allow.cwd)"),
    fields.Field("env", fields.ENV, "variables to set (restricted: allow.env)", default={}),
    fields.Field(
        "timeout",
        fields.SECONDS,
        "kill the process group after this long; at most limits.exec_timeout",
    ),
    fields.Field(
        "stdin", fields.BOOLEAN, "STDIN frames follow (else stdin is empty)", default=False
    ),
)


def parse_params(params: dict[str, Any], timeout_ceiling: float | None) -> ExecParams:
    values = fields.parse("exec", FIELDS, params)
    # -t, else limits.exec_timeout, else no limit (inf). A -t above the daemon's limit is
    # refused, not silently shortened: the user asked for that much time.
    timeout = values["timeout"]
    if timeout is not None and timeout_ceiling is not None and timeout > timeout_ceiling:
        raise BadRequest(
            f"-t {timeout:g} is above this daemon's limits.exec_timeout "
            f"({timeout_ceiling:g} s); ask for at most that"
        )
    if timeout is None:
        timeout = float("inf") if timeout_ceiling is None else timeout_ceiling
    return ExecParams(
        command=values["command"],
        cwd=values["cwd"],
        env=dict(values["env"]),
        timeout=timeout,
        stdin=values["stdin"],
    )


def authorize(client: ClientPolicy, params: ExecParams) -> ExecPlan:
    """The policy step: command, -e names and --cwd, before anything is looked up."""
    verdict = policy.exec_verdict(client.allow_exec, params.command)
    verdict.enforce()
    for name in sorted(params.env):
        policy.env_verdict(
            client.allow_exec, client.allow_env, client.allow_env_unsafe, name
        ).enforce()
    if not client.restricted:
        return ExecPlan(["/bin/sh", "-c", params.command], shell=True, rule=verdict.rule)
    if params.cwd is not None:
        cwd_verdict(client, params.cwd).enforce()
    return ExecPlan(policy.split_command(params.command), shell=False, rule=verdict.rule)


def cwd_verdict(client: ClientPolicy, cwd: str) -> policy.Verdict:
    if ".." in cwd.split("/"):
        return policy.Verdict(False, None, "--cwd must not contain '..'")
    return policy.path_verdict(client.allow_cwd, "cwd", posixpath.normpath(cwd))


def working_directory(client: ClientPolicy, requested: str | None, user: pwd.struct_passwd) -> str:
    """--cwd (held to allow.cwd where it really is), else home, else / (as sudo -i)."""
    if requested is None:
        return user.pw_dir if user.pw_dir and os.path.isdir(user.pw_dir) else "/"
    if not os.path.isdir(requested):
        raise BadRequest(f"working directory {requested} does not exist")
    real = os.path.realpath(requested)
    if client.restricted and real != posixpath.normpath(requested):
        cwd_verdict(client, real).enforce()  # a symlink inside allow.cwd leading out
    return real


def command_env(user: pwd.struct_passwd, extra: dict[str, str]) -> dict[str, str]:
    """Built from scratch, as sudo's env_reset: the daemon's own variables never leak in,
    only its locale and time zone."""
    env = {
        "PATH": ROOT_PATH if user.pw_uid == 0 else USER_PATH,
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
        "SHELL": user.pw_shell or "/bin/sh",
        "LANG": "C.UTF-8",
    }
    env.update(
        (name, value)
        for name, value in os.environ.items()
        if name in ("LANG", "LANGUAGE", "TZ") or name.startswith("LC_")
    )
    env.update(extra)
    return env


def resolve_program(plan: ExecPlan) -> str | None:
    """The executable a restricted argv names: absolute as written, bare from SAFE_PATH."""
    program = plan.argv[0]
    if plan.shell or program.startswith("/"):
        return program
    return shutil.which(program, path=SAFE_PATH)


def _spawn(
    plan: ExecPlan, executable: str, env: dict[str, str], user: pwd.struct_passwd, cwd: str
) -> subprocess.Popen[bytes]:
    switch_user: dict[str, Any] = {}
    if user.pw_uid != os.geteuid():
        switch_user = {
            "user": user.pw_uid,
            "group": user.pw_gid,
            "extra_groups": os.getgrouplist(user.pw_name, user.pw_gid),
            "preexec_fn": _lower_nofile_in_child,
        }
    try:
        return subprocess.Popen(
            plan.argv,
            executable=executable,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
            **switch_user,
        )
    except OSError as exc:
        if out_of_descriptors(exc):
            raise OutOfDescriptors() from None
        raise RequestError(f"cannot start the command: {exc.strerror or exc}") from None


def command_nofile() -> tuple[int, int]:
    """The open-file limit a command gets: soft 1024 (select()-era programs), hard as is."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = COMMAND_NOFILE if hard == resource.RLIM_INFINITY else min(COMMAND_NOFILE, hard)
    return soft, hard


def _lower_nofile_in_child() -> None:  # pragma: no cover - runs between fork and exec
    resource.setrlimit(resource.RLIMIT_NOFILE, command_nofile())


def reset_resources(pid: int, in_child: bool) -> None:
    """What a command starts with is a login's, not the daemon's: the daemon's soft
    open-file limit is raised for thousands of connections and systemd gives it a low
    oom_score_adj so it survives memory pressure; a command gets 1024 and 0.

    A command of the daemon's own user is adjusted from the daemon right after the exec
    (a preexec_fn would turn subprocess's vfork into a full fork of the daemon: +4-5 ms
    per command, measured); one that runs as another user already costs a fork, so its
    limit is lowered in the child (+1 ms) -- the daemon may lack CAP_SYS_RESOURCE,
    which prlimit() of another user's process needs. oom_score_adj is written by the
    daemon (root) either way: a non-root command could not lower a raised value. The
    window is the microseconds before the program's own start-up code runs.
    """
    if not in_child:
        with contextlib.suppress(OSError):
            resource.prlimit(pid, resource.RLIMIT_NOFILE, command_nofile())
    with contextlib.suppress(OSError):
        fd = os.open(f"/proc/{pid}/oom_score_adj", os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def run(request: Request) -> Outcome:
    client, config = request.client, request.config
    params = parse_params(request.params, config.limits.exec_timeout)
    request.audit.update(command=params.command, env_names=sorted(params.env), rule=None)
    if params.cwd is not None:
        request.audit["cwd"] = params.cwd
    plan = authorize(client, params)
    request.audit["rule"] = plan.rule
    if not plan.shell:
        request.audit["argv"] = plan.argv
    user = run_as_user(client.run_as)
    cwd = working_directory(client, params.cwd, user)
    request.audit.update(cwd=cwd, run_as=user.pw_name)
    executable = resolve_program(plan)
    if executable is None:
        return _not_found(request, plan.argv[0])
    limit = config.limits.per_client.max_processes
    with request.usage.hold(client.name, "processes", limit):
        proc = _spawn(plan, executable, command_env(user, params.env), user, cwd)
        reset_resources(proc.pid, in_child=user.pw_uid != os.geteuid())
        pump = ProcessPump(request.conn, proc, params.timeout, config.limits)
        with request.commands.running(config.state_dir, proc.pid, pump):
            try:
                request.conn.send_json(
                    FrameType.PROCEED, {"pid": proc.pid, "stdin_window": STDIN_WINDOW}
                )
                pump.run()
            except BaseException as exc:
                pump.terminate_group()
                if isinstance(exc, ConnectionClosed | OSError):
                    request.audit.update(pump.summary())
                    who = pump.ended_by or "client went away"
                    raise ConnectionClosed(f"{who} during exec: {exc}") from None
                raise
    summary = pump.summary()
    reply = {k: summary[k] for k in ("exit_code", "signal", "timed_out", "cancelled", "duration_s")}
    if pump.ended_by is not None:
        reply["ended_by"] = pump.ended_by  # the client says so, rather than "signal 15"
    return Outcome(reply=reply, log=summary, after_reply=pump.drain_client_input)


def _not_found(request: Request, program: str) -> Outcome:
    """A shell's answer for a missing program: a message on stderr and status 127."""
    conn = request.conn
    conn.send_json(FrameType.PROCEED, {"pid": None, "stdin_window": STDIN_WINDOW})
    conn.send_frame(FrameType.STDERR, f"radmind: {program}: command not found\n".encode())
    reply = {"exit_code": NOT_FOUND, "signal": None, "timed_out": False, "cancelled": False}
    return Outcome(
        reply={**reply, "duration_s": 0.0},
        log={**reply, "not_found": program},
        after_reply=lambda: drain_client_input(conn),
    )


def drain_client_input(conn: FrameSocket) -> None:
    """Discard STDIN until the client's EOF: the next frame must be a REQUEST."""
    while True:
        frame = conn.recv_frame()
        if frame.type is FrameType.EOF:
            return
        if frame.type not in (FrameType.STDIN, FrameType.CANCEL):
            raise ProtocolError(f"expected STDIN or EOF after an exec, got {frame.type.name}")


class ProcessPump:
    """Moves bytes between one process and one client until the process is done."""

    def __init__(
        self, conn: FrameSocket, proc: subprocess.Popen[bytes], timeout: float, limits: Limits
    ):
        self.conn = conn
        self.proc = proc
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.idle_timeout = limits.idle_timeout
        self.kill_grace = limits.kill_grace  # seconds between SIGTERM and SIGKILL
        assert proc.stdin and proc.stdout and proc.stderr
        self.outputs = {
            proc.stdout.fileno(): (proc.stdout, FrameType.STDOUT),
            proc.stderr.fileno(): (proc.stderr, FrameType.STDERR),
        }
        self.stdin = proc.stdin
        os.set_blocking(self.stdin.fileno(), False)
        self.stdin_pending = bytearray()
        self.window = InputWindow()
        self.client_eof = False
        self.status: tuple[int | None, int | None] | None = None  # (exit code, signal)
        self.timed_out = False
        self.cancelled = False
        self.kill_at: float | None = None  # when SIGKILL follows the SIGTERM
        self.abandon_at: float | None = None  # when to stop waiting for escaped holders
        self.byte_counts = {FrameType.STDOUT: 0, FrameType.STDERR: 0}
        self.pidfd = _pidfd(proc.pid)
        self.duration = 0.0
        self.ended_by: str | None = None  # the daemon ended it (stopping), not a client

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        self.conn.sock.setblocking(False)
        poller = select.poll()
        registered: set[int] = set()
        sock_fd = self.conn.sock.fileno()
        self.conn.activity = "running the command"
        while self.status is None or self.outputs:
            self.conn.keep_alive()  # a HEARTBEAT when quiet; PeerSilent: the group is killed
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
        beat = self.conn.heartbeat_wait(now)
        if beat is not None:
            timers.append(now + beat)
        wait = min(timers) - now
        if self.pidfd is None and self.status is None:
            wait = min(wait, 0.05)
        wait = min(wait, 86400.0)  # no or a far deadline: poll() takes at most ~24 days
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
            self.window.receive(len(payload))
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
        self.window.consumed(self.conn, count)

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
        self.status = peek_exit(self.proc.pid)
        if self.status is None:
            return
        if not self.stdin.closed:
            self._drop_stdin()
            self._close_stdin()

    def _check_timers(self) -> None:
        now = time.monotonic()
        if not self.timed_out and now >= self.deadline:
            self._check_exit()  # it may have exited while we were slow to look
            if self.status is None:
                self.timed_out = True
                self._start_kill()
            else:
                self.deadline = float("inf")
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
            self.kill_at = time.monotonic() + self.kill_grace

    def _killpg(self, signum: int) -> None:
        try:
            os.killpg(self.proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def end_by_daemon(self, reason: str, signum: int) -> None:
        """Called from the daemon's stop (another thread): signal the group; this pump
        then sees the command end and sends its RESULT as usual."""
        if self.status is None:
            self.ended_by = reason
            self._killpg(signum)

    def terminate_group(self) -> None:
        """SIGTERM the group, give it kill_grace to go, SIGKILL what is left, reap."""
        self._killpg(signal.SIGTERM)
        give_up = time.monotonic() + self.kill_grace
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
        if not self.client_eof:
            drain_client_input(self.conn)
            self.client_eof = True

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
            "ended_by": self.ended_by,
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
