"""ping: an authenticated round trip that tells the client who the daemon thinks it is."""

from __future__ import annotations

from radmin import PROTOCOL_VERSION, __version__
from radmin.ops import Outcome, Request


def run(request: Request) -> Outcome:
    return Outcome(
        {"version": __version__, "protocol": PROTOCOL_VERSION, "client": request.client.name}
    )
