"""What each client holds right now, so no single client can take the daemon from others.

`max_connections` bounds the daemon as a whole; these per-client counts bound what one
authenticated identity -- perhaps a stolen low-privilege key -- can hold at once:
connections, running commands, uploads in progress. Over a limit the request is
refused with a clear reason (exec exits 126, put 1), and what the client already holds
keeps working.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from radmin.errors import RequestError


class LimitReached(RequestError):
    """The client holds as many of something as its per-client limit allows."""

    code = "limit"


class Usage:
    """Counts by (client name, resource), thread-safe; entries vanish at zero."""

    def __init__(self) -> None:
        self._held: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def acquire(self, client: str, resource: str, limit: int) -> None:
        with self._lock:
            if self._held[client, resource] >= limit:
                raise LimitReached(
                    f"client {client!r} already has {limit} {resource.replace('_', ' ')} "
                    f"(limits.per_client.max_{resource}); try again when some have ended"
                )
            self._held[client, resource] += 1

    def release(self, client: str, resource: str) -> None:
        with self._lock:
            self._held[client, resource] -= 1
            if self._held[client, resource] <= 0:
                del self._held[client, resource]

    @contextmanager
    def hold(self, client: str, resource: str, limit: int) -> Iterator[None]:
        self.acquire(client, resource, limit)
        try:
            yield
        finally:
            self.release(client, resource)

    def held(self, client: str, resource: str) -> int:
        with self._lock:
            return self._held[client, resource]
