"""The daemon's network core: accept, authenticate, dispatch.

    TCP accept -> verify_request (max_connections, in the accept loop)
      -> Session.setup: TLS 1.3 handshake under a deadline, fingerprint -> client name
      -> hello -> loop { REQUEST -> OPERATIONS[op] -> RESULT } -> log -> close

`RadminServer` is a `ThreadingTCPServer` used as it was meant to be subclassed: hooks
overridden, the loop untouched. One server per `listen:` address; they share a
`DaemonState` holding the current config (swapped whole on reload).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import select
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from radmin import PROTOCOL_VERSION, __version__
from radmin.config import Config
from radmin.errors import (
    ConnectionClosed,
    NotAuthorized,
    ProtocolError,
    RadminError,
    RequestError,
)
from radmin.identity import fingerprint
from radmin.log import get_logger
from radmin.ops import Outcome, Request
from radmin.ops import exec as exec_op
from radmin.ops import ping as ping_op
from radmin.ops import put as put_op
from radmin.protocol import FrameSocket, FrameType
from radmin.tls import server_context

SUPPORTED_PROTOCOLS = (PROTOCOL_VERSION,)
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# The only operations a client can ask for: an explicit table, never a name lookup.
OPERATIONS: dict[str, Callable[[Request], Outcome]] = {
    "ping": ping_op.run,
    "exec": exec_op.run,
    "put": put_op.run,
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

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """max_connections, enforced in the accept loop before a thread exists."""
        if self.state.stopping.is_set():
            return False
        if self.state.try_admit():
            return True
        self.state.log.warning(
            "connection_refused",
            peer=_peer(client_address),
            reason="max_connections reached",
            max_connections=self.state.config.limits.max_connections,
        )
        return False

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.state.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.state.log.exception("session_crashed", peer=_peer(client_address))


def _peer(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _wait(sock: socket.socket, for_write: bool, deadline: float, what: str) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"{what} timed out")
    readers, writers = ([], [sock]) if for_write else ([sock], [])
    if not any(select.select(readers, writers, [], remaining)[:2]):
        raise TimeoutError(f"{what} timed out")


def tls_handshake(tls: ssl.SSLSocket, deadline: float) -> None:
    """Handshake with a total deadline (a socket timeout would bound each read only)."""
    tls.setblocking(False)
    while True:
        try:
            tls.do_handshake()
            return
        except ssl.SSLWantReadError:
            _wait(tls, False, deadline, "TLS handshake")
        except ssl.SSLWantWriteError:
            _wait(tls, True, deadline, "TLS handshake")


class Session(socketserver.BaseRequestHandler):
    """One authenticated connection: hello, then requests one after another."""

    server: RadminServer

    def setup(self) -> None:
        self.state = self.server.state
        self.started = time.monotonic()
        self.conn: FrameSocket | None = None
        self.requests = 0
        self.busy = False
        self.sock = self.request
        self.state.register(self)
        config, tls_context = self.state.snapshot()
        self.log = self.state.log.bind(peer=_peer(self.client_address))
        deadline = self.started + config.limits.handshake_timeout
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = tls_context.wrap_socket(self.request, server_side=True, do_handshake_on_connect=False)
        self.sock = tls
        try:
            tls_handshake(tls, deadline)
        except (OSError, ssl.SSLError) as exc:
            self.log.warning("handshake_failed", reason=_handshake_reason(exc))
            _linger_close(tls)
            return
        client_fp = fingerprint(tls.getpeercert(binary_form=True))
        self.log = self.log.bind(fingerprint=client_fp)
        tls.settimeout(max(deadline - time.monotonic(), 0.001))
        self.conn = FrameSocket(tls)
        self.client_fp = client_fp

    def interrupt(self) -> None:
        """Make any blocked read or poll on this connection return (daemon stopping)."""
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)  # the TCP socket under TLS

    def handle(self) -> None:
        if self.conn is None:
            return
        outcome = "closed"
        try:
            self.client_name = self._hello()
            outcome = self._serve_requests()
        except ProtocolError as exc:
            outcome = "protocol_error"
            self.log.warning("protocol_error", error=str(exc))
            self._send_error("protocol", str(exc))
        except ConnectionClosed as exc:
            outcome = "disconnected"
            self.log.info("disconnected", reason=str(exc))
        except RequestError as exc:  # refused at hello: not (or no longer) listed
            outcome = "refused"
            self.log.warning("client_refused", reason=str(exc))
            self._send_error(exc.code, str(exc))
        except TimeoutError:
            outcome = "timeout"
            self.log.info("connection_timeout")
        except (OSError, ssl.SSLError) as exc:
            outcome = "network_error"
            self.log.info("connection_error", error=str(exc))
        finally:
            self.log.info(
                "connection_closed",
                outcome=outcome,
                requests=self.requests,
                duration_s=round(time.monotonic() - self.started, 4),
            )

    def finish(self) -> None:
        self.state.unregister(self)
        if self.conn is not None:
            self.conn.close()

    # -- the steps ---------------------------------------------------------------------

    def _hello(self) -> str:
        _, hello = self.conn.recv_json(FrameType.HELLO)
        config, _ = self.state.snapshot()
        client = config.client_for(self.client_fp)
        if client is None:  # listed when the handshake began, removed by a reload since
            raise NotAuthorized(f"client certificate {self.client_fp} is not authorized")
        offered = hello.get("protocols")
        if not isinstance(offered, list):
            raise ProtocolError("HELLO must list the client's 'protocols'")
        common = [v for v in SUPPORTED_PROTOCOLS if v in offered]
        if not common:
            raise ProtocolError(
                f"no common protocol version: daemon speaks {list(SUPPORTED_PROTOCOLS)}, "
                f"client offers {offered}"
            )
        self.conn.send_json(
            FrameType.HELLO,
            {"protocol": max(common), "software": f"radmind/{__version__}", "client": client.name},
        )
        self.log = self.log.bind(client=client.name)
        self.log.info("authenticated", client_software=str(hello.get("software", "?"))[:80])
        return client.name

    def _serve_requests(self) -> str:
        while not self.state.stopping.is_set():
            config, _ = self.state.snapshot()
            self.conn.sock.settimeout(config.limits.idle_timeout)
            try:
                frame_type, message = self.conn.recv_json(FrameType.REQUEST, FrameType.CANCEL)
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
            if frame_type is FrameType.CANCEL:
                continue  # it raced the RESULT of the request it meant to cancel
            self.busy = True
            try:
                config, _ = self.state.snapshot()  # a reload meanwhile applies to this request
                self._run_request(config, message)
            finally:
                self.busy = False
        return "daemon_stopping"

    def _run_request(self, config: Config, message: dict[str, Any]) -> None:
        request_id = self.state.count_request()
        self.requests += 1
        op_name = message.get("op")
        log = self.log.bind(request_id=request_id, op=op_name)
        run_id = message.get("run_id")
        if isinstance(run_id, str) and RUN_ID.fullmatch(run_id):
            log = log.bind(run_id=run_id)
        started = time.monotonic()
        client = config.client_for(self.client_fp)
        operation = OPERATIONS.get(op_name) if isinstance(op_name, str) else None
        request = Request(
            op=str(op_name),
            params=message,
            client=client,  # type: ignore[arg-type]  # checked first thing below
            config=config,
            conn=self.conn,
            log=log,
            shutting_down=self.state.stopping,
        )
        if client is not None:
            request.audit["run_as"] = client.run_as
        try:
            if client is None:
                raise NotAuthorized("this client is no longer authorized (config reloaded)")
            if operation is None:
                raise RequestError(f"unsupported operation {op_name!r}")
            outcome = operation(request)
        except RequestError as exc:
            outcome = Outcome(
                {"ok": False, "error": exc.code, "message": str(exc)}, after_reply=exc.after_reply
            )
            result = exc.code
        except ConnectionClosed as exc:
            _audit(log, "disconnected", started, request.audit, {"error": str(exc)})
            raise
        else:
            request.audit.update(outcome.log)
            outcome = Outcome({"ok": True, **outcome.reply}, after_reply=outcome.after_reply)
            result = "ok"
        self.conn.send_json(FrameType.RESULT, outcome.reply)
        _audit(log, result, started, request.audit, {"error": outcome.reply.get("message")})
        if outcome.after_reply is not None:
            outcome.after_reply()

    def _send_error(self, code: str, message: str) -> None:
        try:
            self.conn.sock.settimeout(1.0)
            self.conn.send_json(FrameType.ERROR, {"code": code, "message": message})
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
