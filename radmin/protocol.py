"""The radmin wire format: length-prefixed frames over one TLS stream.

Each frame is a 5-byte header -- frame type (1 byte), payload length (4 bytes, big
endian) -- followed by the payload. Control frames carry one JSON object; data frames
carry raw bytes (never base64). Limits are checked on the header, before a byte of the
payload is read, so a peer can never make us allocate what it announces. See
docs/protocol.md for the order frames come in.

`FrameSocket` serves two styles over the same receive buffer:
  * blocking request/reply (hello, ping, put) with the socket's timeout, and
  * a non-blocking pump (`poll_frame`/`queue`/`flush`) for loops that also watch pipes
    (exec), because one TLS object must never be read and written from two threads.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
from enum import IntEnum

from radmin.errors import ConnectionClosed, ProtocolError

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
    """Parse a control frame's payload; anything but a JSON object is a protocol error."""
    try:
        obj = json.loads(bytes(payload))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"{frame_type.name} frame is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{frame_type.name} frame must hold a JSON object")
    return obj


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
    """Frames over a connected (TLS) socket, with one fixed receive buffer."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        # Small until a large frame arrives: an idle connection costs 64 KiB, not 1 MiB.
        self._buf = bytearray(_INITIAL_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._out = bytearray()
        self.bytes_received = 0
        self.bytes_sent = 0

    # -- parsing -----------------------------------------------------------------------

    def _frame_from_buffer(self) -> Frame | None:
        available = self._end - self._start
        if available < HEADER.size:
            return None
        frame_type, length = parse_header(self._view[self._start : self._start + HEADER.size])
        total = HEADER.size + length
        if available < total:
            if self._start + total > len(self._buf):
                self._make_room(total)
            return None
        payload = self._view[self._start + HEADER.size : self._start + total]
        self._start += total
        return Frame(frame_type, payload)

    def _compact(self) -> None:
        """Move a partial frame to the front so the rest of it fits behind."""
        pending = self._end - self._start
        self._buf[:pending] = self._buf[self._start : self._end]
        self._start, self._end = 0, pending

    def _make_room(self, frame_size: int) -> None:
        """Compact, or move to a full-size buffer (once) if the frame cannot fit.

        A new buffer rather than a resize: a caller may still hold a payload view into
        the old one, and a bytearray with live views cannot change size.
        """
        if frame_size <= len(self._buf):
            self._compact()
            return
        pending = self._end - self._start
        bigger = bytearray(_FULL_BUFFER)
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
        self.bytes_received += n
        return n

    def _eof(self) -> ConnectionClosed:
        if self._end > self._start:
            return ConnectionClosed(
                "connection closed in the middle of a frame (truncated)", truncated=True
            )
        return ConnectionClosed("connection closed by peer")

    # -- blocking style ----------------------------------------------------------------

    def recv_frame(self) -> Frame:
        """Block (up to the socket's timeout) until one whole frame has arrived."""
        while True:
            frame = self._frame_from_buffer()
            if frame is not None:
                return frame
            if self._receive_more() == 0:
                raise self._eof()

    def recv_json(self, *expected: FrameType) -> tuple[FrameType, dict[str, Any]]:
        """Receive a control frame of one of the expected types."""
        frame = self.recv_frame()
        if frame.type not in expected:
            names = "/".join(t.name for t in expected)
            raise ProtocolError(f"expected a {names} frame, got {frame.type.name}")
        return frame.type, frame.json()

    def send_frame(self, frame_type: FrameType, payload: bytes | memoryview = b"") -> None:
        header = HEADER.pack(frame_type, len(payload))
        if len(payload) <= 16 * 1024:
            self.sock.sendall(header + bytes(payload))
        else:  # avoid copying bulk data just to glue a 5-byte header on
            self.sock.sendall(header)
            self.sock.sendall(payload)
        self.bytes_sent += HEADER.size + len(payload)

    def send_json(self, frame_type: FrameType, obj: dict[str, Any]) -> None:
        self.send_frame(frame_type, encode_json(obj))

    # -- non-blocking pump -------------------------------------------------------------

    def poll_frame(self) -> Frame | None:
        """Return a complete frame if one is buffered or readable now, else None.

        Call until it returns None after the socket polled readable: TLS may hold
        decrypted bytes that poll() cannot see.
        """
        while True:
            frame = self._frame_from_buffer()
            if frame is not None:
                return frame
            try:
                if self._receive_more() == 0:
                    raise self._eof()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return None

    def queue(self, frame_type: FrameType, payload: bytes | memoryview = b"") -> None:
        self._out += HEADER.pack(frame_type, len(payload))
        self._out += payload

    def queue_json(self, frame_type: FrameType, obj: dict[str, Any]) -> None:
        self.queue(frame_type, encode_json(obj))

    @property
    def buffered(self) -> int:
        """Received bytes not yet returned as frames (TLS may hold more: sock.pending())."""
        pending = self.sock.pending() if isinstance(self.sock, ssl.SSLSocket) else 0
        return self._end - self._start + pending

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
            self.bytes_sent += n
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
