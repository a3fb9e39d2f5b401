"""radmin/hashing.py on its own: digests and their caches, no daemon (milliseconds)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from support import wait_until

from radmin import hashing
from radmin.hashing import (
    CHUNK,
    DigestCache,
    FileDigestCache,
    fd_sha256,
    file_sha256,
    version_key,
)


def fake_stat(ino: int, size: int = 10) -> SimpleNamespace:
    """What version_key reads of an os.stat_result, for a file `ino`."""
    return SimpleNamespace(st_dev=1, st_ino=ino, st_size=size, st_mtime_ns=5, st_ctime_ns=7)


# -- DigestCache: bounded, least recently used goes first -------------------------------


def test_digest_cache_answers_what_it_was_told():
    cache = DigestCache(entries=4)
    assert cache.get(fake_stat(1)) is None
    cache.remember(fake_stat(1), "d1")
    assert cache.get(fake_stat(1)) == "d1"
    assert cache.get(fake_stat(1, size=11)) is None  # another version of the same file
    assert cache.get(fake_stat(2)) is None


@pytest.mark.parametrize(
    ("entries", "steps", "kept", "evicted"),
    [
        # steps: ("r", ino) remembers, ("g", ino) looks up
        (3, [("r", 1), ("r", 2), ("r", 3), ("r", 4)], [2, 3, 4], [1]),
        (3, [("r", 1), ("r", 2), ("r", 3), ("g", 1), ("r", 4)], [1, 3, 4], [2]),
        (3, [("r", 1), ("r", 2), ("r", 3), ("r", 1), ("r", 4)], [1, 3, 4], [2]),
        (2, [("r", 1), ("r", 2), ("r", 3), ("r", 4), ("r", 5)], [4, 5], [1, 2, 3]),
        (1, [("r", 1), ("g", 1), ("r", 2)], [2], [1]),
        (3, [("r", 1), ("g", 9), ("r", 2), ("r", 3), ("r", 4)], [2, 3, 4], [1, 9]),
    ],
)
def test_digest_cache_is_a_bounded_lru(entries, steps, kept, evicted):
    cache = DigestCache(entries=entries)
    for action, ino in steps:
        if action == "r":
            cache.remember(fake_stat(ino), f"d{ino}")
        else:
            cache.get(fake_stat(ino))
    assert len(cache._digests) == entries
    for ino in kept:
        assert cache.get(fake_stat(ino)) == f"d{ino}"
    for ino in evicted:
        assert cache.get(fake_stat(ino)) is None


# -- version_key: any write gives another key -------------------------------------------


def _after_a_clock_tick(path: Path) -> None:
    """Wait until the file system's clock has moved past `path`'s ctime (it is coarse: two
    changes within one tick can share a ctime), so a change now gets a later one."""
    probe = path.with_name(path.name + ".probe")
    before = path.stat().st_ctime_ns

    def ticked() -> bool:
        probe.write_bytes(b"")
        return probe.stat().st_ctime_ns > before

    wait_until(ticked, 10, "the file system clock to tick")
    probe.unlink()


def _append(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"more")


def _overwrite_same_size_and_put_mtime_back(path: Path) -> None:
    st = path.stat()
    _after_a_clock_tick(path)
    with open(path, "r+b") as f:
        f.write(b"X" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # sets mtime back, never ctime


def _truncate_and_write_back(path: Path) -> None:
    data = path.read_bytes()
    _after_a_clock_tick(path)
    path.write_bytes(data)  # same content, same size


def _replace_by_rename(path: Path) -> None:
    other = path.with_name("other")
    other.write_bytes(path.read_bytes())
    os.replace(other, path)


def _chmod(path: Path) -> None:
    _after_a_clock_tick(path)
    path.chmod(0o600)


CHANGES: dict[str, Callable[[Path], None]] = {
    "append": _append,
    "overwrite, same size, mtime set back": _overwrite_same_size_and_put_mtime_back,
    "truncate and write the same bytes back": _truncate_and_write_back,
    "replaced by rename": _replace_by_rename,
    "chmod": _chmod,
}


@pytest.mark.parametrize("change", CHANGES)
def test_version_key_changes_with_any_change_to_the_file(tmp_path, change):
    path = tmp_path / "file"
    path.write_bytes(b"content of some size")
    path.chmod(0o644)
    before = version_key(path.stat())
    CHANGES[change](path)
    assert version_key(path.stat()) != before


def test_version_key_stays_while_the_file_is_only_read(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"content")
    before = version_key(path.stat())
    assert path.read_bytes() == b"content"
    assert version_key(path.stat()) == before
    fd = os.open(path, os.O_RDONLY)
    try:
        assert version_key(os.fstat(fd)) == before  # the descriptor's view is the path's
    finally:
        os.close(fd)


# -- file_sha256 / fd_sha256 ------------------------------------------------------------

SIZES = [0, 1, 4096, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 17]


@pytest.mark.parametrize("size", SIZES)
def test_digests_equal_hashlibs(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "file"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert file_sha256(str(path)) == expected
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, size // 2, os.SEEK_SET)  # from the file's start, wherever the offset is
        assert fd_sha256(fd) == expected
        assert os.lseek(fd, 0, os.SEEK_CUR) == size // 2  # and the offset is left alone
    finally:
        os.close(fd)


def test_a_cached_digest_is_used_and_a_changed_file_misses(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"one")
    cache = DigestCache()
    first = file_sha256(str(path), cache)
    assert cache.get(path.stat()) == first == hashlib.sha256(b"one").hexdigest()
    cache.remember(path.stat(), "planted")  # proves the next answer comes from the cache
    assert file_sha256(str(path), cache) == "planted"
    path.write_bytes(b"two, longer")
    assert file_sha256(str(path), cache) == hashlib.sha256(b"two, longer").hexdigest()


def test_a_file_changed_while_hashed_is_not_cached(tmp_path, monkeypatch):
    path = tmp_path / "file"
    path.write_bytes(os.urandom(CHUNK + 100))
    real_preadv = os.preadv
    calls = []

    def preadv_then_append(fd, buffers, offset):
        n = real_preadv(fd, buffers, offset)
        if not calls:  # another writer, between two reads of the hash
            _append(path)
        calls.append(n)
        return n

    monkeypatch.setattr(hashing.os, "preadv", preadv_then_append)
    cache = DigestCache()
    fd = os.open(path, os.O_RDONLY)
    try:
        before = os.fstat(fd)
        fd_sha256(fd, cache)
    finally:
        os.close(fd)
    assert len(calls) >= 2  # the change came mid-hash
    assert cache.get(before) is None
    assert cache.get(path.stat()) is None
    assert len(cache._digests) == 0


# -- FileDigestCache: kept between runs, survives a damaged file ------------------------


def test_file_digest_cache_keeps_digests_between_runs(tmp_path):
    store, path = tmp_path / "digests", tmp_path / "file"
    path.write_bytes(b"data")
    digest = file_sha256(str(path), FileDigestCache(str(store)))
    assert store.stat().st_mode & 0o777 == 0o600
    assert FileDigestCache(str(store)).get(path.stat()) == digest
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_file_digest_cache_loads_only_its_newest_entries(tmp_path):
    store = tmp_path / "digests"
    first = FileDigestCache(str(store), entries=10)
    for ino in range(10):
        first.remember(fake_stat(ino), f"d{ino}")
    again = FileDigestCache(str(store), entries=3)
    assert [again.get(fake_stat(ino)) for ino in range(10)] == [None] * 7 + ["d7", "d8", "d9"]


DAMAGED = {
    "empty": b"",
    "not JSON": b"{not json",
    "cut short": b'{"1 2 3 4 5": "ab',
    "not UTF-8": b"\xff\xfe\x00",
    "a list": b"[1, 2, 3]",
    "null": b"null",
    "a number": b"42",
    "a key that is not numbers": b'{"a b c": "x"}',
    "a key with a float": b'{"1 2.5 3 4 5": "x"}',
}


@pytest.mark.parametrize("damage", DAMAGED)
def test_file_digest_cache_survives_a_damaged_file(tmp_path, damage):
    store, path = tmp_path / "digests", tmp_path / "file"
    store.write_bytes(DAMAGED[damage])
    path.write_bytes(b"data")
    cache = FileDigestCache(str(store))  # starts empty, does not raise
    assert cache.get(path.stat()) is None
    digest = file_sha256(str(path), cache)
    assert digest == hashlib.sha256(b"data").hexdigest()
    stored = json.loads(store.read_text())  # rewritten whole
    assert list(stored.values()) == [digest]
    assert FileDigestCache(str(store)).get(path.stat()) == digest


def test_file_digest_cache_in_a_place_it_cannot_write_still_answers(tmp_path):
    store = tmp_path / "missing-folder" / "digests"
    cache = FileDigestCache(str(store))
    cache.remember(fake_stat(1), "d1")  # best effort: no error
    assert cache.get(fake_stat(1)) == "d1"
    assert not store.exists()


def test_file_digest_cache_on_a_folder_starts_empty(tmp_path):
    folder = tmp_path / "digests"
    folder.mkdir()
    cache = FileDigestCache(str(folder))  # IsADirectoryError: an OSError
    cache.remember(fake_stat(1), "d1")
    assert cache.get(fake_stat(1)) == "d1"
