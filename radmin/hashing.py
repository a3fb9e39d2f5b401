"""Streaming SHA-256 of a file, shared by the client (before a put) and the daemon
(to answer `unchanged`). hashlib releases the GIL on large updates, so a hash runs on
the second core beside network I/O."""

from __future__ import annotations

import hashlib

CHUNK = 1024 * 1024


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()
