"""The helper's inside: the accept loop with its expiry, the pool, and one relaying
session per client (radmin/mux/helper.py explains the design and its guarantees)."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
import time

from radmin.client.connection import Connection, connect
from radmin.client.options import ClientOptions
from radmin.errors import (
    Cancelled,
    ConnectionClosed,
    PeerSilent,
    ProtocolError,
    RadminError,
    TransportError,
)
from radmin.hosts import Target
from radmin.mux import MUX_FIELD
from radmin.protocol import HIGH_WATER, FrameSocket, FrameType, wait_ready

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from radmin.identity import ClientHome
    from radmin.mux import MuxDir

_UCRED = struct.Struct("3i")
# A daemon that does not say its idle timeout (older than the field) is assumed to close
# idle connections after this long.
ASSUMED_DAEMON_IDLE_S = 30.0
OPEN_WAIT_S = 10.0  # a client has this long to send its OPEN
DRAIN_S = 5.0  # frames still queued for a peer that is leaving get this long


def reuse_limit(daemon_idle_s: float) -> float:
    """How long a pooled connection may have been idle and still be handed out: the
    daemon's idle timeout minus a margin (20%, at least 0.5 s, at most 5 s), so it is
    not closed by the daemon while a client's first REQUEST is on its way."""
    return daemon_idle_s - min(5.0, max(0.5, 0.2 * daemon_idle_s))


class Pooled:
    """A daemon connection between sessions: what it is, and since when it is idle."""

    def __init__(self, conn: Connection, hello: dict[str, Any]):
        self.conn = conn
        self.hello = hello
        announced = hello.get("idle_timeout")
        daemon_idle = announced if isinstance(announced, int | float) else ASSUMED_DAEMON_IDLE_S
        self.limit = reuse_limit(float(daemon_idle))
        self.idle_since = time.monotonic()

    def fresh(self, now: float) -> bool:
        return now - self.idle_since < self.limit

    def quiet(self) -> bool:
        """Nothing but heartbeats arrived while it waited: no EOF, no ERROR."""
        frames = self.conn.frames
        try:
            frames.sock.setblocking(False)
            return frames.poll_frame() is None
        except (OSError, RadminError):
            return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()


PoolKey = tuple[str, int, "str | None", bool, float]


class Pool:
    """Idle daemon connections by (host, port, pinned fingerprint, strict, heartbeat)."""

    def __init__(self) -> None:
        self._idle: dict[PoolKey, list[Pooled]] = {}
        self._lock = threading.Lock()

    def take(self, key: PoolKey) -> Pooled | None:
        """The freshest usable connection for `key`; stale or noisy ones are closed."""
        while True:
            with self._lock:
                entries = self._idle.get(key)
                if not entries:
                    return None
                entry = entries.pop()
            if entry.fresh(time.monotonic()) and entry.quiet():
                return entry
            entry.close()

    def give_back(self, key: PoolKey, entry: Pooled) -> None:
        entry.idle_since = time.monotonic()
        with self._lock:
            self._idle.setdefault(key, []).append(entry)

    def prune(self) -> None:
        """Close connections the daemon is about to close anyway."""
        now = time.monotonic()
        with self._lock:
            stale = [e for entries in self._idle.values() for e in entries if not e.fresh(now)]
            for key in list(self._idle):
                self._idle[key] = [e for e in self._idle[key] if e.fresh(now)]
                if not self._idle[key]:
                    del self._idle[key]
        for entry in stale:
            entry.close()

    def count(self) -> int:
        with self._lock:
            return sum(len(entries) for entries in self._idle.values())

    def close_all(self) -> None:
        with self._lock:
            entries = [e for group in self._idle.values() for e in group]
            self._idle.clear()
        for entry in entries:
            entry.close()


class Helper:
    """The accept loop: sessions in threads, expiry and stop decided here only."""

    def __init__(
        self,
        home: ClientHome,
        mux: MuxDir,
        listener: socket.socket,
        lock_fd: int,
        idle_timeout: float,
        log: Any,
    ):
        self.home = home
        self.mux = mux
        self.listener = listener
        self.lock_fd = lock_fd
        self.idle_timeout = idle_timeout
        self.log = log
        self.pool = Pool()
        self.sessions = 0
        self.last_end = time.monotonic()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.stop_reason: str | None = None

    # -- the loop --------------------------------------------------------------------------

    def serve(self) -> None:
        self._handle_signals()
        listener = self.listener.fileno()
        while self.stop_reason is None:
            ready = wait_ready({listener: select.POLLIN, self._wake_r: select.POLLIN}, 0.5)
            if listener in ready:
                self._accept()
            self.pool.prune()
            if self._idle_for() >= self.idle_timeout:
                self.stop_reason = "idle"
        self._close_listener()
        for thread in list(self._threads):
            thread.join()
        self.pool.close_all()
        self.log.info("mux_stopped", reason=self.stop_reason)

    def _idle_for(self) -> float:
        with self._lock:
            return 0.0 if self.sessions else time.monotonic() - self.last_end

    def stop(self, reason: str) -> None:
        """Ask the loop to end (from a session thread or a signal handler)."""
        self.stop_reason = self.stop_reason or reason
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _handle_signals(self) -> None:
        import signal

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda n, _f: self.stop(signal.Signals(n).name))

    def _close_listener(self) -> None:
        """The expiry with no race: the name goes first, then what was queued on the
        listener is served, then it closes; the lock is released with the name, so a new
        helper may start while accepted sessions finish here."""
        self.mux.unlink_sock()
        self.listener.setblocking(False)
        while self._accept():
            pass
        self.listener.close()
        os.close(self.lock_fd)

    def _accept(self) -> bool:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:  # out of descriptors: the client goes direct
            self.log.warning("accept_failed", error=exc.strerror)
            return False
        sock.setblocking(True)
        uid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        if uid[1] != os.getuid():
            self.log.warning("peer_refused", peer_pid=uid[0], peer_uid=uid[1])
            sock.close()
            return True
        with self._lock:
            self.sessions += 1
        thread = threading.Thread(target=self._session, args=(sock,), daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return True

    def _session(self, sock: socket.socket) -> None:
        try:
            Session(self, sock).run()
        except Exception:
            self.log.exception("session_failed")
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with self._lock:
                self.sessions -= 1
                self.last_end = time.monotonic()

    def status(self) -> dict[str, Any]:
        with self._lock:
            sessions = self.sessions - 1  # not counting the asker
        return {
            MUX_FIELD: "status",
            "pid": os.getpid(),
            "pooled": self.pool.count(),
            "sessions": sessions,
            "idle_timeout": self.idle_timeout,
        }


class Session:
    """One client on the Unix socket: its first HELLO says what it wants."""

    def __init__(self, helper: Helper, sock: socket.socket):
        self.helper = helper
        self.client = FrameSocket(sock)

    def run(self) -> None:
        try:
            _, first = self.client.recv_json(
                FrameType.HELLO, deadline=time.monotonic() + OPEN_WAIT_S
            )
        except (OSError, ConnectionClosed, ProtocolError):
            return
        kind = first.get(MUX_FIELD)
        if kind == "status":
            self.client.send_json(FrameType.HELLO, self.helper.status())
        elif kind == "stop":
            self.client.send_json(FrameType.HELLO, {MUX_FIELD: "stopping", "pid": os.getpid()})
            self.helper.stop("stop requested")
        elif kind == "open":
            self._open(first)

    def _open(self, message: dict[str, Any]) -> None:
        try:
            key, target, heartbeat = _parse_open(message)
        except (KeyError, TypeError, ValueError) as exc:
            self._refuse(TransportError(f"bad OPEN for the helper: {exc}"))
            return
        warnings: list[str] = []
        entry = self.helper.pool.take(key)
        reused = entry is not None
        started = time.monotonic()
        if entry is None:
            try:
                entry = self._connect(target, message, heartbeat, warnings)
            except (RadminError, OSError) as exc:
                self._refuse(exc)
                return
        self.helper.log.info("session", host=target.host_port, reused=reused)
        hello = dict(entry.hello)
        hello.pop("heartbeat", None)
        if heartbeat is not None:
            hello["heartbeat"] = heartbeat
        answer = {
            MUX_FIELD: "ok",
            "fingerprint": entry.conn.server_fingerprint,
            "connect_s": round(time.monotonic() - started, 6),
            "reused": reused,
            "warnings": warnings,
        }
        try:
            self.client.send_json(FrameType.HELLO, answer)
            self.client.send_json(FrameType.HELLO, hello)
        except (OSError, RadminError):  # the client left first: nothing was sent onwards
            self.helper.pool.give_back(key, entry)
            return
        if heartbeat is not None:
            self.client.start_heartbeat(heartbeat)
        daemon = entry.conn.frames
        if daemon.heartbeat_interval is not None:
            daemon.start_heartbeat(daemon.heartbeat_interval)  # its clocks restart now
        if Relay(self.client, daemon).run():
            self.helper.pool.give_back(key, entry)
        else:
            entry.close()

    def _connect(
        self,
        target: Target,
        message: dict[str, Any],
        heartbeat: float | None,
        warnings: list[str],
    ) -> Pooled:
        """radmin's own connect, as a direct client would (fresh known_hosts and identity
        each time), and the daemon's HELLO awaited: authorized before handed out."""
        options = ClientOptions(
            self.helper.home,
            strict_host_key=bool(message.get("strict_host_key")),
            host_fingerprint=message.get("host_fingerprint") or None,
            connect_timeout=float(message["connect_timeout"]),
            warn=warnings.append,
            heartbeat_interval=heartbeat,
        )
        conn = connect(target, options)
        try:
            hello = conn.wait_hello()
        except BaseException:
            conn.close()
            raise
        return Pooled(conn, hello)

    def _refuse(self, exc: BaseException) -> None:
        """The connect's failure, named by its type, for the client to raise as such."""
        self.helper.log.info("open_failed", error=str(exc), kind=type(exc).__name__)
        with contextlib.suppress(OSError, RadminError):
            self.client.send_json(
                FrameType.HELLO,
                {MUX_FIELD: "error", "error": type(exc).__name__, "message": str(exc)},
            )


def _parse_open(message: dict[str, Any]) -> tuple[PoolKey, Target, float | None]:
    host, port = message["host"], message["port"]
    if not isinstance(host, str) or not host or isinstance(port, bool):
        raise ValueError("host must be a name and port a number")
    port = int(port)
    label = str(message.get("label") or host)
    fingerprint = message.get("host_fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise ValueError("host_fingerprint must be a string")
    beat = message.get("heartbeat")
    heartbeat = (
        float(beat) if isinstance(beat, int | float) and not isinstance(beat, bool) else None
    )
    float(message["connect_timeout"])
    key: PoolKey = (host, port, fingerprint, bool(message.get("strict_host_key")), heartbeat or 0.0)
    return key, Target(label, host, port), heartbeat


class Relay:
    """Frames both ways between the client and its daemon connection until one leaves.

    A non-blocking pump over both FrameSockets (one thread touches each TLS object), with
    heartbeats kept on each hop and back-pressure: a side whose peer has HIGH_WATER bytes
    queued is not read. `run()` is True when the daemon connection may be pooled: the
    client left between requests and the daemon said nothing out of turn.
    """

    def __init__(self, client: FrameSocket, daemon: FrameSocket):
        self.client = client
        self.daemon = daemon
        self.in_request = False
        self.daemon_ok = True
        client.sock.setblocking(False)
        daemon.sock.setblocking(False)

    def run(self) -> bool:
        try:
            self._pump()
        except _ClientLeft:
            return self.daemon_ok and not self.in_request and self._drain(self.daemon)
        except _DaemonSilent:
            self.daemon_ok = False
            self._go_silent()
        except _DaemonLeft:
            self.daemon_ok = False
            self._drain(self.client)
        return False

    def _go_silent(self) -> None:
        """The daemon fell silent mid-request (frozen, cut off): fall silent in turn, so
        the client judges it by its own heartbeats and says what a direct client says
        ("no answer from HOST for N s while PHASE"), then closes. Bounded: the client's
        three intervals, and a second to spare."""
        dead_after = self.client.dead_after
        if dead_after is None:
            return
        deadline = time.monotonic() + dead_after + 1.0
        sock = self.client.sock
        while (left := deadline - time.monotonic()) > 0:
            if not wait_ready({sock.fileno(): select.POLLIN}, left):
                return
            try:
                if not sock.recv(64 * 1024):  # its heartbeats are dropped unread
                    return
            except BlockingIOError:
                continue
            except OSError:
                return

    def _pump(self) -> None:
        client, daemon = self.client, self.daemon
        while True:
            # Silence is judged only during a request: between them either side may rest.
            client.watch_peer = daemon.watch_peer = self.in_request
            now = time.monotonic()
            self._guard(_ClientLeft, client.keep_alive, now)
            try:
                daemon.keep_alive(now)
            except PeerSilent as exc:
                raise _DaemonSilent(str(exc)) from None
            except (OSError, RadminError) as exc:
                raise _DaemonLeft(str(exc)) from None
            self._guard(_ClientLeft, client.flush)
            self._guard(_DaemonLeft, daemon.flush)
            moved = self._move(client, daemon, _ClientLeft, self._from_client)
            moved |= self._move(daemon, client, _DaemonLeft, self._from_daemon)
            if moved:
                continue
            self._wait()

    @staticmethod
    def _guard(kind: type[Exception], call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except (OSError, RadminError) as exc:
            raise kind(str(exc)) from None

    def _move(self, source: FrameSocket, sink: FrameSocket, leaving: type, handle: Any) -> bool:
        """Relay what `source` has ready, while `sink` has room; True if anything moved."""
        moved = False
        while sink.queued < HIGH_WATER:
            frame = self._guard(leaving, source.poll_frame)
            if frame is None:
                return moved
            handle(frame.type)
            sink.queue(frame.type, frame.payload)
            moved = True
        return moved

    def _from_client(self, frame_type: FrameType) -> None:
        if frame_type is FrameType.REQUEST:
            self.in_request = True
        elif frame_type is FrameType.HELLO:
            raise _ClientLeft("a second HELLO from the client")

    def _from_daemon(self, frame_type: FrameType) -> None:
        if frame_type is FrameType.RESULT:
            self.in_request = False
        elif frame_type in (FrameType.ERROR, FrameType.HELLO):
            self.daemon_ok = False  # the daemon closes after an ERROR: never pool it

    def _wait(self) -> None:
        client, daemon = self.client, self.daemon
        interest = {
            client.sock.fileno(): (select.POLLIN if daemon.queued < HIGH_WATER else 0)
            | (select.POLLOUT if client.queued else 0),
            daemon.sock.fileno(): (select.POLLIN if client.queued < HIGH_WATER else 0)
            | (select.POLLOUT if daemon.queued else 0),
        }
        waits = [w for w in (client.heartbeat_wait(), daemon.heartbeat_wait()) if w is not None]
        # A frame already buffered on one side: no wait, unless its way on is full (then
        # the other side's POLLOUT is what to wait for; no spinning).
        if (daemon.buffered and client.queued < HIGH_WATER) or (
            client.buffered and daemon.queued < HIGH_WATER
        ):
            waits.append(0.0)
        wait_ready(interest, min(waits) if waits else None)

    @staticmethod
    def _drain(frames: FrameSocket) -> bool:
        """Send what is queued for a peer (a RESULT, an ERROR) before we let go."""
        deadline = time.monotonic() + DRAIN_S
        try:
            while not frames.flush():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                wait_ready({frames.sock.fileno(): select.POLLOUT}, left)
        except (OSError, RadminError, Cancelled):
            return False
        return True


class _ClientLeft(Exception):
    """The client closed, broke the protocol or fell silent."""


class _DaemonLeft(Exception):
    """The daemon connection closed or broke."""


class _DaemonSilent(_DaemonLeft):
    """Nothing from the daemon for three heartbeat intervals during a request."""
