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

Heartbeats (once both HELLOs announced an interval, `start_heartbeat`): a side that has
sent nothing for one interval sends an empty HEARTBEAT frame; a side that has received
nothing at all -- not a byte -- for MISSED_HEARTBEATS intervals raises PeerSilent: the
peer is dead, cut off or frozen. Both styles get this here, in the frame layer, so every
operation has it: the blocking calls wait with poll() and send the heartbeats
themselves; a pump calls `keep_alive()` each turn and bounds its poll by
`heartbeat_wait()`; work that leaves the socket alone for long (hashing a large file,
fsync) runs inside `keepalive()`, whose helper thread only ever writes HEARTBEATs while
the owner does not touch the socket. Received HEARTBEATs are dropped where frames are
parsed: no caller ever sees one, and they reset no idle or stall timeout (those count
frames, the heartbeat counts bytes).
"""

from __future__ import annotations

import contextlib
import json
import math
import select
import socket
import ssl
import struct
import threading
import time
from enum import IntEnum

from radmin.errors import (
    Cancelled,
    ConnectionClosed,
    FrameTimeout,
    PeerSilent,
    ProtocolError,
    UnsafeMessage,
)

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
# Heartbeats: the default interval (limits.heartbeat_interval, --heartbeat-interval),
# the shortest a peer may ask for (a client cannot make the daemon send a frame every
# microsecond), and how many intervals of silence mean the peer is dead.
HEARTBEAT_INTERVAL = 10.0
MIN_HEARTBEAT_INTERVAL = 0.1
MISSED_HEARTBEATS = 3
_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError)
_SOCKET_TIMEOUT = -1.0  # _send_all: wait as long as the socket's own timeout says


class FrameType(IntEnum):
    HELLO = 0x01  # JSON, both ways, first frame each way
    REQUEST = 0x02  # JSON, client -> daemon: starts one operation
    PROCEED = 0x03  # JSON, daemon -> client: request accepted, stream data now
    RESULT = 0x04  # JSON, daemon -> client: ends one operation (success or refusal)
    ERROR = 0x05  # JSON, either way: protocol error, the sender closes the connection
    CANCEL = 0x06  # JSON, client -> daemon: abort the running operation
    WINDOW = 0x07  # JSON, daemon -> client: this many more STDIN bytes may be sent
    DIGEST = 0x08  # JSON, client -> daemon: the SHA-256 of a put's content
    HEARTBEAT = 0x09  # empty, both ways after the hello: "still here"; dropped on receipt
    # 0x0A is kept free (get needed no frame of its own).
    RESIZE = 0x0B  # JSON, client -> daemon: a shell's new window size {rows, cols}
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
        FrameType.RESIZE,
    }
)
_KNOWN_TYPES = {int(t): t for t in FrameType}


def max_payload(frame_type: FrameType) -> int:
    """Largest payload a frame of this type may announce."""
    if frame_type in CONTROL_TYPES:
        return MAX_CONTROL
    if frame_type in (FrameType.EOF, FrameType.HEARTBEAT):
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


def heartbeat_interval(announced: Any, own: float) -> float | None:
    """The interval a connection uses: the shorter of ours and the peer's HELLO
    `heartbeat` (each side must hear from the other that often), never below
    MIN_HEARTBEAT_INTERVAL; None when the peer announced none (it sends no heartbeats, so
    its silence proves nothing)."""
    if isinstance(announced, bool) or not isinstance(announced, int | float):
        return None
    if not math.isfinite(announced) or announced <= 0:
        return None
    return max(MIN_HEARTBEAT_INTERVAL, min(float(announced), own))


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


def _record_reader(sock: socket.socket) -> Any:
    """`read(nbytes, view) -> bytes read` for bulk receives: on a TLS socket the SSL
    object's own read (one C call per record, the socket's timeout honoured there; its
    ragged EOF raises SSLEOFError where SSLSocket.recv_into would return 0); on a plain
    socket, recv_into."""
    sslobj = getattr(sock, "_sslobj", None) if isinstance(sock, ssl.SSLSocket) else None
    if sslobj is not None:
        return sslobj.read
    return lambda nbytes, view: sock.recv_into(view, nbytes)


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

    def __init__(
        self,
        sock: socket.socket,
        frame_timeout: float = FRAME_TIMEOUT,
        initial_buffer: int = _INITIAL_BUFFER,
    ):
        self.sock = sock
        self.frame_timeout = frame_timeout
        # Small until a large frame arrives: an idle connection costs 64 KiB, not 1 MiB
        # (a client fanning out to 1,000 hosts asks for less: see radmin.client).
        self._buf = bytearray(initial_buffer)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._out = bytearray()
        # When the frame being received must be complete; None while none has begun.
        self._frame_deadline: float | None = None
        self.frames_received = 0  # HEARTBEATs are not counted: they are not the stream
        self.frames_sent = 0
        # -- heartbeats (see the module docstring) --
        self.heartbeat_interval: float | None = None  # None: off (before/without hellos)
        self.watch_peer = True  # silence is fatal only while True (the daemon's idle wait
        # between requests is bounded by limits.idle_timeout instead)
        self.activity = "waiting for the peer"  # for PeerSilent: "uploading", ...
        self.cancel_fd: int | None = None  # blocking waits raise Cancelled once readable
        now = time.monotonic()
        self.last_received = now  # any byte, heartbeats included
        self.last_sent = now
        self._send_lock = threading.Lock()
        self._peer_eof = False
        self._broken: BaseException | None = None  # a keepalive thread's failure

    # -- heartbeats ----------------------------------------------------------------------

    def start_heartbeat(self, interval: float) -> None:
        """Both sides announced heartbeats: from now on send and expect them."""
        self.heartbeat_interval = interval
        self.last_received = self.last_sent = time.monotonic()

    @property
    def dead_after(self) -> float | None:
        """Seconds of silence after which the peer counts as dead (None: never)."""
        if self.heartbeat_interval is None:
            return None
        return MISSED_HEARTBEATS * self.heartbeat_interval

    def _check_peer(self, now: float) -> None:
        if self._broken is not None:
            raise self._broken
        dead_after = self.dead_after
        if dead_after is not None and self.watch_peer and now - self.last_received >= dead_after:
            if self.sock_pending() or wait_ready({self.sock.fileno(): select.POLLIN}, 0):
                # Bytes wait unread: the peer lived while we were not reading (an API
                # user's connection idle between requests).
                self.last_received = now
                return
            raise PeerSilent(round(dead_after, 3), self.activity)

    def _heartbeat_due(self, now: float) -> bool:
        interval = self.heartbeat_interval
        return interval is not None and now - self.last_sent >= interval

    def heartbeat_wait(self, now: float | None = None) -> float | None:
        """Seconds until a heartbeat is due or the peer's silence becomes fatal: the
        longest a poll loop may sleep (None: heartbeats are off)."""
        interval = self.heartbeat_interval
        if interval is None:
            return None
        now = time.monotonic() if now is None else now
        due = self.last_sent + interval
        dead_after = self.dead_after
        if self.watch_peer and dead_after is not None:
            due = min(due, self.last_received + dead_after)
        return max(0.0, due - now)

    def keep_alive(self, now: float | None = None) -> None:
        """For pump loops: raise PeerSilent if the peer has been silent too long, and
        queue a HEARTBEAT if we have sent nothing for an interval (not behind frames
        still queued: those are what the peer is not reading)."""
        now = time.monotonic() if now is None else now
        self._check_peer(now)
        if self._heartbeat_due(now) and not self._out:
            self._out += HEADER.pack(FrameType.HEARTBEAT, 0)

    @contextlib.contextmanager
    def keepalive(self) -> Any:
        """Heartbeats from a helper thread while this thread does long work that leaves
        the socket alone (hashing a large file, fsync): the peer must not take a busy
        daemon for a dead one. The helper only writes, under the send lock, and has
        finished before this returns."""
        if self.heartbeat_interval is None:
            yield
            return
        stop = threading.Event()
        helper = threading.Thread(
            target=self._beat_until, args=(stop,), daemon=True, name="heartbeat"
        )
        helper.start()
        try:
            yield
        finally:
            stop.set()
            helper.join()

    def _beat_until(self, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_wait() or 0.0):
            if not self._heartbeat_due(time.monotonic()):
                continue
            try:
                with self._send_lock:
                    self._send_all(
                        HEADER.pack(FrameType.HEARTBEAT, 0), absorb=False, timeout=self.dead_after
                    )
            except (OSError, ConnectionClosed, Cancelled) as exc:
                self._broken = exc  # the owner's next wait raises it
                return

    def _send_heartbeat(self) -> None:
        with self._send_lock:
            # No limit of its own: the peer's silence (checked while waiting) bounds it.
            self._send_all(HEADER.pack(FrameType.HEARTBEAT, 0), timeout=None)

    # -- parsing -----------------------------------------------------------------------

    def _frame_from_buffer(self) -> Frame | None:
        while True:
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
            if frame_type is FrameType.HEARTBEAT:
                continue  # life is counted by bytes (last_received); nobody sees these
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
        if n:
            self._end += n
            self.last_received = time.monotonic()
        return n

    def _has_room(self) -> bool:
        return self._end - self._start < len(self._buf)

    def _absorb(self) -> None:
        """Read what has arrived without blocking (the socket is non-blocking here):
        while we wait to send, the peer's heartbeats and early answers are taken in, so
        its life is seen and it never blocks on us."""
        try:
            if self._receive_more() == 0:
                self._peer_eof = True
        except _WANT:
            pass

    def _eof(self) -> ConnectionClosed:
        if self._end > self._start:
            return ConnectionClosed(
                "connection closed in the middle of a frame (truncated)", truncated=True
            )
        return ConnectionClosed("connection closed by peer")

    # -- blocking style ----------------------------------------------------------------

    def recv_frame(self, deadline: float | None = None) -> Frame:
        """Block until one whole frame (never a HEARTBEAT) has arrived.

        Bounds: the socket's timeout (the caller's idle limit), counted from this call
        until a frame's first byte -- heartbeats do not reset it; `frame_timeout` once the
        frame's first byte is here; `deadline` (a time.monotonic() value, e.g. the end of
        the handshake) for the whole call; and, with heartbeats on, the peer's silence.
        A peer dripping a byte at a time cannot stretch them.
        """
        frame = self._frame_from_buffer()
        if frame is not None:
            return frame
        if not self._watching:
            return self._recv_plain(deadline)
        idle = self.sock.gettimeout()
        idle_deadline = None if idle is None else time.monotonic() + idle
        try:
            while True:
                limit = deadline
                if idle_deadline is not None and self._end == self._start:
                    limit = idle_deadline if limit is None else min(limit, idle_deadline)
                if self._receive_waiting(limit) == 0:
                    raise self._eof()
                frame = self._frame_from_buffer()
                if frame is not None:
                    return frame
        finally:
            self.sock.settimeout(idle)

    @property
    def _watching(self) -> bool:
        """Heartbeats or a cancel fd to watch: waits go through poll() in Python. Else
        the socket's own blocking wait (its timeout) is enough, and cheaper."""
        return self.heartbeat_interval is not None or self.cancel_fd is not None

    def _recv_plain(self, deadline: float | None) -> Frame:
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

    def _receive_waiting(self, limit: float | None) -> int:
        """One recv, its wait cut into slices at the next timer: heartbeats sent and the
        peer watched meanwhile, Ctrl-C honoured (cancel_fd). TimeoutError at `limit`,
        FrameTimeout at the frame's deadline. Each slice is the socket's own timed wait
        (no extra system calls while data flows)."""
        fd = self.sock.fileno()
        while True:
            now = time.monotonic()
            self._check_frame_deadline(now)
            self._check_peer(now)
            if self._heartbeat_due(now):
                self._send_heartbeat()
            if limit is not None and now >= limit:
                raise TimeoutError("no complete frame before the deadline")
            timers = [t for t in (limit, self._frame_deadline) if t is not None]
            beat = self.heartbeat_wait(now)
            if beat is not None:
                timers.append(now + beat)
            wait = max(0.001, min(timers) - now) if timers else None
            if self.cancel_fd is not None and not self.sock_pending():
                ready = wait_ready({fd: select.POLLIN, self.cancel_fd: select.POLLIN}, wait)
                if self.cancel_fd in ready:
                    raise Cancelled("cancelled")
                if not ready:
                    continue
            self.sock.settimeout(wait)
            try:
                return self._receive_more()
            except TimeoutError:
                continue

    def sock_pending(self) -> int:
        """Decrypted bytes TLS holds that poll() cannot see."""
        return self.sock.pending() if isinstance(self.sock, ssl.SSLSocket) else 0

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
        idle = self.sock.gettimeout()
        idle_deadline = None if idle is None else time.monotonic() + idle
        try:
            while True:
                available = self._end - self._start
                if available >= HEADER.size:
                    frame_type, length = parse_header(
                        self._view[self._start : self._start + HEADER.size]
                    )
                    if frame_type is data_type:
                        break
                    frame = self._frame_from_buffer()  # HEARTBEATs are dropped here
                    if frame is not None:
                        return frame
                    if self._end - self._start < available:
                        continue  # a HEARTBEAT went: look at what follows it
                else:
                    self._frame_begun(available)
                if self._receive_between_frames(deadline, idle_deadline) == 0:
                    raise self._eof()
        finally:
            self.sock.settimeout(idle)
        if self._watching and self._heartbeat_due(time.monotonic()):
            self._send_heartbeat()  # a receiver that only receives still says it is here
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

    def _receive_between_frames(self, deadline: float | None, idle_deadline: float | None) -> int:
        """One recv while waiting for a frame's header: with heartbeats, through the
        watched wait (beats sent, the peer's silence judged, Ctrl-C), as recv_frame."""
        if not self._watching:
            return self._receive_before(deadline)
        limit = deadline
        if idle_deadline is not None and self._end == self._start:
            limit = idle_deadline if limit is None else min(limit, idle_deadline)
        return self._receive_waiting(limit)

    def _receive_payload(self, view: memoryview, deadline: float | None) -> None:
        """recv_into `view` until it is full: the socket's timeout for each wait, and the
        frame's deadline and the caller's for the whole.

        This loop runs once per TLS record (16 KiB: 65,536 times per GiB), so it does the
        least it can: the record is read through the SSL object itself (SSLSocket's
        recv_into adds three Python calls around the same C read), the clock is read
        once per record, and settimeout() -- a system call, ioctl FIONBIO -- only when a
        deadline has come more than _TIMEOUT_SLACK closer than the socket's timeout, so
        a wait overshoots a deadline by at most that much. Waiting itself stays in C (the
        socket's timeout): no poll() while data flows."""
        limit = self._frame_deadline
        if limit is None or (deadline is not None and deadline < limit):
            limit = deadline
        idle = self.sock.gettimeout()
        # With heartbeats, no single wait may outlast an interval: a peer frozen in the
        # middle of a frame is judged by its silence, and our own beats still go out.
        beat = self.heartbeat_interval
        if beat is not None and (idle is None or beat < idle):
            self.sock.settimeout(beat)
        timeout = self.sock.gettimeout()
        read = _record_reader(self.sock)
        monotonic = time.monotonic
        try:
            got, total = 0, len(view)
            now = monotonic()
            while got < total:
                if limit is not None:
                    remaining = limit - now
                    if remaining <= 0:
                        self._check_frame_deadline(now)
                        raise TimeoutError("no complete frame before the deadline")
                    if timeout is None or remaining < timeout - _TIMEOUT_SLACK:
                        timeout = remaining
                        self.sock.settimeout(timeout)
                try:
                    n = read(total - got, view[got:])
                except ssl.SSLEOFError:
                    n = 0  # a ragged EOF: closed without close_notify
                except TimeoutError:
                    now = monotonic()
                    if limit is not None and timeout != idle:
                        self._check_frame_deadline(now)
                    if beat is None:
                        raise
                    self._check_peer(now)  # PeerSilent after three intervals
                    if self._heartbeat_due(now):
                        self._send_heartbeat()
                    continue
                if n == 0:
                    raise ConnectionClosed(
                        "connection closed in the middle of a frame (truncated)", truncated=True
                    )
                now = self.last_received = monotonic()
                got += n
        finally:
            if self.sock.gettimeout() != idle:
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
        with self._send_lock:
            if len(payload) <= 16 * 1024 and self._watching:
                self._send_all(header + bytes(payload))
            elif len(payload) <= 16 * 1024:
                self.sock.sendall(header + bytes(payload))
            elif self._watching:  # bulk data is not copied just to glue 5 bytes on
                self._send_all(header, payload)  # one blocking-mode switch for both
            else:
                self.sock.sendall(header)
                self.sock.sendall(payload)
        self.frames_sent += 1

    def _send_all(
        self,
        *parts: bytes | memoryview,
        absorb: bool = True,
        timeout: float | None = _SOCKET_TIMEOUT,
    ) -> None:
        """sendall() of each part in turn, waiting with poll(): the socket's timeout (or
        `timeout`) bounds a wait without progress, as sendall's does; meanwhile (with
        `absorb`) what the peer sends is read into the buffer and its silence watched.
        Call with the send lock held."""
        idle = self.sock.gettimeout()
        limit_s = idle if timeout == _SOCKET_TIMEOUT else timeout
        self.sock.setblocking(False)
        try:
            progress = time.monotonic()
            for data in parts:
                view = memoryview(data).cast("B")
                while view:
                    try:
                        # A retried TLS write must see the same leading bytes: same slice.
                        n = self.sock.send(view[:_SEND_CHUNK])
                    except _WANT:
                        n = 0
                    if n:
                        view = view[n:]
                        progress = self.last_sent = time.monotonic()
                        continue
                    self._wait_writable(None if limit_s is None else progress + limit_s, absorb)
        finally:
            self.sock.settimeout(idle)

    def _wait_writable(self, limit: float | None, absorb: bool) -> None:
        now = time.monotonic()
        if absorb:
            self._check_peer(now)
        if limit is not None and now >= limit:
            raise TimeoutError("the peer took nothing for the socket's timeout")
        fd = self.sock.fileno()
        reading = absorb and not self._peer_eof and self._has_room()
        interest = {fd: select.POLLOUT | (select.POLLIN if reading else 0)}
        if absorb and self.cancel_fd is not None:
            interest[self.cancel_fd] = select.POLLIN
        timers = [] if limit is None else [limit]
        beat = self.heartbeat_wait(now) if absorb else None
        if beat is not None:
            timers.append(now + beat)
        ready = wait_ready(interest, min(timers) - now if timers else None)
        if absorb and self.cancel_fd is not None and self.cancel_fd in ready:
            raise Cancelled("cancelled")
        if reading and ready.get(fd, 0) & ~select.POLLOUT:
            self._absorb()

    def send_json(self, frame_type: FrameType, obj: dict[str, Any]) -> None:
        self.send_frame(frame_type, encode_json(obj))

    def frame_pending(self) -> bool:
        """Has the peer sent a frame (not a heartbeat) or closed, without blocking? A
        sender asks between chunks whether the receiver answered early (disk full)."""
        if not self._peer_eof and self._has_room():
            idle = self.sock.gettimeout()
            self.sock.setblocking(False)
            try:
                self._absorb()
            finally:
                self.sock.settimeout(idle)
        self._drop_heartbeats()
        pending = self.sock.pending() if isinstance(self.sock, ssl.SSLSocket) else 0
        return self._peer_eof or self._end > self._start or bool(pending)

    def _drop_heartbeats(self) -> None:
        while self._end - self._start >= HEADER.size:
            frame_type, length = parse_header(self._view[self._start : self._start + HEADER.size])
            if frame_type is not FrameType.HEARTBEAT:
                return
            self._start += HEADER.size + length

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
            except _WANT:
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
        """Send what the socket takes without blocking; True once nothing is queued.
        A HEARTBEAT goes along when one is due: a pump that flushes each turn beats
        even if it forgets keep_alive() (it still needs heartbeat_wait() for its poll)."""
        if not self._out and self._heartbeat_due(time.monotonic()):
            self._out += HEADER.pack(FrameType.HEARTBEAT, 0)
        with self._send_lock:
            while self._out:
                try:
                    # A copy of a constant-size prefix: a retried TLS write must see the
                    # same leading bytes, and a bytearray cannot shrink while viewed.
                    n = self.sock.send(self._out[:_SEND_CHUNK])
                except _WANT:
                    return False
                del self._out[:n]
                self.last_sent = time.monotonic()
            return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
