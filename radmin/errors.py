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


class RequestError(RadminError):
    """A well-formed request the daemon refuses or cannot carry out.

    `code` travels in the RESULT frame so programs can tell refusals apart from failures
    without parsing the message.
    """

    code = "failed"
    # Set by an operation that must bring the stream back in step after the RESULT.
    after_reply = None


class BadRequest(RequestError):
    """A request field has a wrong type or value (bad env name, relative path...)."""

    code = "bad_request"


class PolicyDenied(RequestError):
    """The client is authenticated but its `allow:` rules do not list this action."""

    code = "denied"


class NotAuthorized(RequestError):
    """The certificate was listed when the handshake began but no longer is (reload)."""

    code = "not_authorized"


class TransportError(RadminError):
    """The client could not reach, authenticate or speak to a host (exit status 255)."""


class HostKeyError(TransportError):
    """The daemon's fingerprint is unknown (strict mode), changed or not the pinned one."""


class ConfigError(RadminError):
    """A config file is invalid; carries every problem, each as `FILE:LINE: KEY: what`."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems
