"""Daemon-side operations. Each module does one thing and returns an `Outcome`.

The session (radmin/server.py) owns the connection, authentication and dispatch; an
operation receives an authenticated `Request` and either returns an `Outcome` or raises
a `RequestError` -- it never writes the RESULT frame itself.
"""

from __future__ import annotations

import errno
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from radmin.config import ClientPolicy, Config
from radmin.errors import RequestError
from radmin.protocol import FrameSocket
from radmin.running import RunningCommands
from radmin.usage import Usage


@dataclass
class Request:
    """One authenticated request, with the config snapshot it runs under."""

    op: str
    params: dict[str, Any]
    client: ClientPolicy
    config: Config
    conn: FrameSocket
    log: Any  # a structlog BoundLogger with client/peer/request context
    # What the audit event for this request says about it (argv, path, rule, run_as),
    # filled in as it becomes known, so a refusal is logged with what was attempted.
    audit: dict[str, Any] = field(default_factory=dict)
    # What every client holds right now (per-client limits), shared by all sessions.
    usage: Usage = field(default_factory=Usage)
    # Every command the daemon runs: journaled, and ended by the daemon's stop.
    commands: RunningCommands = field(default_factory=RunningCommands)


@dataclass(frozen=True)
class Outcome:
    """What to send in the RESULT frame, and what to add to the request's log event."""

    reply: dict[str, Any]
    log: dict[str, Any] = field(default_factory=dict)
    # Runs once the RESULT is sent, to bring the stream back in step (e.g. discard input
    # the client sent before it saw the RESULT).
    after_reply: Callable[[], None] | None = None
    # The RequestError code when the operation failed after it had started streaming
    # (the RESULT says ok: false, and after_reply still runs).
    error: str | None = None

    @classmethod
    def failure(cls, exc: RequestError, after_reply: Callable[[], None] | None) -> Outcome:
        return cls({"message": str(exc)}, after_reply=after_reply, error=exc.code)

    def result_frame(self) -> dict[str, Any]:
        """The RESULT's fields: the reply, with ok and (for a failure) the error code."""
        if self.error is not None:
            return {"ok": False, "error": self.error, **self.reply}
        return {"ok": True, **self.reply}


OUT_OF_DESCRIPTORS = (
    "the daemon is out of file descriptors (too many connections and commands at once): "
    "try again later; its open-file limit (ulimit -n, LimitNOFILE=) may be too low"
)


class OutOfDescriptors(RequestError):
    """EMFILE/ENFILE: new work is refused (RESULT `failed`), the session goes on."""

    code = "failed"

    def __init__(self) -> None:
        super().__init__(OUT_OF_DESCRIPTORS)


def out_of_descriptors(exc: OSError | None = None) -> bool:
    """Is this error (or, without one, a probe) the process running out of fds?"""
    if exc is not None:
        return exc.errno in (errno.EMFILE, errno.ENFILE)
    try:
        os.close(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    except OSError as probe:
        return probe.errno in (errno.EMFILE, errno.ENFILE)
    return False


def run_as_user(run_as: str | None) -> pwd.struct_passwd:
    """The user a client's commands and files belong to: its run_as, else the daemon's.

    A lookup fails with KeyError also when /etc/passwd cannot be opened -- out of file
    descriptors -- which must not read as "no such user" (nor crash the session)."""
    try:
        return pwd.getpwuid(os.geteuid()) if run_as is None else pwd.getpwnam(run_as)
    except KeyError:
        if out_of_descriptors():
            raise OutOfDescriptors() from None
        if run_as is None:
            raise RequestError("the daemon's own user cannot be looked up") from None
        raise RequestError(f"run_as user {run_as!r} does not exist on this host") from None
