"""One authenticated connection to one daemon: TCP, TLS 1.3, host key, hello, frames.

`connect()` does every step that can fail and only then builds the `Connection`, so a
Connection is always open (nothing is half-constructed). Every socket and TLS error is
turned into a typed `TransportError` in one place (`transport_error`, as httpx maps
httpcore's errors at its transport boundary); daemon refusals are `RemoteError`s with
the daemon's code. Kept lean: it is on `radmin-cli`'s start-up path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import ssl
import time
from collections import namedtuple

from radmin import PROTOCOL_VERSION, __version__
from radmin.client.exec import ExecResult, exec_command
from radmin.client.put import PutResult, put_file
from radmin.errors import (
    Cancelled,
    CommandFailed,
    ConnectionClosed,
    ConnectionLost,
    ConnectTimeout,
    DaemonBusy,
    HostKeyError,
    NotAuthorizedByDaemon,
    PeerSilent,
    ProtocolError,
    RemoteError,
    RemoteProtocolError,
    ReplyTimeout,
    TransportError,
    TrustError,
    Unreachable,
)
from radmin.identity import fingerprint
from radmin.protocol import FrameSocket, FrameType, heartbeat_interval, wait_ready

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from radmin.client.get import GetResult
    from radmin.client.options import ClientOptions
    from radmin.client.shell import ShellResult
    from radmin.hosts import Target

# TLS alerts a daemon sends when our certificate is not in its clients: section.
_REFUSED_ALERTS = {
    "TLSV1_ALERT_UNKNOWN_CA",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
}
# What the client raises itself and must pass through the error map untouched.
_OURS = (TransportError, RemoteError, Cancelled)


class PingResult(namedtuple("PingResult", "version protocol client rtt_s connect_s")):
    """`client`: the name the daemon knows us by; `rtt_s`: one request/reply on the open
    connection; `connect_s`: TCP + TLS + host key check + hello."""

    __slots__ = ()


# -- the one error map ---------------------------------------------------------------


def transport_error(
    exc: BaseException, phase: str, options: ClientOptions | None = None
) -> TransportError:
    """A typed error with one line a sysadmin understands, for any exception from the
    socket, TLS or frame layer. `phase` says what was going on ("connection lost")."""
    reason = getattr(exc, "reason", None)
    if reason in _REFUSED_ALERTS:
        hint = ""
        if options is not None:
            with contextlib.suppress(OSError, ValueError):
                hint = (
                    f" (add this client's certificate {options.own_fingerprint()} to its clients:)"
                )
        return NotAuthorizedByDaemon(f"not authorized by daemon{hint}")
    if isinstance(exc, TimeoutError | socket.timeout):
        return ReplyTimeout("timed out")
    if isinstance(exc, ProtocolError):
        return RemoteProtocolError(f"protocol error: {exc}")
    if isinstance(exc, ConnectionClosed):
        return ConnectionLost(f"connection lost: {exc}" if phase == "connection lost" else str(exc))
    if isinstance(exc, ConnectionResetError):
        return ConnectionLost(f"{phase}: connection reset by peer")
    if isinstance(exc, ssl.SSLEOFError | BrokenPipeError):
        return ConnectionLost(f"{phase}: the daemon closed the connection")
    if isinstance(exc, ssl.SSLError):
        return TrustError(f"{phase}: {exc.reason or exc}")
    return ConnectionLost(f"{phase}: {getattr(exc, 'strerror', None) or exc}")


@contextlib.contextmanager
def translated(
    phase: str, options: ClientOptions | None = None, host: str = "the host"
) -> Iterator[None]:
    """Run a block whose socket/TLS/frame errors become typed TransportErrors."""
    try:
        yield
    except _OURS:
        raise
    except PeerSilent as exc:
        raise ConnectionLost(
            f"no answer from {host} for {exc.silent_s:g} s while {exc.activity}"
        ) from None
    except (OSError, ssl.SSLError, ConnectionClosed, ProtocolError) as exc:
        raise transport_error(exc, phase, options) from None


# -- opening -----------------------------------------------------------------------------


def connect(target: Target, options: ClientOptions) -> Connection:
    """TCP, TLS 1.3, the daemon's key checked, HELLO sent: an open Connection.

    The hello's answer is read with the first reply (one round trip less); a new host is
    recorded in known_hosts only once that answer shows it speaks radmin. With
    `options.mux`, through the client home's helper (radmin/mux) when one can be reached
    or started: the same checks, errors and Connection, over a Unix socket.
    """
    if options.mux:
        from radmin.mux.client import connect_through_helper

        through = connect_through_helper(target, options)
        if through is not None:
            return through
    started = time.monotonic()
    context = options.tls_context()
    deadline = started + options.connect_timeout
    raw = _tcp_connect(target, options, deadline)
    tls = context.wrap_socket(raw, do_handshake_on_connect=False)
    try:
        _handshake(tls, options, deadline)
        presented = fingerprint(tls.getpeercert(binary_form=True) or b"")
        new_host = _check_host_key(target, options, presented)
        tls.settimeout(options.connect_timeout)
        # 16 KiB (one TLS record) to start, not the daemon's 64 KiB: a buffer is zeroed,
        # so resident, and a 1,000-host fan-out holds 1,000 of them (client RSS budget).
        frames = FrameSocket(tls, initial_buffer=16 * 1024)
        frames.cancel_fd = options.cancel_fd
        with translated("connection lost", options):
            frames.send_json(
                FrameType.HELLO,
                {
                    "protocols": [PROTOCOL_VERSION],
                    "software": f"radmin-cli/{__version__}",
                    "heartbeat": options.heartbeat_interval,
                },
            )
    except BaseException:
        tls.close()
        raise
    return Connection(target, options, frames, presented, time.monotonic() - started, new_host)


def _tcp_connect(target: Target, options: ClientOptions, deadline: float) -> socket.socket:
    """Connect to the first address that answers, watching the cancel fd throughout."""
    # An ASCII name as bytes: a str goes through the "idna" codec, whose import
    # (stringprep, unicodedata) costs a millisecond of every radmin-cli start.
    host = target.host.encode() if target.host.isascii() else target.host
    try:
        addresses = socket.getaddrinfo(host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Unreachable(f"cannot resolve {target.host}: {exc.strerror}") from None
    error = "no address"
    for family, kind, proto, _, address in addresses:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as exc:  # out of descriptors, say: this process's problem
            raise Unreachable(f"cannot open a socket: {exc.strerror}") from None
        try:
            sock.setblocking(False)
            code = sock.connect_ex(address)
            if code == errno.EINPROGRESS:
                _wait(sock, True, deadline, options, "connection timed out")
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            error = "connection refused" if code == errno.ECONNREFUSED else os.strerror(code)
        except BaseException:
            sock.close()
            raise
        sock.close()
    raise Unreachable(error)


def _handshake(tls: ssl.SSLSocket, options: ClientOptions, deadline: float) -> None:
    from radmin.tls import handshake

    try:
        handshake(tls, lambda for_write: _wait(tls, for_write, deadline, options))
    except ConnectTimeout:
        raise ConnectTimeout(
            "TLS handshake timed out: the port accepts TCP but does not answer TLS "
            "(is it radmind's?)"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        error = transport_error(exc, "TLS handshake failed")
        if isinstance(error, ConnectionLost):  # reset or EOF before TLS finished
            error = TrustError(str(error).replace("connection lost", "TLS handshake failed"))
        raise error from None


def _wait(
    sock: socket.socket,
    for_write: bool,
    deadline: float | None,
    options: ClientOptions,
    what: str = "timed out",
) -> None:
    """Wait until `sock` is ready; Cancelled on Ctrl-C, ConnectTimeout at the deadline."""
    interest = {sock.fileno(): select.POLLOUT if for_write else select.POLLIN}
    if options.cancel_fd is not None:
        interest[options.cancel_fd] = select.POLLIN
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    ready = wait_ready(interest, timeout)
    if options.cancel_fd is not None and options.cancel_fd in ready:
        raise Cancelled("cancelled")
    if not ready:
        raise ConnectTimeout(what)


def _check_host_key(target: Target, options: ClientOptions, presented: str) -> bool:
    """Raise if the daemon's key is wrong; True if it is new (to record after hello)."""
    if options.host_fingerprint:
        if presented != options.host_fingerprint:
            raise HostKeyError(
                f"host key mismatch for {target.host_port}: the daemon presented "
                f"{presented}, --host-fingerprint expects {options.host_fingerprint}"
            )
        return False
    return options.known_hosts.check(target.host_port, presented, options.strict_host_key)


# -- the connection ------------------------------------------------------------------


class Connection:
    """One authenticated connection to one daemon; requests run one after another."""

    def __init__(
        self,
        target: Target,
        options: ClientOptions,
        frames: FrameSocket,
        server_fingerprint: str,
        connect_s: float,
        new_host: bool = False,
    ):
        self.target = target
        self.options = options
        self.frames = frames
        self.server_fingerprint = server_fingerprint
        self.connect_s = connect_s
        self.client_name = ""
        self.server_software = ""
        self._hello_pending = True
        self._new_host = new_host
        # The daemon's HELLO once received ({} before): the mux helper replays it.
        self.server_hello: dict[str, Any] = {}

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.frames.close()

    def translated(self, phase: str):
        return translated(phase, self.options, self.target.label)

    # -- frames, with errors translated -------------------------------------------------

    def send(self, frame_type: FrameType, obj: dict[str, Any]) -> None:
        with self.translated("connection lost"):
            self.frames.send_json(frame_type, obj)

    def send_frame(self, frame_type: FrameType, payload: bytes | memoryview) -> None:
        with self.translated("connection lost"):
            self.frames.send_frame(frame_type, payload)

    def receive(
        self, *expected: FrameType, long_wait: bool = False
    ) -> tuple[FrameType, dict[str, Any]]:
        """Receive a control frame; an ERROR frame from the daemon becomes an exception.

        Once heartbeats run (after the daemon's HELLO), waits as long as the daemon shows
        it is alive -- a daemon hashing a large file before it answers is not a dead one;
        three silent intervals end it. Before that, up to the connect timeout, or without
        limit with `long_wait`. Always returns on Ctrl-C (Cancelled).
        """
        beating = self.frames.heartbeat_interval is not None
        timeout = None if long_wait or beating else self.options.connect_timeout
        self.frames.sock.settimeout(timeout)
        try:
            with self.translated("connection lost"):
                frame_type, message = self.frames.recv_json(*expected, FrameType.ERROR)
        except ConnectionLost:
            if self._hello_pending:
                raise NotAuthorizedByDaemon(self._closed_during_hello()) from None
            raise
        if frame_type is FrameType.ERROR:
            code = message.get("code")
            text = str(message.get("message", "no reason given"))
            if code == "not_authorized":
                raise NotAuthorizedByDaemon(f"not authorized by daemon: {text}")
            if code == "limit":
                raise DaemonBusy(f"refused by the daemon: {text}")
            raise RemoteProtocolError(f"daemon reported a {code} error: {text}")
        return frame_type, message

    def _closed_during_hello(self) -> str:
        """The daemon hung up before answering hello: almost always an unlisted cert."""
        try:
            ours = f" {self.options.own_fingerprint()}"
        except (OSError, ValueError):
            ours = ""
        return (
            "not authorized by daemon? it closed the connection during authentication "
            f"(is this client's certificate{ours} listed in its clients:?)"
        )

    def wait_hello(self) -> dict[str, Any]:
        """Receive the daemon's HELLO now rather than with the first reply (the mux
        helper must know the connection is authorized before it hands it out)."""
        self._finish_hello()
        return self.server_hello

    def _finish_hello(self) -> None:
        if not self._hello_pending:
            return
        _, hello = self.receive(FrameType.HELLO)
        self._hello_pending = False
        self.server_hello = hello
        interval = heartbeat_interval(hello.get("heartbeat"), self.options.heartbeat_interval)
        if interval is not None:
            self.frames.start_heartbeat(interval)
        self.client_name = str(hello.get("client", ""))
        self.server_software = str(hello.get("software", ""))
        if self._new_host and self.options.known_hosts.record(
            self.target.host_port, self.server_fingerprint
        ):
            self.options.warn(
                f"Warning: permanently added {self.target.host_port} "
                f"({self.server_fingerprint}) to {self.options.known_hosts.path}"
            )

    def request(self, op: str, **params: Any) -> None:
        """Send a REQUEST (and collect the hello answer if it is still pending)."""
        if self.options.run_id is not None:
            params["run_id"] = self.options.run_id
        self.frames.activity = "waiting for the reply"
        self.send(FrameType.REQUEST, {"op": op, **params})
        self._finish_hello()

    def result(self, long_wait: bool = False) -> dict[str, Any]:
        """Wait for the RESULT that ends the current request."""
        self.frames.activity = "waiting for the result"
        _, reply = self.receive(FrameType.RESULT, long_wait=long_wait)
        return self.check(reply)

    @staticmethod
    def check(reply: dict[str, Any]) -> dict[str, Any]:
        if not reply.get("ok"):
            raise RemoteError(str(reply.get("error", "failed")), str(reply.get("message", "")))
        return reply

    # -- operations ----------------------------------------------------------------------

    def ping(self) -> PingResult:
        carries_hello = self._hello_pending
        started = time.monotonic()
        self.request("ping")
        reply = self.result()
        rtt = time.monotonic() - started
        if carries_hello:  # the first ping also waited for the hello: time a clean one
            started = time.monotonic()
            self.request("ping")
            reply = self.result()
            rtt = time.monotonic() - started
        return PingResult(
            version=str(reply.get("version", "?")),
            protocol=int(reply.get("protocol", 0)),
            client=str(reply.get("client", self.client_name)),
            rtt_s=rtt,
            connect_s=self.connect_s,
        )

    def exec(self, command: str, **options: Any) -> ExecResult:
        """Run `command` on the host, streaming its output to callbacks: `/bin/sh -c` for
        an unrestricted client, argv without a shell for a restricted one.

        Keywords: stdin (None sends none, bytes are sent then EOF, an int is a file
        descriptor streamed until its EOF), on_stdout / on_stderr (callables taking
        bytes), cwd, env, timeout. When the options' cancel fd becomes readable the
        command is cancelled (the daemon kills its process group).
        """
        return exec_command(self, command, **options)

    def run(self, command: str, *, check: bool = False, **options: Any) -> ExecResult:
        """exec() that collects stdout and stderr into the result (for small outputs);
        with check=True a non-zero status raises CommandFailed (subprocess.run's habit)."""
        out, err = bytearray(), bytearray()
        result = self.exec(command, on_stdout=out.extend, on_stderr=err.extend, **options)
        result = result._replace(stdout=bytes(out), stderr=bytes(err))
        if check and result.returncode != 0:
            raise CommandFailed(command, result)
        return result

    def put(self, local_path: str, remote_path: str | None = None, **options: Any) -> PutResult:
        """Upload a file; the host ends with its old file or the complete verified one.

        Keywords: mode, owner, group (None: an existing file keeps its own), sha256 (the
        file's digest if already known: a fan-out hashes once for all hosts), progress
        (called with the number of bytes just sent).
        """
        return put_file(self, local_path, remote_path, **options)

    def get(self, remote_path: str, local_path: str | None = None, **options: Any) -> GetResult:
        """Download a file; the local file ends as it was or as the complete verified copy.

        `local_path`: None lands the remote base name in the current folder; an existing
        folder or a path ending in `/` means inside it. Keywords: progress (called with
        the number of bytes just received), on_size (called once with the file's size
        before its data comes), stall_timeout (seconds without data before giving up).
        """
        from radmin.client.get import get_file

        return get_file(self, remote_path, local_path, **options)

    def shell(self, *, stdin: int, on_output: Any, **options: Any) -> ShellResult:
        """The run_as user's login shell on a PTY on the host, until it exits.

        `stdin`: a file descriptor whose bytes are typed into the shell (at its end, ^D);
        `on_output`: called with the terminal's output as it comes. Keywords: term (the
        TERM to set), window_size (a callable returning (rows, cols)), resize_fd (when
        readable, window_size() is asked again and a change sent), on_start (called
        once the daemon started the shell: the moment to put a terminal in raw mode).
        Needs `allow.shell: true` on the daemon (else RemoteError, code `denied`).
        """
        from radmin.client.shell import open_shell

        return open_shell(self, stdin=stdin, on_output=on_output, **options)
