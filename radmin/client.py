"""The Python API: connect to a radmind, check its key, then ping / exec / put.

    options = ClientOptions(ClientHome.resolve())
    with connect(Target("web1", "10.0.0.11", 7420), options) as conn:
        print(conn.ping().rtt_s)

This is what the CLI, the tests and any other program share. It raises
`TransportError` (exit status 255 in the CLI) when a host cannot be reached,
authenticated or spoken to, and `RemoteError` when the daemon refuses or fails a
request (exit status 1). Kept lean: it is on `radmin-cli`'s start-up path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import ssl
import threading
import time
from collections import namedtuple
from collections.abc import Callable

from radmin import PROTOCOL_VERSION, __version__
from radmin.errors import (
    ConnectionClosed,
    HostKeyError,
    ProtocolError,
    RadminError,
    TransportError,
)
from radmin.hosts import Target
from radmin.identity import ClientHome, KnownHosts, fingerprint, key_mode_problem
from radmin.protocol import HIGH_WATER, MAX_DATA, FrameSocket, FrameType, wait_ready

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# TLS alerts a daemon sends when our certificate is not in its clients: section.
_REFUSED_ALERTS = {
    "TLSV1_ALERT_UNKNOWN_CA",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
}


class RemoteError(RadminError):
    """The daemon refused or failed a request (policy, bad request, failure on the host)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class Cancelled(RadminError):
    """The user pressed Ctrl-C (the options' cancel fd became readable)."""


class ClientOptions:
    """Who we are and how we trust daemons; one instance serves a whole fan-out."""

    def __init__(
        self,
        home: ClientHome,
        *,
        strict_host_key: bool = False,
        host_fingerprint: str | None = None,
        connect_timeout: float = 10.0,
        warn: Callable[[str], None] | None = None,
        cancel_fd: int | None = None,
        run_id: str | None = None,
    ):
        self.home = home
        # Sent with every request, so one fleet-wide action can be found in every
        # daemon's log (interface.md: "Run id").
        self.run_id = run_id
        self.strict_host_key = strict_host_key
        self.host_fingerprint = host_fingerprint
        self.connect_timeout = connect_timeout
        self.warn = warn or (lambda message: None)
        # Readable once the user asked to stop (Ctrl-C); watched by every wait.
        self.cancel_fd = cancel_fd
        self.known_hosts = KnownHosts(home.known_hosts)
        self._context: ssl.SSLContext | None = None
        self._digests = None
        self._lock = threading.Lock()

    def tls_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._context is None:
                from radmin.tls import client_context

                self._check_identity_files()
                self._context = client_context(self.home.key, self.home.cert)
            return self._context

    def _check_identity_files(self) -> None:
        """Both files exist and the key is owner-only, as ssh insists for its own keys:
        a key others can read is as good as theirs. One stat of the key, on every start."""
        try:
            key_mode = os.stat(self.home.key).st_mode
        except (FileNotFoundError, NotADirectoryError):
            key_mode = None
        if key_mode is None or not self.home.cert.exists():
            raise TransportError(
                f"no client identity in {self.home.path}: run 'radmin-cli keygen' first"
            )
        problem = key_mode_problem(self.home.key, key_mode)
        if problem:
            raise TransportError(f"UNPROTECTED PRIVATE KEY FILE! {problem}")

    def digest_cache(self):
        """SHA-256s of local files by (dev, inode, size, mtime, ctime): a re-upload of an
        unchanged file does not read it again (radmin/hashing.py)."""
        with self._lock:
            if self._digests is None:
                from radmin.hashing import FileDigestCache

                self._digests = FileDigestCache(str(self.home.digests))
            return self._digests

    def own_fingerprint(self) -> str:
        from radmin.identity import cert_file_fingerprint

        return cert_file_fingerprint(self.home.cert)


class PingResult(namedtuple("PingResult", "version protocol client rtt_s connect_s")):
    """`client`: the name the daemon knows us by; `rtt_s`: one request/reply on the open
    connection; `connect_s`: TCP + TLS + host key check + hello."""

    __slots__ = ()


class ExecResult(
    namedtuple(
        "ExecResult",
        "exit_code signal timed_out cancelled duration_s stdout stderr",
        defaults=(b"", b""),
    )
):
    """`exit_code` is None when `signal` ended the command; `stdout`/`stderr` are filled
    by Connection.run() and empty when the output was streamed to callbacks."""

    __slots__ = ()

    @property
    def status(self) -> int:
        """The shell's convention: the exit code, or 128 + the signal number."""
        if self.exit_code is not None:
            return self.exit_code
        return 128 + (self.signal or 0)


OutputCallback = Callable[[bytes], None]


class PutResult(namedtuple("PutResult", "status path bytes sha256 duration_s")):
    """`status`: "changed" or "unchanged"; `path`: where the file is on the host;
    `bytes`: bytes transferred (0 when unchanged or only the metadata changed)."""

    __slots__ = ()


def connect(target: Target, options: ClientOptions) -> Connection:
    conn = Connection(target, options)
    try:
        conn.open()
    except BaseException:
        conn.close()
        raise
    return conn


class Connection:
    """One authenticated connection to one daemon; requests run one after another."""

    def __init__(self, target: Target, options: ClientOptions):
        self.target = target
        self.options = options
        self.frames: FrameSocket | None = None
        self.server_fingerprint = ""
        self.client_name = ""
        self.server_software = ""
        self.connect_s = 0.0
        self._hello_pending = False

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.frames is not None:
            self.frames.close()
            self.frames = None

    # -- opening -----------------------------------------------------------------------

    def open(self) -> None:
        started = time.monotonic()
        context = self.options.tls_context()
        deadline = started + self.options.connect_timeout
        raw = self._tcp_connect(deadline)
        tls = context.wrap_socket(raw, do_handshake_on_connect=False)
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self._wait(tls, False, deadline)
                except ssl.SSLWantWriteError:
                    self._wait(tls, True, deadline)
        except (ssl.SSLError, OSError) as exc:
            tls.close()
            raise TransportError(_describe_failure(exc, "TLS handshake failed")) from None
        except BaseException:
            tls.close()
            raise
        tls.settimeout(self.options.connect_timeout)
        self.frames = FrameSocket(tls)
        self.server_fingerprint = fingerprint(tls.getpeercert(binary_form=True))
        self._check_host_key()
        # HELLO goes out now; its answer is read with the first reply (one round trip less).
        self._send_json(
            FrameType.HELLO,
            {"protocols": [PROTOCOL_VERSION], "software": f"radmin-cli/{__version__}"},
        )
        self._hello_pending = True
        self.connect_s = time.monotonic() - started

    def _tcp_connect(self, deadline: float) -> socket.socket:
        """Connect to the first address that answers, watching the cancel fd throughout."""
        target = self.target
        try:
            addresses = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise TransportError(f"cannot resolve {target.host}: {exc.strerror}") from None
        error = "no address"
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                code = sock.connect_ex(address)
                if code == errno.EINPROGRESS:
                    self._wait(sock, True, deadline, "connection timed out")
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code == 0:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    return sock
                error = "connection refused" if code == errno.ECONNREFUSED else os.strerror(code)
            except BaseException:
                sock.close()
                raise
            sock.close()
        raise TransportError(error)

    def _wait(
        self, sock: socket.socket, for_write: bool, deadline: float | None, what: str = "timed out"
    ) -> None:
        """Wait until `sock` is ready; raise Cancelled on Ctrl-C, TransportError at the deadline."""
        interest = {sock.fileno(): select.POLLOUT if for_write else select.POLLIN}
        cancel_fd = self.options.cancel_fd
        if cancel_fd is not None:
            interest[cancel_fd] = select.POLLIN
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = wait_ready(interest, timeout)
        if cancel_fd is not None and cancel_fd in ready:
            raise Cancelled("cancelled")
        if not ready:
            raise TransportError(what)

    def _check_host_key(self) -> None:
        presented, options = self.server_fingerprint, self.options
        if options.host_fingerprint:
            if presented != options.host_fingerprint:
                raise HostKeyError(
                    f"host key mismatch for {self.target.host_port}: the daemon presented "
                    f"{presented}, --host-fingerprint expects {options.host_fingerprint}"
                )
            return
        if options.known_hosts.verify(self.target.host_port, presented, options.strict_host_key):
            options.warn(
                f"Warning: permanently added {self.target.host_port} ({presented}) to "
                f"{options.known_hosts.path}"
            )

    # -- frames with errors translated -------------------------------------------------

    def _send_json(self, frame_type: FrameType, obj: dict[str, Any]) -> None:
        try:
            self.frames.send_json(frame_type, obj)
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(_describe_failure(exc, "connection lost")) from None

    def _recv_json(
        self, *expected: FrameType, long_wait: bool = False
    ) -> tuple[FrameType, dict[str, Any]]:
        """Receive a control frame; an ERROR frame from the daemon becomes an exception.

        Waits up to the connect timeout, or without limit with `long_wait` (the RESULT of
        a large upload comes after the daemon's fsync), and always returns on Ctrl-C.
        """
        timeout = None if long_wait else self.options.connect_timeout
        if self.options.cancel_fd is not None and not self.frames.buffered:
            deadline = None if timeout is None else time.monotonic() + timeout
            self._wait(self.frames.sock, False, deadline)
        self.frames.sock.settimeout(timeout)
        try:
            frame_type, message = self.frames.recv_json(*expected, FrameType.ERROR)
        except ConnectionClosed as exc:
            if self._hello_pending:
                raise TransportError(self._closed_during_hello()) from None
            raise TransportError(str(exc)) from None
        except ProtocolError as exc:
            raise TransportError(f"protocol error: {exc}") from None
        except (ssl.SSLEOFError, ConnectionResetError) as exc:
            if self._hello_pending:
                raise TransportError(self._closed_during_hello()) from None
            raise TransportError(_describe_failure(exc, "connection lost")) from None
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(_describe_failure(exc, "connection lost", self.options)) from None
        if frame_type is FrameType.ERROR:
            code = message.get("code")
            text = str(message.get("message", "no reason given"))
            if code == "not_authorized":
                raise TransportError(f"not authorized by daemon: {text}")
            raise TransportError(f"daemon reported a {code} error: {text}")
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

    def _finish_hello(self) -> None:
        if not self._hello_pending:
            return
        _, hello = self._recv_json(FrameType.HELLO)
        self._hello_pending = False
        self.client_name = str(hello.get("client", ""))
        self.server_software = str(hello.get("software", ""))

    def request(self, op: str, **params: Any) -> None:
        """Send a REQUEST (and collect the hello answer if it is still pending)."""
        if self.options.run_id is not None:
            params["run_id"] = self.options.run_id
        self._send_json(FrameType.REQUEST, {"op": op, **params})
        self._finish_hello()

    def result(self, long_wait: bool = False) -> dict[str, Any]:
        """Wait for the RESULT that ends the current request."""
        _, reply = self._recv_json(FrameType.RESULT, long_wait=long_wait)
        return self._check(reply)

    @staticmethod
    def _check(reply: dict[str, Any]) -> dict[str, Any]:
        if not reply.get("ok"):
            raise RemoteError(str(reply.get("error", "failed")), str(reply.get("message", "")))
        return reply

    # -- operations --------------------------------------------------------------------

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

    def exec(
        self,
        command: str,
        *,
        stdin: bytes | int | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run `command` with `/bin/sh -c` on the host, streaming its output to callbacks.

        stdin: None sends none (EOF at once), bytes are sent then EOF, an int is a file
        descriptor streamed until its EOF. When the options' cancel fd becomes readable
        the command is cancelled (the daemon kills its process group).
        """
        self.request(
            "exec",
            command=command,
            cwd=cwd,
            env=env or {},
            timeout=timeout,
            stdin=stdin is not None,
        )
        frame_type, reply = self._recv_json(FrameType.PROCEED, FrameType.RESULT)
        if frame_type is FrameType.RESULT:
            self._check(reply)
            raise TransportError("protocol error: exec ended without starting")
        ignore: OutputCallback = lambda data: None  # noqa: E731
        window = int(reply.get("stdin_window", 0))
        stream = _ExecStream(self, stdin, window, on_stdout or ignore, on_stderr or ignore)
        try:
            result = stream.run()
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(_describe_failure(exc, "connection lost")) from None
        except ConnectionClosed as exc:
            raise TransportError(f"connection lost: {exc}") from None
        except ProtocolError as exc:
            raise TransportError(f"protocol error: {exc}") from None
        return ExecResult(
            exit_code=result.get("exit_code"),
            signal=result.get("signal"),
            timed_out=bool(result.get("timed_out")),
            cancelled=bool(result.get("cancelled")),
            duration_s=float(result.get("duration_s", 0.0)),
        )

    def run(self, command: str, **options: Any) -> ExecResult:
        """exec() that collects stdout and stderr into the result (for small outputs)."""
        out, err = bytearray(), bytearray()
        result = self.exec(command, on_stdout=out.extend, on_stderr=err.extend, **options)
        return result._replace(stdout=bytes(out), stderr=bytes(err))

    def put(
        self,
        local_path: str,
        remote_path: str | None = None,
        *,
        mode: int | None = None,
        owner: str | None = None,
        group: str | None = None,
        sha256: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> PutResult:
        """Upload a file; the host ends with its old file or the complete verified one.

        sha256: the file's digest if already known (a fan-out hashes once for all hosts).
        Otherwise it is computed while the file streams out and sent after it -- or, when
        the host has a file of the same size, computed while the daemon hashes its copy,
        so an unchanged file costs one hash on each side, at the same time.
        progress: called with the number of bytes just sent.
        """
        started = time.monotonic()
        info = os.stat(local_path)
        if sha256 is None:
            sha256 = self.options.digest_cache().get(info)
        self.request(
            "put",
            path=remote_path,
            name=os.path.basename(local_path),
            size=info.st_size,
            sha256=sha256,
            mode=mode,  # None: the host keeps an existing file's bits
            local_mode=info.st_mode & 0o7777,
            owner=owner,
            group=group,
        )
        frame_type, reply = self._recv_json(FrameType.PROCEED, FrameType.RESULT)
        if frame_type is FrameType.PROCEED and reply.get("digest_first"):
            if sha256 is None:
                from radmin.hashing import file_sha256

                sha256 = file_sha256(local_path, self.options.digest_cache())
            self._send_json(FrameType.DIGEST, {"sha256": sha256})
            frame_type, reply = self._recv_json(FrameType.PROCEED, FrameType.RESULT, long_wait=True)
        sent = 0
        if frame_type is FrameType.PROCEED:
            sent, streamed_digest = self._send_file(
                local_path, info.st_size, progress, hash_it=sha256 is None
            )
            if sha256 is None and streamed_digest is not None:
                sha256 = streamed_digest
                self._send_json(FrameType.DIGEST, {"sha256": sha256})
            reply = self.result(long_wait=True)
        else:
            self._check(reply)
        return PutResult(
            status=str(reply.get("status")),
            path=str(reply.get("path")),
            bytes=sent,
            sha256=sha256 or str(reply.get("sha256")),
            duration_s=time.monotonic() - started,
        )

    def _send_file(
        self, local_path: str, size: int, progress: Callable[[int], None] | None, hash_it: bool
    ) -> tuple[int, str | None]:
        """Stream exactly `size` bytes, hashing them if asked; stop early if the daemon
        already answered. Returns the bytes sent and their SHA-256 (None if stopped)."""
        import hashlib

        digest = hashlib.sha256() if hash_it else None
        buffer = bytearray(MAX_DATA)
        view = memoryview(buffer)
        sent = 0
        try:
            with open(local_path, "rb", buffering=0) as f:
                before = os.fstat(f.fileno())
                while sent < size:
                    n = f.readinto(view[: min(MAX_DATA, size - sent)])
                    if not n:
                        self._send_json(FrameType.CANCEL, {})
                        raise TransportError(f"{local_path} shrank while it was being sent")
                    if digest is not None:
                        digest.update(view[:n])
                    self.frames.send_frame(FrameType.FILE_DATA, view[:n])
                    sent += n
                    if progress is not None:
                        progress(n)
                    if self._answered_early():
                        self._send_json(FrameType.CANCEL, {})
                        return sent, None
                after = os.fstat(f.fileno())
        except (OSError, ssl.SSLError) as exc:
            if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
                raise
            raise TransportError(_describe_failure(exc, "connection lost")) from None
        if digest is None:
            return sent, None
        hexdigest = digest.hexdigest()
        from radmin.hashing import version_key

        if version_key(before) == version_key(after) and after.st_size == size:
            self.options.digest_cache().remember(before, hexdigest)
        return sent, hexdigest

    def _answered_early(self) -> bool:
        """Has the daemon sent its RESULT before all data was sent (disk full, say)?"""
        sock = self.frames.sock
        return bool(sock.pending()) or bool(wait_ready({sock.fileno(): select.POLLIN}, 0))


class _ExecStream:
    """The client half of an exec: forward stdin, deliver output, watch for cancel.

    One poll() loop over the socket, the stdin source and the cancel fd. Stdin goes
    out only within the window the daemon grants (PROCEED, then WINDOW frames), so the
    daemon never buffers more than that and always keeps reading the socket -- which is
    how it notices at once when this client goes away.
    """

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
            interest[self.stdin_fd] = select.POLLIN
        if self.cancel_fd is not None and self.cancel_sent_at is None:
            interest[self.cancel_fd] = select.POLLIN
        timeout = None
        if self.cancel_sent_at is not None:
            timeout = max(0.0, self.cancel_sent_at + CANCEL_WAIT - time.monotonic())
            if timeout == 0:
                raise TransportError("cancelled, but the daemon did not confirm in time")
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
        elif frame_type is FrameType.WINDOW:
            self.credit += int(self.frames_json(frame_type, payload).get("bytes", 0))
        elif frame_type is FrameType.RESULT:
            self.result = Connection._check(self.frames_json(frame_type, payload))
        elif frame_type is FrameType.ERROR:
            message = self.frames_json(frame_type, payload)
            raise TransportError(f"daemon reported a protocol error: {message.get('message')}")
        else:
            raise TransportError(f"protocol error: unexpected {frame_type.name} during exec")

    @staticmethod
    def frames_json(frame_type: FrameType, payload: memoryview) -> dict[str, Any]:
        from radmin.protocol import decode_json

        try:
            return decode_json(frame_type, payload)
        except ProtocolError as exc:
            raise TransportError(f"protocol error: {exc}") from None


CANCEL_WAIT = 5.0  # seconds to wait for the daemon's RESULT after a CANCEL


def _describe_failure(exc: BaseException, what: str, options: ClientOptions | None = None) -> str:
    """One line a sysadmin understands, for an exception from the TLS/socket layer."""
    reason = getattr(exc, "reason", None)
    if reason in _REFUSED_ALERTS:
        hint = ""
        if options is not None:
            with contextlib.suppress(OSError, ValueError):
                hint = (
                    f" (add this client's certificate {options.own_fingerprint()} to its clients:)"
                )
        return f"not authorized by daemon{hint}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionResetError):
        return f"{what}: connection reset by peer"
    if isinstance(exc, ssl.SSLError):
        return f"{what}: {exc.reason or exc}"
    return f"{what}: {getattr(exc, 'strerror', None) or exc}"
