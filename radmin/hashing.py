"""SHA-256 of files, streamed, with a cache that can never answer with a stale digest.

The cache key is (device, inode, size, mtime_ns, ctime_ns) of the open file. Any write
to a file changes its ctime, and ctime cannot be set back from user space (utime()
sets mtime, never ctime), so a changed file always misses; a file replaced by another
has another inode. The key is taken from fstat() of the descriptor being hashed, before
and after reading: if the file changed while it was read, nothing is cached.

The daemon uses the cache to answer a repeated upload `unchanged` without reading the
whole destination again (Ansible's copy and `rsync -c` re-read it every time); the
client keeps one in its home (`digests`) so it does not re-read the local file either.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict

CHUNK = 1024 * 1024
_CACHE_ENTRIES = 4096


def version_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """Which file, in which version: any write changes ctime, which cannot be set back."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class DigestCache:
    """A bounded, thread-safe map from file identity and version to SHA-256."""

    def __init__(self, entries: int = _CACHE_ENTRIES):
        self._entries = entries
        self._digests: OrderedDict[tuple[int, ...], str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, st: os.stat_result) -> str | None:
        with self._lock:
            digest = self._digests.get(version_key(st))
            if digest is not None:
                self._digests.move_to_end(version_key(st))
            return digest

    def remember(self, st: os.stat_result, digest: str) -> None:
        with self._lock:
            self._digests[version_key(st)] = digest
            self._digests.move_to_end(version_key(st))
            while len(self._digests) > self._entries:
                self._digests.popitem(last=False)


class FileDigestCache(DigestCache):
    """The client's cache, kept in a small JSON file between runs (best effort)."""

    def __init__(self, path: str, entries: int = 256):
        super().__init__(entries)
        self.path = path
        try:
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)
            for key, digest in list(stored.items())[-entries:]:
                self._digests[tuple(int(part) for part in key.split())] = str(digest)
        except (OSError, ValueError, AttributeError):
            pass  # no cache yet, or a damaged one: start empty

    def remember(self, st: os.stat_result, digest: str) -> None:
        super().remember(st, digest)
        with self._lock:
            stored = {" ".join(map(str, key)): value for key, value in self._digests.items()}
        # Per thread too: a fan-out's threads (get from many hosts) remember at once.
        temp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(stored, f)
            os.replace(temp, self.path)
        except OSError:
            pass


def file_sha256(path: str, cache: DigestCache | None = None) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd_sha256(fd, cache)
    finally:
        os.close(fd)


def fd_sha256(fd: int, cache: DigestCache | None = None) -> str:
    """SHA-256 of an open file from its start (the daemon hashes a descriptor it opened
    without following symlinks, so the file hashed is the file checked)."""
    before = os.fstat(fd)
    if cache is not None and (known := cache.get(before)) is not None:
        return known
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    offset = 0
    while n := os.preadv(fd, [buffer], offset):
        digest.update(view[:n])
        offset += n
    hexdigest = digest.hexdigest()
    if cache is not None and version_key(os.fstat(fd)) == version_key(before):
        cache.remember(before, hexdigest)
    return hexdigest
