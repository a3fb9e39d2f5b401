"""shell, client side: an interactive shell on the host's PTY, bytes both ways.

Terminal-agnostic on purpose (radmin/cli/shell_command.py owns raw mode and signals):
this moves bytes between file descriptors and the connection. One poll() loop over the
socket, the input fd, the resize fd and the cancel fd. Input goes out within the window
the daemon grants (as exec's stdin); when the input fd reaches its end (a pipe or a
file), EOF is sent and the daemon types the terminal's ^D for us.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import time
from collections import namedtuple

from radmin.client.exec import ExitStatus, on_control_frame
from radmin.errors import RemoteProtocolError, TransportError
from radmin.protocol import HIGH_WATER, FrameType, wait_ready

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from radmin.client.connection import Connection

CANCEL_WAIT = 10.0  # seconds to wait for the daemon's RESULT after a CANCEL
DEFAULT_SIZE = (24, 80)


class ShellResult(ExitStatus, namedtuple("ShellResult", "exit_code signal cancelled duration_s")):
    """How the remote shell ended: `exit_code`, or `signal` if a signal killed it;
    `returncode` is the status ssh would give."""

    __slots__ = ()


def open_shell(
    conn: Connection,
    *,
    stdin: int,
    on_output: Callable[[bytes], None],
    term: str = "dumb",
    window_size: Callable[[], tuple[int, int]] | None = None,
    resize_fd: int | None = None,
    on_start: Callable[[], None] | None = None,
) -> ShellResult:
    """See Connection.shell."""
    size = window_size() if window_size is not None else DEFAULT_SIZE
    conn.request("shell", term=term, rows=size[0], cols=size[1])
    frame_type, reply = conn.receive(FrameType.PROCEED, FrameType.RESULT)
    if frame_type is FrameType.RESULT:
        conn.check(reply)
        raise RemoteProtocolError("protocol error: shell ended without starting")
    if on_start is not None:
        on_start()
    stream = _ShellStream(conn, stdin, int(reply.get("stdin_window", 0)), on_output)
    stream.watch_resizes(resize_fd, window_size, size)
    with conn.translated("connection lost"):
        result = stream.run()
    return ShellResult(
        exit_code=result.get("exit_code"),
        signal=result.get("signal"),
        cancelled=bool(result.get("cancelled")),
        duration_s=float(result.get("duration_s", 0.0)),
    )


class _ShellStream:
    """The client half of a shell: forward input and resizes, deliver output."""

    def __init__(
        self, conn: Connection, stdin: int, window: int, on_output: Callable[[bytes], None]
    ):
        self.conn = conn
        self.frames = conn.frames
        self.stdin = stdin
        self.credit = window
        self.on_output = on_output
        self.cancel_fd = conn.options.cancel_fd
        self.cancel_sent_at: float | None = None
        self.resize_fd: int | None = None
        self.window_size: Callable[[], tuple[int, int]] | None = None
        self.size = DEFAULT_SIZE
        self.input_done = False
        self.result: dict[str, Any] | None = None

    def watch_resizes(
        self,
        resize_fd: int | None,
        window_size: Callable[[], tuple[int, int]] | None,
        size: tuple[int, int],
    ) -> None:
        """When `resize_fd` is readable (a SIGWINCH self-pipe), ask `window_size()`."""
        if resize_fd is not None and window_size is not None:
            self.resize_fd, self.window_size, self.size = resize_fd, window_size, size

    def run(self) -> dict[str, Any]:
        sock = self.frames.sock
        sock.setblocking(False)
        self.frames.activity = "running the shell"
        try:
            while self.result is None:
                self._step(sock.fileno())
            self._end_input()  # the shell is done: stop reading our input
            while not self.frames.flush():
                wait_ready({sock.fileno(): select.POLLOUT}, self.conn.options.connect_timeout)
        finally:
            sock.settimeout(self.conn.options.connect_timeout)
        return self.result

    def _end_input(self) -> None:
        if not self.input_done:
            self.input_done = True
            self.frames.queue(FrameType.EOF)

    def _step(self, sock_fd: int) -> None:
        interest = {sock_fd: select.POLLIN | (select.POLLOUT if self.frames.queued else 0)}
        if not self.input_done and self.credit > 0 and self.frames.queued < HIGH_WATER:
            interest[self.stdin] = select.POLLIN
        if self.resize_fd is not None:
            interest[self.resize_fd] = select.POLLIN
        if self.cancel_fd is not None and self.cancel_sent_at is None:
            interest[self.cancel_fd] = select.POLLIN
        # A HEARTBEAT when we were quiet (a user idle at the prompt); PeerSilent when the
        # daemon has been for three intervals (a frozen host, a cut cable).
        self.frames.keep_alive()
        timeout = self.frames.heartbeat_wait()
        if self.cancel_sent_at is not None:
            left = max(0.0, self.cancel_sent_at + CANCEL_WAIT - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
            if left == 0:
                raise TransportError("cancelled, but the daemon did not confirm in time")
        if self.frames.buffered:
            timeout = 0
        ready = wait_ready(interest, timeout)
        if self.cancel_fd is not None and self.cancel_fd in ready:
            self.frames.queue_json(FrameType.CANCEL, {})
            self.cancel_sent_at = time.monotonic()
        if self.resize_fd is not None and self.resize_fd in ready:
            self._send_size()
        if self.stdin in ready and not self.input_done:
            self._read_input()
        if ready.get(sock_fd, 0) & ~select.POLLOUT or self.frames.buffered:
            while self.result is None and (frame := self.frames.poll_frame()) is not None:
                self._on_frame(frame.type, frame.payload)
        self.frames.flush()

    def _read_input(self) -> None:
        try:
            data = os.read(self.stdin, min(64 * 1024, self.credit))
        except BlockingIOError:
            return
        except OSError as exc:  # a terminal hung up: no more input
            if exc.errno != errno.EIO:
                raise
            data = b""
        if data:
            self.credit -= len(data)
            self.frames.queue(FrameType.STDIN, data)
        else:
            self._end_input()

    def _send_size(self) -> None:
        assert self.resize_fd is not None and self.window_size is not None
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.read(self.resize_fd, 4096)  # every pending signal: one resize will do
        size = self.window_size()
        if size != self.size:
            self.size = size
            self.frames.queue_json(FrameType.RESIZE, {"rows": size[0], "cols": size[1]})

    def _on_frame(self, frame_type: FrameType, payload: memoryview) -> None:
        if frame_type is FrameType.STDOUT:
            self.on_output(bytes(payload))
        else:
            on_control_frame(self, frame_type, payload, "in a shell")
