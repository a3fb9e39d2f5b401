"""exec, client side: send the request, stream stdin within the daemon's window, deliver
output as it arrives, turn Ctrl-C into a CANCEL, return the result.

One poll() loop over the socket, the stdin source and the cancel fd. Stdin goes out only
within the window the daemon grants (PROCEED, then WINDOW frames), so the daemon never
buffers more than that and always keeps reading the socket -- which is how it notices at
once when this client goes away.
"""

from __future__ import annotations

import os
import select
import time
from collections import namedtuple

from radmin.errors import RemoteProtocolError, TransportError
from radmin.protocol import HIGH_WATER, MAX_DATA, FrameType, wait_ready

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from radmin.client.connection import Connection

    OutputCallback = Callable[[bytes], None]

CANCEL_WAIT = 5.0  # seconds to wait for the daemon's RESULT after a CANCEL


class ExitStatus:
    """For results with `exit_code` and `signal` (exec's, the shell's)."""

    __slots__ = ()
    exit_code: int | None
    signal: int | None

    @property
    def returncode(self) -> int:
        """subprocess's name: the exit code, or 128 + the signal number, as a shell says."""
        if self.exit_code is not None:
            return self.exit_code
        return 128 + (self.signal or 0)


class ExecResult(
    ExitStatus,
    namedtuple(
        "ExecResult",
        "exit_code signal timed_out cancelled duration_s stdout stderr ended_by",
        defaults=(b"", b"", None),
    ),
):
    """`exit_code` is None when `signal` ended the command; `stdout`/`stderr` are filled
    by Connection.run() and empty when the output was streamed to callbacks; `ended_by`
    says why the daemon itself ended it ("daemon shutting down"), else None."""

    __slots__ = ()

    status = ExitStatus.returncode  # the name the CLI has used


def exec_command(
    conn: Connection,
    command: str,
    *,
    stdin: bytes | int | None = None,
    on_stdout: OutputCallback | None = None,
    on_stderr: OutputCallback | None = None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> ExecResult:
    """See Connection.exec."""
    conn.request(
        "exec", command=command, cwd=cwd, env=env or {}, timeout=timeout, stdin=stdin is not None
    )
    frame_type, reply = conn.receive(FrameType.PROCEED, FrameType.RESULT)
    if frame_type is FrameType.RESULT:
        conn.check(reply)
        raise RemoteProtocolError("protocol error: exec ended without starting")
    ignore: OutputCallback = lambda data: None  # noqa: E731
    window = int(reply.get("stdin_window", 0))
    stream = _ExecStream(conn, stdin, window, on_stdout or ignore, on_stderr or ignore)
    with conn.translated("connection lost"):
        result = stream.run()
    return ExecResult(
        exit_code=result.get("exit_code"),
        signal=result.get("signal"),
        timed_out=bool(result.get("timed_out")),
        cancelled=bool(result.get("cancelled")),
        duration_s=float(result.get("duration_s", 0.0)),
        ended_by=str(result["ended_by"])[:200] if result.get("ended_by") else None,
    )


class _ExecStream:
    """The client half of an exec: forward stdin, deliver output, watch for cancel."""

    def __init__(
        self,
        conn: Connection,
        stdin: bytes | int | None,
        window: int,
        on_stdout: OutputCallback,
        on_stderr: OutputCallback,
    ):
        self.frames = conn.frames
        self.conn = conn
        self.stdin_fd = stdin if isinstance(stdin, int) else None
        self.stdin_bytes = memoryview(stdin) if isinstance(stdin, bytes) else None
        self.credit = window
        self.on_output = {FrameType.STDOUT: on_stdout, FrameType.STDERR: on_stderr}
        self.cancel_fd = conn.options.cancel_fd
        self.cancel_sent_at: float | None = None
        self.input_done = False
        self.result: dict[str, Any] | None = None
        if stdin is None:
            self._end_input()

    def _end_input(self) -> None:
        if not self.input_done:
            self.input_done = True
            self.frames.queue(FrameType.EOF)

    def _queue_stdin_bytes(self) -> None:
        """Queue as much of an in-memory stdin as the window allows."""
        if self.stdin_bytes is None or self.input_done:
            return
        while self.credit > 0 and self.stdin_bytes:
            n = min(self.credit, MAX_DATA, len(self.stdin_bytes))
            self.frames.queue(FrameType.STDIN, self.stdin_bytes[:n])
            self.stdin_bytes = self.stdin_bytes[n:]
            self.credit -= n
        if not self.stdin_bytes:
            self._end_input()

    def run(self) -> dict[str, Any]:
        sock = self.frames.sock
        sock.setblocking(False)
        self.frames.activity = "running the command"
        try:
            while self.result is None:
                self._queue_stdin_bytes()
                self._step(sock.fileno())
            self._end_input()  # the command is done: stop reading our stdin
            while not self.frames.flush():
                wait_ready({sock.fileno(): select.POLLOUT}, self.conn.options.connect_timeout)
        finally:
            sock.settimeout(self.conn.options.connect_timeout)
        return self.result

    def _step(self, sock_fd: int) -> None:
        interest = {sock_fd: select.POLLIN | (select.POLLOUT if self.frames.queued else 0)}
        forwarding = self.stdin_fd is not None and not self.input_done
        if forwarding and self.credit > 0 and self.frames.queued < HIGH_WATER:
            interest[self.stdin_fd] = select.POLLIN  # type: ignore[index]  # not None here
        if self.cancel_fd is not None and self.cancel_sent_at is None:
            interest[self.cancel_fd] = select.POLLIN
        timeout = None
        if self.cancel_sent_at is not None:
            timeout = max(0.0, self.cancel_sent_at + CANCEL_WAIT - time.monotonic())
            if timeout == 0:
                raise TransportError("cancelled, but the daemon did not confirm in time")
        self.frames.keep_alive()  # a HEARTBEAT when we were quiet; PeerSilent when it is
        beat = self.frames.heartbeat_wait()
        if beat is not None:
            timeout = beat if timeout is None else min(timeout, beat)
        if self.frames.queued:
            interest[sock_fd] |= select.POLLOUT
        if self.frames.buffered:
            timeout = 0  # decrypted bytes poll() cannot see
        ready = wait_ready(interest, timeout)
        if self.cancel_fd is not None and self.cancel_fd in ready:
            self.frames.queue_json(FrameType.CANCEL, {})
            self.cancel_sent_at = time.monotonic()
        if self.stdin_fd is not None and self.stdin_fd in ready:
            data = os.read(self.stdin_fd, min(64 * 1024, self.credit))
            if data:
                self.credit -= len(data)
                self.frames.queue(FrameType.STDIN, data)
            else:
                self._end_input()
        if ready.get(sock_fd, 0) & ~select.POLLOUT or self.frames.buffered:
            while self.result is None and (frame := self.frames.poll_frame()) is not None:
                self._on_frame(frame.type, frame.payload)
        self.frames.flush()

    def _on_frame(self, frame_type: FrameType, payload: memoryview) -> None:
        callback = self.on_output.get(frame_type)
        if callback is not None:
            callback(bytes(payload))
        else:
            on_control_frame(self, frame_type, payload, "during exec")


def on_control_frame(pump: Any, frame_type: FrameType, payload: memoryview, during: str) -> None:
    """The frames every interactive operation (exec, shell) answers alike: WINDOW grants
    `pump.credit`, RESULT sets `pump.result`, ERROR and anything else end the
    connection as the daemon's protocol error."""
    if frame_type is FrameType.WINDOW:
        pump.credit += int(_json(frame_type, payload).get("bytes", 0))
    elif frame_type is FrameType.RESULT:
        pump.result = pump.conn.check(_json(frame_type, payload))
    elif frame_type is FrameType.ERROR:
        message = _json(frame_type, payload)
        raise RemoteProtocolError(f"daemon reported a protocol error: {message.get('message')}")
    else:
        raise RemoteProtocolError(f"protocol error: unexpected {frame_type.name} {during}")


def _json(frame_type: FrameType, payload: memoryview) -> dict[str, Any]:
    from radmin.protocol import decode_json

    return decode_json(frame_type, payload)
