"""Daemon-side operations. Each module does one thing and returns an `Outcome`.

The session (radmin/server.py) owns the connection, authentication and dispatch; an
operation receives an authenticated `Request` and either returns an `Outcome` or raises
a `RequestError` -- it never writes the RESULT frame itself.
"""

from __future__ import annotations

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


def run_as_user(run_as: str | None) -> pwd.struct_passwd:
    """The user a client's commands and files belong to: its run_as, else the daemon's."""
    if run_as is None:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam(run_as)
    except KeyError:
        raise RequestError(f"run_as user {run_as!r} does not exist on this host") from None
