"""The radmin wire format: length-prefixed frames over one TLS stream.

Each frame is a 5-byte header -- frame type (1 byte), payload length (4 bytes, big
endian) -- followed by the payload. Control frames carry one JSON object; data frames
carry raw bytes (never base64). Limits are checked on the header, before a byte of the
payload is read, and the receive buffer grows only as bytes really arrive, so a peer can
never make us allocate what it merely announces. A frame that has begun must arrive whole
within `frame_timeout`, so dripping bytes cannot hold a connection open. Control frames
are parsed strictly (`decode_json`). See docs/protocol.md for the order frames come in.

`FrameSocket` serves two styles over the same receive buffer:
  * blocking request/reply (hello, ping, put) with the socket's timeout, and
  * a non-blocking pump (`poll_frame`/`queue`/`flush`) for loops that also watch pipes
    (exec), because one TLS object must never be read and written from two threads.
"""

from __future__ import annotations

import contextlib
import json
import math
import select
import socket
import ssl
import struct
import time
from enum import IntEnum

from radmin.errors import ConnectionClosed, FrameTimeout, ProtocolError, UnsafeMessage

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any
HEADER = struct.Struct("!BI")
MAX_CONTROL = 64 * 1024
MAX_DATA = 1024 * 1024
# Bytes queued for sending before a pump stops producing (stdout pipes, stdin reads).
HIGH_WATER = 1024 * 1024
_INITIAL_BUFFER = 64 * 1024
_FULL_BUFFER = HEADER.size + MAX_DATA + 64 * 1024
_SEND_CHUNK = 256 * 1024
# Seconds a frame whose first byte has arrived may take to arrive whole (the daemon's
# limits.frame_timeout overrides it).
FRAME_TIMEOUT = 30.0
# How far a wait for bulk data may run past a frame's deadline (see _receive_payload).
_TIMEOUT_SLACK = 0.05
# Strict JSON: no radmin message nests deeper, and no count it carries has more digits
# (2**64 has 20).
MAX_DEPTH = 32
MAX_INT_DIGITS = 20


class FrameType(IntEnum):
    HELLO = 0x01  # JSON, both ways, first frame each way
    REQUEST = 0x02  # JSON, client -> daemon: starts one operation
    PROCEED = 0x03  # JSON, daemon -> client: request accepted, stream data now
    RESULT = 0x04  # JSON, daemon -> client: ends one operation (success or refusal)
    ERROR = 0x05  # JSON, either way: protocol error, the sender closes the connection
    CANCEL = 0x06  # JSON, client -> daemon: abort the running operation
    WINDOW = 0x07  # JSON, daemon -> client: this many more STDIN bytes may be sent
    DIGEST = 0x08  # JSON, client -> daemon: the SHA-256 of a put's content
    STDIN = 0x10  # bytes, client -> daemon
    STDOUT = 0x11  # bytes, daemon -> client
    STDERR = 0x12  # bytes, daemon -> client
    FILE_DATA = 0x13  # bytes, client -> daemon: put content
    EOF = 0x14  # empty, client -> daemon: no more STDIN


CONTROL_TYPES = frozenset(
    {
        FrameType.HELLO,
        FrameType.REQUEST,
        FrameType.PROCEED,
        FrameType.RESULT,
        FrameType.ERROR,
        FrameType.CANCEL,
        FrameType.WINDOW,
        FrameType.DIGEST,
    }
)
_KNOWN_TYPES = {int(t): t for t in FrameType}


def max_payload(frame_type: FrameType) -> int:
    """Largest payload a frame of this type may announce."""
    if frame_type in CONTROL_TYPES:
        return MAX_CONTROL
    if frame_type is FrameType.EOF:
        return 0
    return MAX_DATA


def encode_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def decode_json(frame_type: FrameType, payload: bytes | memoryview) -> dict[str, Any]:
    """Parse a control frame's payload strictly.

    Not UTF-8, not JSON, or not a JSON object: ProtocolError. Valid JSON holding a value
    no radmin message has -- and that would blow up wherever it is used later, far from
    here -- raises UnsafeMessage (a ProtocolError): NaN/Infinity (Python's extension to
    JSON), integers over MAX_INT_DIGITS digits (int() refuses 4,300+, float() overflows
    past 308), nesting deeper than MAX_DEPTH (RecursionError), strings with a lone
    surrogate (from a "\\ud800" escape: not encodable, so no path or command) or a NUL.
    One check here instead of one per field in every operation.
    """
    try:
        text = bytes(payload).decode("utf-8")
        obj = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"{frame_type.name} frame is not valid JSON: {exc}") from None
    except RecursionError:
        raise UnsafeMessage(f"{frame_type.name} frame is nested too deeply") from None
    except UnsafeMessage as exc:
        raise UnsafeMessage(f"{frame_type.name} frame: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{frame_type.name} frame must hold a JSON object")
    try:
        _check_values(obj)
    except UnsafeMessage as exc:
        raise UnsafeMessage(f"{frame_type.name} frame: {exc}") from None
    return obj


def _refuse_constant(name: str) -> float:
    raise UnsafeMessage(f"{name} is not a number radmin accepts")


def _bounded_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise UnsafeMessage(f"an integer of {digits} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 24 else f"{text[:24]}..."
        raise UnsafeMessage(f"the number {shown} is too large")
    return value


def _check_values(message: dict[str, Any]) -> None:
    """Walk the decoded message once (no recursion): depth, and every string, keys too."""
    stack: list[tuple[Any, int]] = [(message, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_string(value)
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise UnsafeMessage(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key in value:
                _check_string(key)
            value = value.values()
        stack.extend((item, depth + 1) for item in value)


def _check_string(text: str) -> None:
    if "\0" in text:
        raise UnsafeMessage("a string holds a NUL character")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise UnsafeMessage("a string is not valid Unicode (lone surrogate)") from None


def wait_ready(interest: dict[int, int], timeout: float | None) -> dict[int, int]:
    """poll() on {fd: events}; return {fd: revents} of the ready ones ({} on timeout).

    poll, never select(): select() fails for descriptors >= 1024, which a busy daemon
    (or a client with many connections) reaches. HUP and errors count as ready: the
    next read or write reports them.
    """
    poller = select.poll()
    for fd, events in interest.items():
        poller.register(fd, events)
    wait_ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
    return dict(poller.poll(wait_ms))


def parse_header(header: bytes | memoryview) -> tuple[FrameType, int]:
    """Validate a header before its payload is read: known type, length within limits."""
    type_byte, length = HEADER.unpack(header)
    frame_type = _KNOWN_TYPES.get(type_byte)
    if frame_type is None:
        raise ProtocolError(f"unknown frame type 0x{type_byte:02x}")
    limit = max_payload(frame_type)
    if length > limit:
        raise ProtocolError(
            f"{frame_type.name} frame of {length} bytes exceeds the limit of {limit} bytes"
        )
    return frame_type, length


class Frame:
    """One received frame. `payload` points into the receive buffer: valid until the next
    read, so callers copy (`bytes(frame.payload)`) what they keep."""

    __slots__ = ("payload", "type")

    def __init__(self, frame_type: FrameType, payload: memoryview):
        self.type = frame_type
        self.payload = payload

    def json(self) -> dict[str, Any]:
        return decode_json(self.type, self.payload)


class FrameSocket:
    """Frames over a connected (TLS) socket, with one receive buffer that grows as bytes
    arrive."""

    def __init__(self, sock: socket.socket, frame_timeout: float = FRAME_TIMEOUT):
        self.sock = sock
        self.frame_timeout = frame_timeout
        # Small until a large frame arrives: an idle connection costs 64 KiB, not 1 MiB.
        self._buf = bytearray(_INITIAL_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._out = bytearray()
        # When the frame being received must be complete; None while none has begun.
        self._frame_deadline: float | None = None
        self.frames_received = 0
        self.frames_sent = 0

    # -- parsing -----------------------------------------------------------------------

    def _frame_from_buffer(self) -> Frame | None:
        available = self._end - self._start
        if available < HEADER.size:
            self._frame_begun(available)
            return None
        frame_type, length = parse_header(self._view[self._start : self._start + HEADER.size])
        total = HEADER.size + length
        if available < total:
            self._make_room(total)
            self._frame_begun(available)
            return None
        payload = self._view[self._start + HEADER.size : self._start + total]
        self._start += total
        self._frame_deadline = None
        self.frames_received += 1
        return Frame(frame_type, payload)

    def _frame_begun(self, available: int) -> None:
        """Start the frame clock at the first byte of a frame we are waiting for."""
        if available and self._frame_deadline is None:
            self._frame_deadline = time.monotonic() + self.frame_timeout

    @property
    def frame_deadline(self) -> float | None:
        """When the partly received frame must be complete (time.monotonic()), or None."""
        return self._frame_deadline

    def _check_frame_deadline(self, now: float) -> None:
        if self._frame_deadline is not None and now >= self._frame_deadline:
            raise FrameTimeout(
                f"a frame was not complete within {self.frame_timeout:g} s of its first byte"
                " (limits.frame_timeout)"
            )

    def _compact(self) -> None:
        """Move a partial frame to the front so the rest of it fits behind."""
        pending = self._end - self._start
        self._buf[:pending] = self._buf[self._start : self._end]
        self._start, self._end = 0, pending

    def _make_room(self, frame_size: int) -> None:
        """Make space for the rest of a frame -- as it arrives, never ahead of it.

        Compact first; grow only once the buffer is full of the frame's bytes, doubling
        up to the full size: a header announcing 1 MiB followed by a few bytes costs
        nothing, and memory follows what the peer really sent (at most twice that).
        A new buffer rather than a resize: a caller may still hold a payload view into
        the old one, and a bytearray with live views cannot change size.
        """
        if self._start + frame_size <= len(self._buf):
            return
        if self._start:
            self._compact()
        if frame_size > len(self._buf) and self._end == len(self._buf):
            self._grow(min(2 * len(self._buf), _FULL_BUFFER))

    def _grow(self, size: int) -> None:
        pending = self._end - self._start
        bigger = bytearray(size)
        bigger[:pending] = self._view[self._start : self._end]
        self._buf, self._view = bigger, memoryview(bigger)
        self._start, self._end = 0, pending

    def _receive_more(self) -> int:
        """One recv into the free tail of the buffer; 0 means the peer closed."""
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buf):
            self._compact()
        n = self.sock.recv_into(self._view[self._end :])
        self._end += n
        return n

    def _eof(self) -> ConnectionClosed:
        if self._end > self._start:
            return ConnectionClosed(
                "connection closed in the middle of a frame (truncated)", truncated=True
            )
        return ConnectionClosed("connection closed by peer")

    # -- blocking style ----------------------------------------------------------------

    def recv_frame(self, deadline: float | None = None) -> Frame:
        """Block until one whole frame has arrived.

        Three bounds: the socket's timeout for each wait (the caller's idle limit),
        `frame_timeout` once the frame's first byte is here, and `deadline` (a
        time.monotonic() value, e.g. the end of the handshake) for the whole call. The
        last two are totals: a peer dripping a byte at a time cannot stretch them.
        """
        while True:
            frame = self._frame_from_buffer()
            if frame is not None:
                return frame
            if self._receive_before(deadline) == 0:
                raise self._eof()

    def _receive_before(self, deadline: float | None) -> int:
        """_receive_more, cut short by the frame's deadline or the caller's."""
        limit = self._frame_deadline
        if limit is None or (deadline is not None and deadline < limit):
            limit = deadline
        if limit is None:
            return self._receive_more()
        now = time.monotonic()
        self._check_frame_deadline(now)
        remaining = limit - now
        if remaining <= 0:
            raise TimeoutError("no complete frame before the deadline")
        idle = self.sock.gettimeout()
        if idle is not None and idle <= remaining:
            return self._receive_more()  # the socket's own timeout comes first
        self.sock.settimeout(remaining)
        try:
            return self._receive_more()
        except TimeoutError:
            self._check_frame_deadline(time.monotonic())
            raise TimeoutError("no complete frame before the deadline") from None
        finally:
            self.sock.settimeout(idle)

    def recv_data_into(
        self, sink: memoryview, data_type: FrameType, deadline: float | None = None
    ) -> Frame | int:
        """Receive the next frame: a `data_type` frame's payload lands in `sink` (its
        length is returned); any other frame is returned as a Frame, as recv_frame would.

        For bulk data (put, get). recv_frame reads a 1 MiB payload through the receive
        buffer, parsing the header again at every 16 KiB TLS record, and the caller then
        copies it out; here the header is parsed once, the payload goes straight into
        the caller's reused buffer with one recv_into per record, and no copy is made.
        `sink` must hold max_payload(data_type) bytes. Same bounds as recv_frame.
        """
        while True:
            available = self._end - self._start
            if available >= HEADER.size:
                frame_type, length = parse_header(
                    self._view[self._start : self._start + HEADER.size]
                )
                if frame_type is data_type:
                    break
                frame = self._frame_from_buffer()
                if frame is not None:
                    return frame
            else:
                self._frame_begun(available)
            if self._receive_before(deadline) == 0:
                raise self._eof()
        if length > len(sink):
            raise ValueError(f"a sink of {len(sink)} bytes for a {length}-byte payload")
        self._frame_begun(available)
        self._start += HEADER.size
        buffered = min(self._end - self._start, length)
        sink[:buffered] = self._view[self._start : self._start + buffered]
        self._start += buffered
        if buffered < length:
            self._receive_payload(sink[buffered:length], deadline)
        self._frame_deadline = None
        self.frames_received += 1
        return length

    def _receive_payload(self, view: memoryview, deadline: float | None) -> None:
        """recv_into `view` until it is full: the socket's timeout for each wait, and the
        frame's deadline and the caller's for the whole.

        settimeout() is a system call (ioctl FIONBIO): _receive_before makes two per TLS
        record. Here the timeout is set once and lowered only when a deadline has come
        more than _TIMEOUT_SLACK closer than it, so a wait overshoots a deadline by at
        most that much."""
        limit = self._frame_deadline
        if limit is None or (deadline is not None and deadline < limit):
            limit = deadline
        idle = self.sock.gettimeout()
        timeout = idle
        recv_into = self.sock.recv_into
        monotonic = time.monotonic
        try:
            got, total = 0, len(view)
            while got < total:
                if limit is not None:
                    remaining = limit - monotonic()
                    if remaining <= 0:
                        self._check_frame_deadline(monotonic())
                        raise TimeoutError("no complete frame before the deadline")
                    if timeout is None or remaining < timeout - _TIMEOUT_SLACK:
                        timeout = remaining
                        self.sock.settimeout(timeout)
                try:
                    n = recv_into(view[got:])
                except TimeoutError:
                    if limit is not None and timeout != idle:
                        self._check_frame_deadline(monotonic())
                        raise TimeoutError("no complete frame before the deadline") from None
                    raise
                if n == 0:
                    raise ConnectionClosed(
                        "connection closed in the middle of a frame (truncated)", truncated=True
                    )
                got += n
        finally:
            if timeout != idle:
                self.sock.settimeout(idle)

    def recv_control(self, *expected: FrameType, deadline: float | None = None) -> Frame:
        """Receive a frame of one of the expected (control) types, not yet decoded."""
        frame = self.recv_frame(deadline)
        if frame.type not in expected:
            names = "/".join(t.name for t in expected)
            raise ProtocolError(f"expected a {names} frame, got {frame.type.name}")
        return frame

    def recv_json(
        self, *expected: FrameType, deadline: float | None = None
    ) -> tuple[FrameType, dict[str, Any]]:
        """Receive a control frame of one of the expected types."""
        frame = self.recv_control(*expected, deadline=deadline)
        return frame.type, frame.json()

    def send_frame(self, frame_type: FrameType, payload: bytes | memoryview = b"") -> None:
        header = HEADER.pack(frame_type, len(payload))
        if len(payload) <= 16 * 1024:
            self.sock.sendall(header + bytes(payload))
        else:  # avoid copying bulk data just to glue a 5-byte header on
            self.sock.sendall(header)
            self.sock.sendall(payload)
        self.frames_sent += 1

    def send_json(self, frame_type: FrameType, obj: dict[str, Any]) -> None:
        self.send_frame(frame_type, encode_json(obj))

    # -- non-blocking pump -------------------------------------------------------------

    def poll_frame(self) -> Frame | None:
        """Return a complete frame if one is buffered or readable now, else None.

        Call until it returns None after the socket polled readable: TLS may hold
        decrypted bytes that poll() cannot see. A frame that began more than
        `frame_timeout` ago raises FrameTimeout here (checked whenever bytes come in).
        """
        while True:
            frame = self._frame_from_buffer()
            if frame is not None:
                return frame
            self._check_frame_deadline(time.monotonic())
            try:
                if self._receive_more() == 0:
                    raise self._eof()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return None

    def queue(self, frame_type: FrameType, payload: bytes | memoryview = b"") -> None:
        self._out += HEADER.pack(frame_type, len(payload))
        self._out += payload
        self.frames_sent += 1

    def queue_json(self, frame_type: FrameType, obj: dict[str, Any]) -> None:
        self.queue(frame_type, encode_json(obj))

    @property
    def buffered(self) -> int:
        """Nonzero when poll_frame() can make progress without the socket becoming
        readable: a whole frame in our buffer, or decrypted bytes TLS holds (which poll()
        cannot see). Zero for a partial frame: only the socket can complete it, so wait
        on the socket rather than spin."""
        pending = self.sock.pending() if isinstance(self.sock, ssl.SSLSocket) else 0
        return pending + self._frame_ready()

    def _frame_ready(self) -> bool:
        """A whole frame, or a header poll_frame() will refuse, is in the buffer."""
        available = self._end - self._start
        if available < HEADER.size:
            return False
        _, length = HEADER.unpack_from(self._buf, self._start)
        return available >= HEADER.size + length or length > MAX_DATA

    @property
    def queued(self) -> int:
        return len(self._out)

    def flush(self) -> bool:
        """Send what the socket takes without blocking; True once nothing is queued."""
        while self._out:
            try:
                # A copy of a constant-size prefix: a retried TLS write must see the
                # same leading bytes, and a bytearray cannot shrink while viewed.
                n = self.sock.send(self._out[:_SEND_CHUNK])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                return False
            del self._out[:n]
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
