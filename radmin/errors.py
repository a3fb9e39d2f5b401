"""Every failure radmin can name, as a type.

Errors are raised where they are detected and turned into a frame, a log line or an
exit code in exactly one place each (the daemon's session loop, the CLI's main).
"""

from __future__ import annotations


class RadminError(Exception):
    """Base class: a failure with a message fit for a sysadmin's terminal."""


class ProtocolError(RadminError):
    """The peer sent something that is not valid radmin protocol; the connection ends."""

    code = "protocol"


class UnsafeMessage(ProtocolError):
    """A control frame is well-formed JSON but holds a value radmin refuses: NaN or
    Infinity, an integer too long to be a count, a string that is not encodable UTF-8 or
    holds a NUL, nesting too deep to be a radmin message.

    The frame was read whole, so the stream is still in step: the daemon answers such a
    REQUEST with a `bad_request` RESULT and goes on; anywhere else it is a protocol error.
    """


class FrameTimeout(ProtocolError):
    """A frame began but did not arrive whole in time (`limits.frame_timeout`): a peer
    dripping bytes cannot hold a connection by resetting a per-read timeout."""


class ConnectionClosed(RadminError):
    """The peer went away (EOF or reset) where a frame was expected."""

    def __init__(self, message: str, truncated: bool = False):
        super().__init__(message)
        self.truncated = truncated


class PeerSilent(ConnectionClosed):
    """Nothing at all from the peer -- not even a HEARTBEAT -- for three heartbeat
    intervals: it is dead, partitioned away or frozen (SIGSTOP, where the kernel still
    ACKs and TCP keepalive cannot tell). `activity` says what we were doing."""

    def __init__(self, silent_s: float, activity: str):
        super().__init__(f"no answer for {silent_s:g} s while {activity}")
        self.silent_s = silent_s
        self.activity = activity


class RequestError(RadminError):
    """A well-formed request the daemon refuses or cannot carry out.

    `code` travels in the RESULT frame so programs can tell refusals apart from failures
    without parsing the message.
    """

    code = "failed"


class BadRequest(RequestError):
    """A request field has a wrong type or value (bad env name, relative path...)."""

    code = "bad_request"


class PolicyDenied(RequestError):
    """The client is authenticated but its `allow:` rules do not list this action."""

    code = "denied"


class NotAuthorized(RequestError):
    """The certificate was listed when the handshake began but no longer is (reload)."""

    code = "not_authorized"


# -- the client's side: one hierarchy, mapped from socket/TLS errors in one place --------
# (radmin/client/connection.py, `transport_error`), so API users branch on types and
# never on message text.


class TransportError(RadminError):
    """The client could not reach, authenticate or speak to a host (exit status 255)."""


class Unreachable(TransportError):
    """No TCP connection: the name does not resolve, the port refuses, no route."""


class ConnectTimeout(TransportError):
    """TCP connect + TLS + hello did not finish within the connect timeout."""


class DaemonBusy(TransportError):
    """The daemon refused to serve this connection for a limit (limits.max_connections,
    limits.per_client): nothing ran, so trying again later is safe (--retry does)."""


class ReplyTimeout(TransportError):
    """Connected, but the daemon did not answer in time."""


class TrustError(TransportError):
    """TLS could not be established, or one side did not accept the other's identity."""


class HostKeyError(TrustError):
    """The daemon's fingerprint is unknown (strict mode), changed or not the pinned one."""


class HostKeyChanged(HostKeyError):
    """known_hosts names another key for this host: someone may be impersonating it."""


class NotAuthorizedByDaemon(TrustError):
    """The daemon does not list this client's certificate (or no longer does)."""


class RemoteProtocolError(TransportError):
    """The daemon sent something that is not radmin protocol, or reported an ERROR."""


class ConnectionLost(TransportError):
    """The connection broke (reset, EOF) in the middle of a request."""


class RemoteError(RadminError):
    """The daemon refused or failed a request: `code` is denied, bad_request, limit,
    not_authorized or failed (exit status 126 for exec, 1 otherwise)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class Cancelled(RadminError):
    """The user pressed Ctrl-C (the options' cancel fd became readable)."""


class LocalFileError(RadminError):
    """A local file could not be read or written as a transfer needs (exit status 1)."""


class StartupError(RadminError):
    """The daemon cannot start, or apply a reload, as configured: a log file it cannot
    open, identities it cannot load, a folder it cannot create, an address it cannot
    listen on. The message names which, for the admin's terminal or the log."""


class ConfigError(RadminError):
    """A config file is invalid; carries every problem, each as `FILE:LINE: KEY: what`."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class CommandFailed(RadminError):
    """`run(..., check=True)`: the command exited non-zero (subprocess's
    CalledProcessError); `result` is the ExecResult with its output."""

    def __init__(self, command: str, result: object):
        status = getattr(result, "returncode", "?")
        super().__init__(f"command {command!r} exited with status {status}")
        self.command = command
        self.result = result
