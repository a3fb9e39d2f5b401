"""radmin/journal.py on its own: temporary names and recovery, no daemon (milliseconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from radmin.journal import TEMP_PREFIX, JournalEntry, inflight_dir, prepare, recover, temp_name

# -- temp_name --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("destination", "base"),
    [
        ("app.conf", "app.conf"),
        ("/etc/nginx/nginx.conf", "nginx.conf"),
        ("/srv/a b;c", "a b;c"),
        ("/srv/" + "x" * 254, "x" * 254),
        ("/srv/" + "x" * 300, "x" * 300),  # too long: cut
        ("/srv/" + "é" * 200, "é" * 200),  # 400 bytes of 2-byte characters: cut whole
        ("/srv/" + "€" * 100, "€" * 100),  # 300 bytes of 3-byte characters
    ],
)
def test_temp_name_is_prefixed_and_fits_255_bytes(destination, base):
    name = temp_name(destination)
    encoded = os.fsencode(name)
    assert name.startswith(TEMP_PREFIX)
    assert len(encoded) <= 255
    assert "/" not in name
    random_part, _, tail = name[len(TEMP_PREFIX) :].partition("-")
    assert len(random_part) == 12 and int(random_part, 16) >= 0  # 6 random bytes in hex
    assert base.startswith(tail)  # the base name, or as much of it as fits
    if len(os.fsencode(base)) + len(TEMP_PREFIX) + 13 <= 255:
        assert tail == base
    else:  # cut: as many whole characters as fit, never a broken one
        assert len(encoded) > 255 - 3
        assert encoded.decode("utf-8") == name


def test_temp_name_is_different_every_time():
    assert len({temp_name("/srv/app.conf") for _ in range(50)}) == 50


# -- prepare and JournalEntry -----------------------------------------------------------


def test_prepare_makes_a_private_inflight_folder(tmp_path):
    state = tmp_path / "deep" / "state"
    prepare(state)
    prepare(state)  # again: no error
    assert inflight_dir(state).is_dir()
    assert inflight_dir(state).stat().st_mode & 0o777 == 0o700


def test_entry_records_the_temporary_path_until_closed(tmp_path):
    prepare(tmp_path)
    temp = tmp_path / f"{TEMP_PREFIX}abc-app.conf"
    entry = JournalEntry(tmp_path, temp)
    assert entry.record.parent == inflight_dir(tmp_path)
    assert entry.record.read_bytes() == os.fsencode(temp)
    assert entry.record.stat().st_mode & 0o777 == 0o600
    entry.close()
    assert list(inflight_dir(tmp_path).iterdir()) == []
    entry.close()  # twice is harmless


# -- recover ----------------------------------------------------------------------------


def _record(state: Path, name: str, content: bytes) -> Path:
    record = inflight_dir(state) / name
    record.write_bytes(content)
    return record


def test_recover_without_an_inflight_folder_does_nothing(tmp_path):
    assert recover(tmp_path / "never-made") == []


def test_recover_removes_what_an_unclosed_entry_names(tmp_path):
    prepare(tmp_path)
    temp = tmp_path / f"{TEMP_PREFIX}0123456789ab-app.conf"
    temp.write_text("half an upload")
    JournalEntry(tmp_path, temp)  # the daemon was killed before close()
    assert recover(tmp_path) == [str(temp)]
    assert not temp.exists()
    assert list(inflight_dir(tmp_path).iterdir()) == []


# case: (the path the record names, whether that file exists, whether recover removes it)
RECORDS = {
    "prefixed file": (f"{{dir}}/{TEMP_PREFIX}abc-app.conf", True, True),
    "prefixed file already gone": (f"{{dir}}/{TEMP_PREFIX}abc-gone", False, False),
    "file without the prefix": ("{dir}/app.conf", True, False),
    "prefix only in a folder name": (f"{{dir}}/{TEMP_PREFIX}dir/app.conf", True, False),
    "prefix later in the name": (f"{{dir}}/x{TEMP_PREFIX}abc", True, False),
    "relative path with the prefix": (f"{TEMP_PREFIX}abc-relative", False, False),
}


@pytest.mark.parametrize("case", RECORDS)
def test_recover_removes_only_files_carrying_the_prefix(tmp_path, case):
    state, files = tmp_path / "state", tmp_path / "files"
    prepare(state)
    files.mkdir()
    (files / f"{TEMP_PREFIX}dir").mkdir()
    template, exists, removed = RECORDS[case]
    named = template.format(dir=files)
    if exists:
        Path(named).write_text("content")
    record = _record(state, "1-abc", os.fsencode(named))
    assert recover(state) == ([named] if removed else [])
    assert Path(named).exists() is (exists and not removed)
    assert not record.exists()  # the record goes in every case


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\xff\xfe\xfd",  # not UTF-8
        b"\x00\x00\x00\x00",  # a block of zeros, as a crash can leave
        b"garbage without a slash",
        b"/",
        b"/" + b"a" * 5000,  # too long for a path
    ],
)
def test_recover_ignores_a_damaged_record(tmp_path, content):
    prepare(tmp_path)
    keep = tmp_path / "keep"
    keep.write_text("x")
    _record(tmp_path, "1-damaged", content)
    good = tmp_path / f"{TEMP_PREFIX}abc-good"
    good.write_text("x")
    _record(tmp_path, "2-good", os.fsencode(good))
    assert recover(tmp_path) == [str(good)]
    assert keep.exists()
    assert list(inflight_dir(tmp_path).iterdir()) == []


def test_recover_ignores_a_record_with_a_nul_byte_in_a_prefixed_name(tmp_path):
    prepare(tmp_path)
    # A record whose tail was zero-filled (a torn write) still looks like one of ours.
    _record(tmp_path, "1-torn", os.fsencode(tmp_path / f"{TEMP_PREFIX}abc-app.conf") + b"\0\0")
    assert recover(tmp_path) == []
    assert list(inflight_dir(tmp_path).iterdir()) == []


def test_recover_skips_a_record_it_cannot_read(tmp_path):
    prepare(tmp_path)
    (inflight_dir(tmp_path) / "1-a-folder").mkdir()  # read_bytes() fails: left alone
    temp = tmp_path / f"{TEMP_PREFIX}abc-x"
    temp.write_text("x")
    _record(tmp_path, "2-good", os.fsencode(temp))
    assert recover(tmp_path) == [str(temp)]
    assert [p.name for p in inflight_dir(tmp_path).iterdir()] == ["1-a-folder"]


def test_recover_removes_every_record_and_is_idempotent(tmp_path):
    prepare(tmp_path)
    temps = [tmp_path / f"{TEMP_PREFIX}{i:012x}-f{i}" for i in range(5)]
    for i, temp in enumerate(temps):
        temp.write_text("x")
        _record(tmp_path, f"{i}-r", os.fsencode(temp))
    assert sorted(recover(tmp_path)) == sorted(map(str, temps))
    assert list(inflight_dir(tmp_path).iterdir()) == []
    assert recover(tmp_path) == []
