"""A client's side of the helper: reach it (starting it if need be), open a session to
one daemon through it, or ask it for its status or to stop.

`connect_through_helper` returns the same `Connection` a direct connect would, built on
a FrameSocket over the Unix socket: every operation runs unchanged, frame for frame.
Whatever goes wrong before the helper has answered the OPEN -- no helper, one that
cannot start, one that dies or expires under our feet -- returns None and the caller
connects directly: nothing has been sent to a daemon yet, so nothing can run twice.
What the helper's own connect raised comes back as the same exception type (errors.py),
so exit statuses and messages are those of a direct connection.

No ssl socket or certificate work here: a client through the helper never loads its key
nor handshakes (that, and the imports it needs, is what the helper saves).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time

from radmin import __version__
from radmin import errors as _errors
from radmin.mux import DEFAULT_IDLE_TIMEOUT, LOG, MUX_FIELD, START_WAIT_S, MuxDir
from radmin.protocol import FrameSocket, FrameType, wait_ready

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from radmin.client.connection import Connection
    from radmin.client.options import ClientOptions
    from radmin.hosts import Target
    from radmin.identity import ClientHome

# Exception types the helper may name in an error answer: only these are rebuilt.
_RAISABLE = (_errors.TransportError, _errors.Cancelled)
_UCRED = struct.Struct("3i")


class HelperGone(Exception):
    """The helper could not be reached or vanished before answering: connect directly."""


def dial(home: ClientHome) -> socket.socket | None:
    """A connected socket to the home's helper, or None when none listens."""
    mux = MuxDir.open(home, create=False)
    if mux is None:
        return None
    try:
        return _dial(mux)
    finally:
        mux.close()


def _dial(mux: MuxDir) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(mux.sock_path)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
            return None  # no helper, or a dead one's leftover: start one or go direct
        raise HelperGone(f"cannot reach the helper: {exc.strerror}") from None
    uid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))[1]
    if uid != os.getuid():  # only we can create names in a 0700 folder: belt and braces
        sock.close()
        raise HelperGone(f"the helper's socket belongs to uid {uid}")
    return sock


def connect_through_helper(target: Target, options: ClientOptions) -> Connection | None:
    """An open Connection through the helper (started when none runs), or None."""
    from radmin.client.connection import Connection

    started = time.monotonic()
    try:
        frames, answer = _open(target, options)
    except (HelperGone, OSError):  # no helper to be had (a read-only home...): go direct
        return None
    for warning in answer.get("warnings", []):
        options.warn(str(warning))
    return Connection(
        target,
        options,
        frames,
        str(answer.get("fingerprint", "")),
        time.monotonic() - started,
    )


def _open(target: Target, options: ClientOptions) -> tuple[FrameSocket, dict[str, Any]]:
    sock = dial(options.home)
    if sock is None:
        start_helper(options.home, options.mux_idle_timeout)
        sock = dial(options.home)
        if sock is None:
            raise HelperGone("no helper after starting one")
    frames = FrameSocket(sock, initial_buffer=16 * 1024)
    try:
        answer = _ask(frames, _open_message(target, options), options.connect_timeout + 5)
    except BaseException:
        frames.close()
        raise
    if answer.get(MUX_FIELD) == "error":
        frames.close()
        raise _rebuilt(answer)
    if answer.get(MUX_FIELD) != "ok":
        frames.close()
        raise HelperGone(f"unexpected answer from the helper: {answer.get(MUX_FIELD)!r}")
    frames.cancel_fd = options.cancel_fd
    return frames, answer


def _open_message(target: Target, options: ClientOptions) -> dict[str, Any]:
    """Everything that decides trust and timing travels: the helper pools by it."""
    return {
        MUX_FIELD: "open",
        "label": target.label,
        "host": target.host,
        "port": target.port,
        "connect_timeout": options.connect_timeout,
        "strict_host_key": options.strict_host_key,
        "host_fingerprint": options.host_fingerprint,
        "heartbeat": options.heartbeat_interval,
        "software": f"radmin-cli/{__version__}",
    }


def _ask(frames: FrameSocket, message: dict[str, Any], wait_s: float) -> dict[str, Any]:
    """Send one HELLO to the helper and return its answering HELLO; HelperGone if it
    closes first or says something else. Ctrl-C (the cancel fd) is honoured."""
    try:
        frames.send_json(FrameType.HELLO, message)
        frames.sock.settimeout(wait_s)
        _, answer = frames.recv_json(FrameType.HELLO, deadline=time.monotonic() + wait_s)
    except (OSError, _errors.ConnectionClosed, _errors.ProtocolError) as exc:
        raise HelperGone(f"the helper did not answer: {exc}") from None
    return answer


def _rebuilt(answer: dict[str, Any]) -> BaseException:
    """The exception the helper's connect raised, as the same type here."""
    kind = getattr(_errors, str(answer.get("error", "")), None)
    message = str(answer.get("message", "the helper could not connect"))
    if isinstance(kind, type) and issubclass(kind, _RAISABLE):
        return kind(message)
    return _errors.TransportError(message)


# -- starting, status, stop ------------------------------------------------------------


def start_helper(home: ClientHome, idle_timeout: float | None) -> bool:
    """Start a detached helper for `home` and wait (up to START_WAIT_S) until it listens
    -- or says another one already does. False if it could not be started."""
    import subprocess
    import sys

    mux = MuxDir.open(home, create=True)
    if mux is None:
        return False
    try:
        log_fd = mux.open_file(LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    finally:
        mux.close()
    seconds = DEFAULT_IDLE_TIMEOUT if idle_timeout is None else idle_timeout
    command = [sys.executable, "-m", "radmin.mux.helper", "--detach"]
    command += ["--home", str(home.path), "--idle-timeout", f"{seconds:g}"]
    try:
        helper = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_fd,
            start_new_session=True,
        )
    except OSError:
        return False
    finally:
        os.close(log_fd)
    assert helper.stdout is not None
    try:
        # "ready" once it listens; EOF if it found another helper alive or failed.
        if wait_ready({helper.stdout.fileno(): select.POLLIN}, START_WAIT_S):
            os.read(helper.stdout.fileno(), 64)
        return True
    finally:
        helper.stdout.close()
        helper.wait()  # the first fork: it exits as soon as the helper is detached


def query(home: ClientHome, what: str) -> dict[str, Any] | None:
    """Ask the helper for its "status" or to "stop": its answer, or None if none runs."""
    try:
        sock = dial(home)
    except HelperGone:
        return None
    if sock is None:
        return None
    frames = FrameSocket(sock)
    try:
        return _ask(frames, {MUX_FIELD: what}, 10.0)
    except HelperGone:
        return None
    finally:
        frames.close()
