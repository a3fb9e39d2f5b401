"""The daemon's network core: accept, authenticate, dispatch.

    TCP accept -> verify_request (max_connections, max_startups, in the accept loop)
      -> process_request: a thread (or, failing that, the slot back and a close)
      -> Session.handle: TLS 1.3 handshake under a deadline, fingerprint -> client name
      -> hello -> loop { REQUEST -> OPERATIONS[op] -> RESULT } -> log -> close

`RadminServer` is a `ThreadingTCPServer` used as it was meant to be subclassed: hooks
overridden, the loop untouched. One server per `listen:` address; they share a
`DaemonState` holding the current config (swapped whole on reload).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import re
import select
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from radmin import PROTOCOL_VERSION, RUN_ID_PATTERN, __version__
from radmin.addresses import format_host_port
from radmin.config import Config
from radmin.errors import (
    BadRequest,
    ConnectionClosed,
    NotAuthorized,
    ProtocolError,
    RadminError,
    RequestError,
    UnsafeMessage,
)
from radmin.identity import fingerprint
from radmin.log import get_logger
from radmin.ops import Outcome, Request
from radmin.ops import exec as exec_op
from radmin.ops import get as get_op
from radmin.ops import ping as ping_op
from radmin.ops import put as put_op
from radmin.ops import shell as shell_op
from radmin.protocol import Frame, FrameSocket, FrameType, heartbeat_interval, wait_ready
from radmin.running import RunningCommands
from radmin.startups import LogThrottle, StartupLimits, Startups, source_key
from radmin.tls import handshake, server_context
from radmin.usage import Usage

SUPPORTED_PROTOCOLS = (PROTOCOL_VERSION,)
RUN_ID = re.compile(RUN_ID_PATTERN)

# The only operations a client can ask for: an explicit table, never a name lookup.
OPERATIONS: dict[str, Callable[[Request], Outcome]] = {
    "ping": ping_op.run,
    "exec": exec_op.run,
    "put": put_op.run,
    "get": get_op.run,
    "shell": shell_op.run,
}


def register_operation(name: str, run: Callable[[Request], Outcome]) -> None:
    OPERATIONS[name] = run


class DaemonState:
    """What every connection shares: the current config and TLS context, counters."""

    def __init__(self, config: Config):
        self.config = config
        self.tls = server_context(
            config.key, config.cert, [c.cert_pem for c in config.clients.values()]
        )
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.connections = 0
        self.requests_served = 0
        self.sessions: set[Session] = set()
        self._ids = itertools.count(1)
        self.log = get_logger()
        self.usage = Usage()  # what each client holds (limits.per_client)
        self.commands = RunningCommands()  # every command running (journal, stop)
        self.startups = Startups()  # unauthenticated connections (limits.max_startups)
        self.throttled = LogThrottle(self.log)  # refusals and failed handshakes

    def apply(self, config: Config) -> None:
        """Swap in a validated config; requests already running keep their snapshot."""
        tls = server_context(config.key, config.cert, [c.cert_pem for c in config.clients.values()])
        with self._lock:
            self.config, self.tls = config, tls

    def snapshot(self) -> tuple[Config, ssl.SSLContext]:
        with self._lock:
            return self.config, self.tls

    def try_admit(self) -> bool:
        with self._lock:
            if self.connections >= self.config.limits.max_connections:
                return False
            self.connections += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.connections -= 1

    def register(self, session: Session) -> None:
        with self._lock:
            self.sessions.add(session)

    def unregister(self, session: Session) -> None:
        with self._lock:
            self.sessions.discard(session)

    def close_idle_sessions(self) -> None:
        """At stop: wake sessions waiting for a next request; busy ones finish first."""
        with self._lock:
            idle = [s for s in self.sessions if not s.busy]
        for session in idle:
            session.interrupt()

    def close_all_sessions(self) -> None:
        """At the end of the grace period: end every connection, busy or not."""
        with self._lock:
            sessions = list(self.sessions)
        for session in sessions:
            session.interrupt()

    def count_request(self) -> int:
        with self._lock:
            self.requests_served += 1
            return next(self._ids)


class RadminServer(socketserver.ThreadingTCPServer):
    """One listening socket; a thread per connection."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 1024  # a 200-host fan-out connects all at once

    def __init__(self, address: tuple[str, int], state: DaemonState):
        self.state = state
        self.last_tick = time.monotonic()  # the accept loop's heartbeat, for the watchdog
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, Session)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # "[::]:7420" beside "0.0.0.0:7420" must not collide.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()

    def service_actions(self) -> None:
        self.last_tick = time.monotonic()

    def get_request(self) -> tuple[Any, Any]:
        """accept(); out of descriptors, the waiting connection stays in the backlog and
        the listener stays readable: pause briefly rather than spin, and say so (once
        per throttle window)."""
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self.state.throttled.warning(
                    "accept_failed", reason=f"out of file descriptors ({exc.strerror})"
                )
                time.sleep(0.05)
            raise

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """max_connections and the startup slots (radmin/startups.py), enforced in the
        accept loop before a thread exists."""
        state = self.state
        if state.stopping.is_set():
            return False
        limits = state.config.limits
        if not state.try_admit():
            state.throttled.warning(
                "connection_refused",
                peer=_peer(client_address),
                reason="max_connections reached",
                max_connections=limits.max_connections,
            )
            return False
        start, rate, full = limits.max_startups
        startup = StartupLimits(start, rate, full, limits.max_startups_per_source)
        refused = state.startups.try_begin(source_key(str(client_address[0])), startup)
        if refused is None:
            return True
        state.release()
        state.throttled.warning(
            "connection_refused",
            peer=_peer(client_address),
            reason=refused,
            unauthenticated=state.startups.in_use,
        )
        return False

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start the session's thread. If none can start (threads or memory exhausted),
        give the max_connections slot back and close: socketserver would close the socket
        but keep the slot, and each such failure would lock one more client out."""
        try:
            super().process_request(request, client_address)
        except Exception as exc:
            self.state.release()
            self.state.startups.end(source_key(str(client_address[0])))
            self.state.log.error(
                "connection_dropped", peer=_peer(client_address), reason=f"no thread: {exc}"
            )
            self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.state.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.state.log.exception("session_crashed", peer=_peer(client_address))


def _peer(address: Any) -> str:
    return format_host_port(str(address[0]), int(address[1]))


@functools.lru_cache(maxsize=1024)
def _fingerprint(cert_der: bytes) -> str:
    """A client certificate's fingerprint, parsed once per certificate, not once per
    connection: a fan-out brings the same certificate a thousand times."""
    return fingerprint(cert_der)


# Linux's struct tcp_info: tcpi_bytes_acked and tcpi_bytes_received (u64, since 4.1
# and 4.2) sit at these offsets; an older kernel returns a shorter struct.
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_BYTES_ACKED, _BYTES_RECEIVED, _TCP_INFO_LEN = 120, 128, 136


def _wire_bytes(sock: socket.socket) -> dict[str, int]:
    """Bytes the connection carried each way, TLS records included, as the kernel
    counted them (one getsockopt, no counting on the data path); {} where unknown."""
    if _TCP_INFO is None:
        return {}
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return {}
    if len(info) < _TCP_INFO_LEN:
        return {}
    return {
        "bytes_in": int.from_bytes(info[_BYTES_RECEIVED:_TCP_INFO_LEN], sys.byteorder),
        "bytes_out": int.from_bytes(info[_BYTES_ACKED:_BYTES_RECEIVED], sys.byteorder),
    }


def _wait(sock: socket.socket, for_write: bool, deadline: float, what: str) -> None:
    remaining = deadline - time.monotonic()
    events = select.POLLOUT if for_write else select.POLLIN
    if remaining <= 0 or not wait_ready({sock.fileno(): events}, remaining):
        raise TimeoutError(f"{what} timed out")


class Session(socketserver.BaseRequestHandler):
    """One connection: TLS handshake, hello, then requests one after another.

    setup() only records and registers the session -- nothing in it can fail -- and all
    the work, the handshake included, happens in handle(): socketserver runs finish()
    after handle() whatever happens there, but skips it when setup() raises, which
    would leave the session registered and its socket open for good.
    """

    server: RadminServer

    def setup(self) -> None:
        self.state = self.server.state
        self.started = time.monotonic()
        self.client_fp = ""  # known once the handshake is done
        self.client_software: str | None = None  # known once the hello is done
        self.requests = 0
        self.busy = False
        self.counted_as: str | None = None  # the client this connection counts against
        # The startup slot verify_request took, until the client is authenticated.
        self.startup_source: str | None = source_key(str(self.client_address[0]))
        self.sock = self.request  # what finish() closes: TCP until TLS wraps it
        self.state.register(self)

    def interrupt(self) -> None:
        """Make any blocked read or poll on this connection return (daemon stopping)."""
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)  # the TCP socket under TLS

    def handle(self) -> None:
        config, tls_context = self.state.snapshot()
        self.deadline = self.started + config.limits.handshake_timeout
        conn = self._handshake(config, tls_context)
        if conn is not None:
            self._converse(conn)

    def _end_startup(self) -> None:
        if self.startup_source is not None:
            self.state.startups.end(self.startup_source)
            self.startup_source = None

    def finish(self) -> None:
        self._end_startup()
        if self.counted_as is not None:
            self.state.usage.release(self.counted_as, "connections")
        self.state.unregister(self)
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- the steps ---------------------------------------------------------------------

    def _handshake(self, config: Config, context: ssl.SSLContext) -> FrameSocket | None:
        """TLS 1.3 under the handshake deadline, then who is it: the authenticated
        connection, or None (logged) if there is none."""
        try:
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = context.wrap_socket(self.request, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:  # the peer is already gone
            self._handshake_failed(exc)
            return None
        self.sock = tls
        try:
            handshake(tls, lambda for_write: _wait(tls, for_write, self.deadline, "TLS handshake"))
        except (OSError, ssl.SSLError) as exc:
            self._handshake_failed(exc)
            _linger_close(tls)
            return None
        self.client_fp = _fingerprint(tls.getpeercert(binary_form=True) or b"")
        # Bound once the handshake is done: a refused handshake (a flood's) costs none.
        self.log = self.state.log.bind(peer=_peer(self.client_address), fingerprint=self.client_fp)
        tls.settimeout(config.limits.handshake_timeout)  # the hello has self.deadline
        return FrameSocket(tls, frame_timeout=config.limits.frame_timeout)

    def _handshake_failed(self, exc: BaseException) -> None:
        """Logged through the throttle: a flood of them must not flood the log."""
        self.state.throttled.warning(
            "handshake_failed", peer=_peer(self.client_address), reason=_handshake_reason(exc)
        )

    def _converse(self, conn: FrameSocket) -> None:
        """Hello, then requests until the connection ends; then its one event.

        Refusals and protocol errors are warnings at once (an auditor needs them when
        they happen); every other end -- the client closed, dropped, went idle, the
        network failed -- is said only by `connection_closed`, with its reason.
        """
        outcome, reason = "closed", None
        try:
            self.client_name = self._hello(conn)
            self._end_startup()  # authenticated: no longer a startup
            outcome = self._serve_requests(conn)
            if outcome == "idle_timeout":
                idle = self.state.config.limits.idle_timeout
                reason = f"no request within limits.idle_timeout ({idle:g} s)"
        except ProtocolError as exc:
            outcome, reason = "protocol_error", str(exc)
            self.log.warning("protocol_error", error=reason)
            self._send_error(conn, "protocol", reason)
        except ConnectionClosed as exc:
            outcome, reason = "disconnected", str(exc)
        except RequestError as exc:  # refused at hello: not (or no longer) listed
            outcome, reason = "refused", str(exc)
            self.log.warning("client_refused", reason=reason)
            self._send_error(conn, exc.code, reason)
        except TimeoutError as exc:
            outcome, reason = "timeout", str(exc) or "timed out"
        except (OSError, ssl.SSLError) as exc:
            outcome, reason = "network_error", str(exc)
        finally:
            self._log_closed(conn, outcome, reason)

    def _log_closed(self, conn: FrameSocket, outcome: str, reason: str | None) -> None:
        """The connection's one event: who (peer, fingerprint, client, its software),
        how it ended, how long, how many requests, and the bytes on the wire."""
        fields: dict[str, Any] = {
            "outcome": outcome,
            "requests": self.requests,
            "duration_s": round(time.monotonic() - self.started, 4),
        }
        if reason is not None:
            fields["reason"] = reason[:200]
        if self.client_software is not None:
            fields["client_software"] = self.client_software
        fields.update(_wire_bytes(conn.sock))
        self.log.info("connection_closed", **fields)

    def _hello(self, conn: FrameSocket) -> str:
        """The client's HELLO, whole before the handshake deadline (not per read)."""
        _, hello = conn.recv_json(FrameType.HELLO, deadline=self.deadline)
        config, _ = self.state.snapshot()
        client = config.client_for(self.client_fp)
        if client is None:  # listed when the handshake began, removed by a reload since
            raise NotAuthorized(f"client certificate {self.client_fp} is not authorized")
        limit = config.limits.per_client.max_connections
        self.state.usage.acquire(client.name, "connections", limit)
        self.counted_as = client.name
        offered = hello.get("protocols")
        if not isinstance(offered, list):
            raise ProtocolError("HELLO must list the client's 'protocols'")
        common = [v for v in SUPPORTED_PROTOCOLS if v in offered]
        if not common:
            raise ProtocolError(
                f"no common protocol version: daemon speaks {list(SUPPORTED_PROTOCOLS)}, "
                f"client offers {offered}"
            )
        # The shorter of the two intervals, announced back; a client that announced
        # none (an older one) gets no heartbeats and is not expected to send any.
        announced = hello.get("heartbeat")
        interval = heartbeat_interval(announced, config.limits.heartbeat_interval)
        if announced is not None and interval is None:
            raise ProtocolError("HELLO 'heartbeat' must be a positive number of seconds")
        reply: dict[str, Any] = {
            "protocol": max(common),
            "software": f"radmind/{__version__}",
            "client": client.name,
            # How long an idle connection lives: a client keeping connections for reuse
            # (radmin/mux) hands one out only while it is well within this.
            "idle_timeout": config.limits.idle_timeout,
        }
        if interval is not None:
            reply["heartbeat"] = interval
        conn.send_json(FrameType.HELLO, reply)
        if interval is not None:
            conn.start_heartbeat(interval)
        self.client_software = str(hello.get("software", "?"))[:80]
        self.log = self.log.bind(client=client.name)
        # Said in connection_closed: at info, one event per connection, not two.
        self.log.debug("authenticated", client_software=self.client_software)
        return client.name

    def _serve_requests(self, conn: FrameSocket) -> str:
        while not self.state.stopping.is_set():
            config, _ = self.state.snapshot()
            if conn.sock.gettimeout() != config.limits.idle_timeout:  # a system call
                conn.sock.settimeout(config.limits.idle_timeout)
            conn.frame_timeout = config.limits.frame_timeout
            # Between requests idle_timeout decides (heartbeats do not reset it): a
            # client holding an idle connection from a script need not beat.
            conn.watch_peer = False
            conn.activity = "waiting for a request"
            try:
                frame = conn.recv_control(FrameType.REQUEST, FrameType.CANCEL)
            except ConnectionClosed as exc:
                if exc.truncated:
                    raise ProtocolError(str(exc)) from None
                return "closed"
            except TimeoutError:
                return "idle_timeout"
            except OSError:
                if self.state.stopping.is_set():
                    return "daemon_stopping"
                raise
            if frame.type is FrameType.CANCEL:
                frame.json()  # still must be a JSON object
                continue  # it raced the RESULT of the request it meant to cancel
            self.busy = True
            conn.watch_peer = True
            conn.last_received = time.monotonic()  # the REQUEST itself
            try:
                config, _ = self.state.snapshot()  # a reload meanwhile applies to this request
                in_step = self._run_request(conn, config, frame)
            finally:
                self.busy = False
            if not in_step:
                return "internal_error"
        return "daemon_stopping"

    def _run_request(self, conn: FrameSocket, config: Config, frame: Frame) -> bool:
        """Run one request and send its RESULT; False when the stream may be out of step."""
        request_id = self.state.count_request()
        self.requests += 1
        log = self.log.bind(request_id=request_id)
        started = time.monotonic()
        mark = (conn.frames_received, conn.frames_sent)
        audit: dict[str, Any] = {}
        try:
            message = _request_fields(frame)
            log = _bind_request(log, message)
            conn.activity = f"serving {str(message.get('op'))[:20]}"
            outcome = self._perform(conn, config, message, log, audit)
        except RequestError as exc:
            outcome = Outcome.failure(exc, after_reply=None)
        except ConnectionClosed as exc:
            _audit(log, "disconnected", started, audit, {"error": str(exc)})
            raise
        except (ProtocolError, ConnectionError, TimeoutError, ssl.SSLError):
            raise  # the peer broke the protocol or the connection failed: _converse ends it
        except Exception as exc:
            log.exception("request_crashed", duration_s=round(time.monotonic() - started, 4))
            return self._answer_crash(conn, config, exc, request_id, mark)
        audit.update(outcome.log)
        reply = outcome.result_frame()
        conn.send_json(FrameType.RESULT, reply)
        _audit(log, outcome.error or "ok", started, audit, {"error": reply.get("message")})
        if outcome.after_reply is not None:
            outcome.after_reply()
        return True

    def _perform(
        self,
        conn: FrameSocket,
        config: Config,
        message: dict[str, Any],
        log: Any,
        audit: dict[str, Any],
    ) -> Outcome:
        """Who may do what is looked up afresh: a reload may have changed it. `audit`
        collects what the request's event says, also when it is refused."""
        op_name = message.get("op")
        client = config.client_for(self.client_fp)
        operation = OPERATIONS.get(op_name) if isinstance(op_name, str) else None
        if client is None:
            raise NotAuthorized("this client is no longer authorized (config reloaded)")
        audit["run_as"] = client.run_as
        if operation is None:
            raise RequestError(f"unsupported operation {op_name!r}")
        request = Request(
            op=str(op_name),
            params=message,
            client=client,
            config=config,
            conn=conn,
            log=log,
            audit=audit,
            usage=self.state.usage,
            commands=self.state.commands,
        )
        return operation(request)

    def _answer_crash(
        self,
        conn: FrameSocket,
        config: Config,
        exc: Exception,
        request_id: int,
        mark: tuple[int, int],
    ) -> bool:
        """Last resort for a bug in an operation (already logged with its traceback).

        The answer is `failed`, not `bad_request`: the daemon cannot tell that the
        request was at fault. If the operation had exchanged no frame yet the stream is
        in step and the session goes on; otherwise the client may be streaming data, so
        the session ends after the RESULT -- or without one, if frames are still queued
        (one may be half sent).
        """
        if conn.queued:
            return False
        conn.sock.settimeout(config.limits.idle_timeout)  # an op may leave it non-blocking
        conn.send_json(
            FrameType.RESULT,
            {
                "ok": False,
                "error": "failed",
                "message": f"internal error in the daemon ({type(exc).__name__}); "
                f"its log has the details (request {request_id})",
            },
        )
        return (conn.frames_received, conn.frames_sent - 1) == mark

    def _send_error(self, conn: FrameSocket, code: str, message: str) -> None:
        try:
            conn.sock.settimeout(1.0)
            conn.send_json(FrameType.ERROR, {"code": code, "message": message})
        except (OSError, RadminError):
            pass


def _audit(
    log: Any, result: str, started: float, audit: dict[str, Any], extra: dict[str, Any]
) -> None:
    """The one event per request: what was asked, which rule decided, how it ended.

    Refusals and failures are warnings, so an audit can filter on level.
    """
    fields = {**audit, **extra, "duration_s": round(time.monotonic() - started, 4)}
    level = log.info if result == "ok" else log.warning
    level("request", outcome=result, **fields)


def _bind_request(log: Any, message: dict[str, Any]) -> Any:
    """op, and the run id a client sends so one fleet-wide action can be collected."""
    op, run_id = message.get("op"), message.get("run_id")
    if run_id is None:
        return log.bind(op=op)
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        # It goes into every log line of the request: nothing else may.
        raise BadRequest(f"run_id must match {RUN_ID.pattern}, got {run_id!r}"[:200])
    return log.bind(op=op, run_id=run_id)


def _request_fields(frame: Frame) -> dict[str, Any]:
    """A REQUEST's fields. A value no request may hold (NaN, a lone surrogate...) is the
    client's bad request, not a protocol error: the frame was read whole, the stream is
    in step, the session goes on."""
    try:
        return frame.json()
    except UnsafeMessage as exc:
        raise BadRequest(str(exc)) from None


def _linger_close(sock: socket.socket, seconds: float = 0.25) -> None:
    """Close without a reset, so the peer can still read the TLS alert we just sent.

    Closing a socket with unread input (a client's first frames, sent right after its
    half of the handshake) makes the kernel send RST, which can destroy the alert
    before the client reads it; the client would then see a bare EOF instead of
    "certificate unknown". So: half-close, drain briefly, then close.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            if not sock.recv(65536):
                break
    except OSError:
        pass
    finally:
        sock.close()


# OpenSSL's verify results that mean "no listed certificate vouches for this one": the
# listed certificates are the only trust anchors, so an unlisted one is self-signed with
# no anchor, or names an issuer nobody listed. Other results (an expired certificate,
# even a listed one) are worded as OpenSSL words them.
_NOT_LISTED = frozenset(
    {
        2,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
        18,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
        19,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
        20,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        21,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
    }
)

# OpenSSL's reason codes for what unauthenticated peers most often do, in an admin's
# words; the code stays in the message for searching.
_TLS_REASONS = {
    "WRONG_VERSION_NUMBER": "not TLS: the first bytes are not a TLS record",
    "HTTP_REQUEST": "not TLS: an HTTP request",
    "UNSUPPORTED_PROTOCOL": "the client does not offer TLS 1.3",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate",
    "BAD_SIGNATURE": "the client does not hold the private key of the certificate it sent",
    "UNEXPECTED_EOF_WHILE_READING": "the client hung up during the handshake",
}


def _handshake_reason(exc: BaseException) -> str:
    """Why a handshake failed, for the `handshake_failed` event.

    Only what OpenSSL tells: after a failed handshake Python's ssl cannot show the
    certificate the peer offered, so no fingerprint is logged here.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _NOT_LISTED:
            return f"client certificate not listed in clients: ({exc.verify_message})"
        return f"client certificate refused: {exc.verify_message}"
    if isinstance(exc, TimeoutError):
        return "handshake timed out"
    if isinstance(exc, ssl.SSLError):
        words = _TLS_REASONS.get(exc.reason or "")
        return f"{words} ({exc.reason})" if words else f"TLS error: {exc.reason or exc}"
    return f"{type(exc).__name__}: {exc}"
