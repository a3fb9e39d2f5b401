"""SHA-256 of files, streamed, with a cache that can never answer with a stale digest.

The cache key is (device, inode, size, mtime_ns, ctime_ns) of the open file. Any write
to a file changes its ctime, and ctime cannot be set back from user space (utime()
sets mtime, never ctime), so a changed file always misses; a file replaced by another
has another inode. The key is taken from fstat() of the descriptor being hashed, before
and after reading: if the file changed while it was read, nothing is cached.

The daemon uses the cache to answer a repeated upload `unchanged` without reading the
whole destination again (Ansible's copy and `rsync -c` re-read it every time).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict

CHUNK = 1024 * 1024
_CACHE_ENTRIES = 4096


def _key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class DigestCache:
    """A bounded, thread-safe map from file identity and version to SHA-256."""

    def __init__(self, entries: int = _CACHE_ENTRIES):
        self._entries = entries
        self._digests: OrderedDict[tuple[int, ...], str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, st: os.stat_result) -> str | None:
        with self._lock:
            digest = self._digests.get(_key(st))
            if digest is not None:
                self._digests.move_to_end(_key(st))
            return digest

    def remember(self, st: os.stat_result, digest: str) -> None:
        with self._lock:
            self._digests[_key(st)] = digest
            self._digests.move_to_end(_key(st))
            while len(self._digests) > self._entries:
                self._digests.popitem(last=False)


def file_sha256(path: str, cache: DigestCache | None = None) -> str:
    with open(path, "rb", buffering=0) as f:
        before = os.fstat(f.fileno())
        if cache is not None and (known := cache.get(before)) is not None:
            return known
        digest = hashlib.sha256()
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            digest.update(view[:n])
        hexdigest = digest.hexdigest()
        if cache is not None and _key(os.fstat(f.fileno())) == _key(before):
            cache.remember(before, hexdigest)
    return hexdigest
