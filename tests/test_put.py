"""put through the real programs: a real radmind, real radmin-cli processes, real files.

The contract (interface.md, "put"): the destination is either the old file or the
complete, SHA-256-verified new one, whatever fails; nothing is sent when the content is
already there; no temporary file (`.radmin-upload-*`) outlives a failure.
"""

from __future__ import annotations

import fcntl
import grp
import hashlib
import json
import os
import pty
import pwd
import re
import select
import shutil
import signal
import stat
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
from support import RADMIN_CLI, client_entry, make_client_home, run_cli, trust

from radmin.client import ClientOptions, Connection, RemoteError, connect
from radmin.hosts import Target
from radmin.journal import TEMP_PREFIX
from radmin.protocol import FrameType

MiB = 1024 * 1024
ELLIPSIS = "\u2026"
JSON_KEYS = {"host", "status", "path", "bytes", "sha256", "duration_s", "error"}

# -- helpers ----------------------------------------------------------------------------


@pytest.fixture
def host(daemon, client_home) -> str:
    """The `daemon` fixture's address, already in client_home's known_hosts."""
    trust(client_home, daemon)
    return daemon.address


def uploads(daemon) -> Path:
    return daemon.folder / "uploads"


def inflight(daemon) -> Path:
    return daemon.folder / "state" / "inflight"


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX))


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def put_events(daemon) -> list[dict]:
    return [e for e in daemon.events() if e.get("event") == "request" and e.get("op") == "put"]


def wait_put_events(daemon, count: int, timeout: float = 5.0) -> list[dict]:
    """The daemon logs a request just after its RESULT: wait until `count` are logged."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = put_events(daemon)
        if len(events) >= count:
            return events
        time.sleep(0.02)
    raise AssertionError(f"expected {count} put events; log:\n{daemon.log_path.read_text()}")


def api(home, daemon) -> Connection:
    return connect(Target("d", "127.0.0.1", daemon.port), ClientOptions(home))


def cli_env(home) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RADMIN_HOME", "RADMIN_CONFIG")}
    env["RADMIN_HOME"] = str(home.path)
    return env


def start_put(home, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [RADMIN_CLI, "put", *args],
        stdin=subprocess.DEVNULL,
        stdout=kwargs.pop("stdout", subprocess.DEVNULL),
        stderr=kwargs.pop("stderr", subprocess.DEVNULL),
        env=cli_env(home),
        **kwargs,
    )


def wait_for_partial_temp(folder: Path, total: int, timeout: float = 20.0) -> Path:
    """Poll (tightly: a 100 MiB transfer takes a fraction of a second) until a temporary
    upload file in `folder` holds some, but not all, of the bytes. The daemon allocates
    the whole size first, so "some" is read from the content: random data at the start,
    the allocated zeros still at the end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for temp in temp_files(folder):
            if _partly_written(temp, total):
                return temp
        time.sleep(0.001)
    raise AssertionError(f"no partly written {TEMP_PREFIX}* file appeared in {folder}")


def _partly_written(temp: Path, total: int) -> bool:
    try:
        with open(temp, "rb") as f:
            head = f.read(4096)
            f.seek(max(total - 4096, 0))
            tail = f.read(4096)
    except FileNotFoundError:
        return False
    return any(head) and len(tail) == min(4096, total) and not any(tail)


def wait_until_gone(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not path.exists():
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} still exists after {timeout} s")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


@pytest.fixture
def small_disk(tmpfs) -> Path:
    """A 2 MiB filesystem, to fill up."""
    return tmpfs("small", "size=2m")


# -- a new file, the same file, a new mode ---------------------------------------------


def test_put_new_file_is_changed_with_content_mode_and_human_line(
    daemon, host, client_home, tmp_path
):
    data = os.urandom(3000)
    local = write(tmp_path / "app.conf", data)
    dest = uploads(daemon) / "app.conf"
    result = run_cli(client_home, "put", "--mode", "640", str(local), host, str(dest))
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert result.stdout.decode() == (
        f"{host}: changed {dest} (2.9 KiB, sha256 {sha256_of(data)[:12]}{ELLIPSIS})\n"
    )
    assert dest.read_bytes() == data
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640


def test_put_new_file_gets_the_local_bits_an_existing_file_keeps_its_own(
    daemon, host, client_home, tmp_path
):
    local = write(tmp_path / "tool.sh", b"#!/bin/sh\necho hi\n", mode=0o751)
    dest = uploads(daemon) / "tool.sh"
    result = run_cli(client_home, "put", str(local), host, str(dest))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(dest.stat().st_mode) == 0o751
    write(local, b"#!/bin/sh\necho changed\n", mode=0o604)
    result = run_cli(client_home, "put", str(local), host, str(dest))
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == b"#!/bin/sh\necho changed\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o751  # as scp/rsync/Ansible copy
    result = run_cli(client_home, "put", "--mode", "604", str(local), host, str(dest))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(dest.stat().st_mode) == 0o604


def test_put_unchanged_sends_no_data(daemon, host, client_home, tmp_path):
    data = os.urandom(256 * 1024)
    local = write(tmp_path / "blob", data)
    dest = uploads(daemon) / "blob"
    first = run_cli(client_home, "put", str(local), host, str(dest))
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"{host}: changed {dest} ".encode())
    before = dest.stat()

    again = run_cli(client_home, "put", str(local), host, str(dest))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"{host}: unchanged {dest} ".encode()), again.stdout
    events = wait_put_events(daemon, 2)
    assert (events[0]["status"], events[0]["bytes"]) == ("changed", len(data))
    assert (events[1]["outcome"], events[1]["status"], events[1]["bytes"]) == ("ok", "unchanged", 0)
    after = dest.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    with api(client_home, daemon) as conn:
        result = conn.put(str(local), str(dest))
    assert (result.status, result.bytes, result.path) == ("unchanged", 0, str(dest))
    assert result.sha256 == sha256_of(data)


def test_put_mode_only_change_is_changed_without_transfer(daemon, host, client_home, tmp_path):
    data = os.urandom(64 * 1024)
    local = write(tmp_path / "settings", data, mode=0o644)
    dest = uploads(daemon) / "settings"
    assert run_cli(client_home, "put", str(local), host, str(dest)).returncode == 0
    inode = dest.stat().st_ino

    result = run_cli(client_home, "put", "--mode", "600", str(local), host, str(dest))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{host}: changed {dest} ".encode()), result.stdout
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert dest.stat().st_ino == inode  # fixed in place, not re-uploaded
    event = wait_put_events(daemon, 2)[1]
    assert (event["status"], event["bytes"], event.get("metadata_only")) == ("changed", 0, True)

    with api(client_home, daemon) as conn:
        back = conn.put(str(local), str(dest), mode=0o640)
    assert (back.status, back.bytes) == ("changed", 0)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert dest.read_bytes() == data


def test_put_empty_file_is_changed_then_unchanged(daemon, host, client_home, tmp_path):
    local = write(tmp_path / "empty", b"")
    dest = uploads(daemon) / "empty"
    first = run_cli(client_home, "put", str(local), host, str(dest))
    assert first.returncode == 0, first.stderr
    assert first.stdout.decode().startswith(f"{host}: changed {dest} (0 B, sha256 ")
    assert dest.is_file() and dest.read_bytes() == b""
    again = run_cli(client_home, "put", str(local), host, str(dest))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"{host}: unchanged {dest} ".encode())


# -- where the file goes ---------------------------------------------------------------


def test_put_without_remote_path_goes_to_default_dir_with_base_name(
    daemon, host, client_home, tmp_path
):
    local = write(tmp_path / "motd.txt", b"welcome\n")
    result = run_cli(client_home, "put", str(local), host)
    assert result.returncode == 0, result.stderr
    dest = uploads(daemon) / "motd.txt"
    assert dest.read_bytes() == b"welcome\n"
    assert f" {dest} ".encode() in result.stdout


def test_put_trailing_slash_puts_the_file_inside_the_folder(daemon, host, client_home, tmp_path):
    folder = daemon.folder / "etc-app"
    folder.mkdir()
    local = write(tmp_path / "app.ini", b"[app]\n")
    result = run_cli(client_home, "put", str(local), host, f"{folder}/")
    assert result.returncode == 0, result.stderr
    assert (folder / "app.ini").read_bytes() == b"[app]\n"
    assert f" {folder}/app.ini ".encode() in result.stdout


def test_put_relative_remote_path_is_a_usage_error(daemon, host, client_home, tmp_path):
    local = write(tmp_path / "x", b"x")
    result = run_cli(client_home, "put", str(local), host, "relative/x")
    assert result.returncode == 2
    assert b"absolute" in result.stderr
    assert not put_events(daemon)  # refused before any connection


def test_put_relative_remote_path_through_the_api_is_a_bad_request(daemon, client_home, tmp_path):
    local = write(tmp_path / "x", b"x")
    with api(client_home, daemon) as conn:
        with pytest.raises(RemoteError) as refused:
            conn.put(str(local), "relative/x")
        assert refused.value.code == "bad_request"
        assert "absolute" in str(refused.value)
        assert conn.ping().client == "ops"  # the connection is still usable


def test_put_dot_dot_components_are_refused(daemon, host, client_home, tmp_path):
    (uploads(daemon) / "sub").mkdir()
    local = write(tmp_path / "evil", b"evil")
    result = run_cli(client_home, "put", str(local), host, f"{uploads(daemon)}/sub/../evil")
    assert result.returncode == 1
    assert b"'..'" in result.stderr
    assert not (uploads(daemon) / "evil").exists()
    assert not (uploads(daemon) / "sub" / "evil").exists()


def test_put_outside_allow_put_is_refused_naming_allow_put(daemon_factory, client_home, tmp_path):
    allowed, denied = tmp_path / "allowed", tmp_path / "denied"
    allowed.mkdir()
    denied.mkdir()
    daemon = daemon_factory({"ops": client_entry(client_home, put_allow=[f"{allowed}/**"])})
    trust(client_home, daemon)
    local = write(tmp_path / "f.txt", b"data")
    refused = run_cli(client_home, "put", str(local), daemon.address, f"{denied}/f.txt")
    assert refused.returncode == 1
    assert b"allow.put" in refused.stderr
    assert not (denied / "f.txt").exists()
    assert wait_put_events(daemon, 1)[0]["outcome"] == "denied"
    ok = run_cli(client_home, "put", str(local), daemon.address, f"{allowed}/f.txt")
    assert ok.returncode == 0, ok.stderr
    assert (allowed / "f.txt").read_bytes() == b"data"


def test_put_client_with_empty_allow_put_is_refused(daemon_factory, client_home, tmp_path):
    daemon = daemon_factory({"ops": client_entry(client_home, put_allow=[])})
    local = write(tmp_path / "f.txt", b"data")
    result = run_cli(client_home, "put", str(local), daemon.address)
    assert result.returncode == 1
    assert b"allow.put" in result.stderr
    assert list(uploads(daemon).iterdir()) == []


def test_put_missing_parent_folder_is_a_clear_error(daemon, host, client_home, tmp_path):
    local = write(tmp_path / "f.txt", b"data")
    dest = uploads(daemon) / "missing" / "f.txt"
    result = run_cli(client_home, "put", str(local), host, str(dest))
    assert result.returncode == 1
    assert f"{dest.parent} does not exist".encode() in result.stderr
    assert not dest.parent.exists()


def test_put_onto_a_directory_without_trailing_slash_is_a_clear_error(
    daemon, host, client_home, tmp_path
):
    folder = uploads(daemon) / "adir"
    folder.mkdir()
    local = write(tmp_path / "f.txt", b"data")
    result = run_cli(client_home, "put", str(local), host, str(folder))
    assert result.returncode == 1
    assert b"is a directory" in result.stderr
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_put_missing_local_file_is_a_clear_error(host, client_home, tmp_path):
    missing = tmp_path / "no-such-file"
    result = run_cli(client_home, "put", str(missing), host)
    assert result.returncode == 1
    assert result.stderr.decode() == f"radmin-cli: {missing}: No such file or directory\n"
    assert result.stdout == b""


# -- limits and failures: the old file or the verified new one, never a partial one -----


def test_put_over_max_put_size_is_refused_before_any_data(daemon_factory, client_home, tmp_path):
    daemon = daemon_factory(
        {"ops": client_entry(client_home)},
        limits={"handshake_timeout": 2, "max_put_size": "1KiB"},
    )
    folder, journal_dir = uploads(daemon), inflight(daemon)
    mtimes = (folder.stat().st_mtime_ns, journal_dir.stat().st_mtime_ns)
    local = write(tmp_path / "ten-kib", os.urandom(10 * 1024))

    result = run_cli(client_home, "put", str(local), daemon.address)
    assert result.returncode == 1
    assert b"limits.max_put_size" in result.stderr
    sent = []
    with api(client_home, daemon) as conn, pytest.raises(RemoteError) as refused:
        conn.put(str(local), None, progress=sent.append)
    assert refused.value.code == "bad_request"
    assert sent == []  # not a single data frame left the client

    events = wait_put_events(daemon, 2)
    assert [(e["outcome"], e.get("bytes", 0)) for e in events] == [("bad_request", 0)] * 2
    # No temporary file or journal record was ever created (either would touch the folder).
    assert (folder.stat().st_mtime_ns, journal_dir.stat().st_mtime_ns) == mtimes
    assert list(folder.iterdir()) == []

    at_limit = write(tmp_path / "one-kib", os.urandom(1024))
    ok = run_cli(client_home, "put", str(at_limit), daemon.address)
    assert ok.returncode == 0, ok.stderr


def test_put_checksum_mismatch_leaves_destination_untouched(daemon, client_home, tmp_path):
    dest = write(uploads(daemon) / "config", b"old content\n")
    local = write(tmp_path / "config", os.urandom(3 * MiB))
    with api(client_home, daemon) as conn:
        with pytest.raises(RemoteError) as failed:
            conn.put(str(local), str(dest), sha256="0" * 64)
        assert failed.value.code == "failed"
        assert "checksum" in str(failed.value)
        assert conn.ping().client == "ops"
    assert dest.read_bytes() == b"old content\n"
    assert temp_files(uploads(daemon)) == []
    assert list(inflight(daemon).iterdir()) == []
    assert wait_put_events(daemon, 1)[0]["outcome"] == "failed"


def test_put_client_killed_mid_transfer_keeps_old_file_and_removes_temp(
    daemon, client_home, tmp_path, big_file
):
    dest = write(uploads(daemon) / "big.bin", b"old content\n")
    proc = start_put(client_home, str(big_file), daemon.address, str(dest))
    try:
        temp = wait_for_partial_temp(uploads(daemon), big_file.stat().st_size)
        proc.send_signal(signal.SIGKILL)
    finally:
        stop_process(proc)
    assert proc.returncode == -signal.SIGKILL
    wait_until_gone(temp)  # the daemon noticed the dropped connection and cleaned up
    assert dest.read_bytes() == b"old content\n"
    assert temp_files(uploads(daemon)) == []
    assert list(inflight(daemon).iterdir()) == []


def test_put_daemon_killed_mid_transfer_cleans_up_at_next_start(
    daemon, client_home, tmp_path, big_file
):
    dest = write(uploads(daemon) / "big.bin", b"old content\n")
    proc = start_put(client_home, str(big_file), daemon.address, str(dest))
    try:
        temp = wait_for_partial_temp(uploads(daemon), big_file.stat().st_size)
        daemon.proc.kill()
        daemon.proc.wait(timeout=10)
        assert proc.wait(timeout=15) == 255  # the client saw the connection drop
    finally:
        stop_process(proc)
    assert temp.exists()  # nobody was left to remove it: the journal's job at start-up
    assert dest.read_bytes() == b"old content\n"

    daemon.start()
    event = daemon.wait_for_event(lambda e: e.get("event") == "removed_unfinished_uploads")
    assert event["files"] == [str(temp)]
    assert not temp.exists()
    assert temp_files(uploads(daemon)) == []
    assert list(inflight(daemon).iterdir()) == []
    assert dest.read_bytes() == b"old content\n"


def test_put_disk_full_fails_keeps_old_file_and_leaves_no_temp(
    daemon, host, client_home, tmp_path, small_disk
):
    old = os.urandom(100 * 1024)
    dest = write(small_disk / "data.bin", old)
    local = write(tmp_path / "data.bin", os.urandom(5 * MiB))
    result = run_cli(client_home, "put", str(local), host, str(dest))
    assert result.returncode == 1, result.stderr
    assert b"not enough space" in result.stderr  # refused before any data was sent
    assert dest.read_bytes() == old
    assert temp_files(small_disk) == []
    assert list(inflight(daemon).iterdir()) == []


def test_put_disk_full_leaves_the_connection_usable(daemon, client_home, tmp_path, small_disk):
    old = os.urandom(100 * 1024)
    dest = write(small_disk / "data.bin", old)
    local = write(tmp_path / "data.bin", os.urandom(5 * MiB))
    small = write(tmp_path / "small.txt", b"still in step\n")
    with api(client_home, daemon) as conn:
        with pytest.raises(RemoteError) as failed:
            conn.put(str(local), str(dest))
        assert failed.value.code == "failed"
        assert "not enough space" in str(failed.value)  # before any data
        assert conn.ping().client == "ops"
        after = conn.put(str(small), None)
    assert after.status == "changed"
    assert (uploads(daemon) / "small.txt").read_bytes() == b"still in step\n"
    assert dest.read_bytes() == old
    assert temp_files(small_disk) == []


# -- several hosts ---------------------------------------------------------------------


def test_put_to_several_addresses_json_lines(daemon_factory, client_home, tmp_path):
    daemon = daemon_factory(
        {"ops": client_entry(client_home)},
        listen=["127.0.0.1:0", "127.0.0.2:0", "127.0.0.3:0"],
    )
    addresses = trust(client_home, daemon)
    assert [a.rsplit(":", 1)[0] for a in addresses] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    data = os.urandom(200 * 1024)
    local = write(tmp_path / "shared.bin", data)
    dest = uploads(daemon) / "shared.bin"

    result = run_cli(client_home, "put", "--json", str(local), ",".join(addresses))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert sorted(r["host"] for r in records) == sorted(addresses)
    for record in records:
        assert set(record) >= JSON_KEYS, record
        assert record["status"] in ("changed", "unchanged")
        assert record["bytes"] == (len(data) if record["status"] == "changed" else 0)
        assert (record["path"], record["sha256"], record["error"]) == (
            str(dest),
            sha256_of(data),
            None,
        )
        assert isinstance(record["duration_s"], float)
    assert "changed" in {r["status"] for r in records}
    assert dest.read_bytes() == data

    again = run_cli(client_home, "put", "--json", str(local), ",".join(addresses))
    assert again.returncode == 0, again.stderr
    records = [json.loads(line) for line in again.stdout.decode().splitlines()]
    assert [(r["status"], r["bytes"]) for r in records] == [("unchanged", 0)] * 3


def test_put_one_host_refused_by_policy_others_succeed(daemon_factory, client_home, tmp_path):
    good = [daemon_factory({"ops": client_entry(client_home)}) for _ in range(2)]
    strict = daemon_factory({"ops": client_entry(client_home, put_allow=["/nowhere/**"])})
    for daemon in (*good, strict):
        trust(client_home, daemon)
    hosts = [d.address for d in (*good, strict)]
    data = os.urandom(10 * 1024)
    local = write(tmp_path / "fleet.conf", data)

    result = run_cli(client_home, "put", str(local), ",".join(hosts))
    assert result.returncode == 1, result.stderr
    for daemon in good:
        assert (uploads(daemon) / "fleet.conf").read_bytes() == data
        assert f"{daemon.address}: changed ".encode() in result.stdout
    assert not (uploads(strict) / "fleet.conf").exists()
    stderr = result.stderr.decode()
    assert re.search(rf"^radmin-cli: {re.escape(strict.address)}: .*allow\.put", stderr, re.M)
    assert "2 changed, 1 refused" in stderr  # refused by policy, not failed on the host

    again = run_cli(client_home, "put", "--json", str(local), ",".join(hosts))
    assert again.returncode == 1
    records = {r["host"]: r for r in map(json.loads, again.stdout.decode().splitlines())}
    assert set(records) == set(hosts)
    for daemon in good:
        assert (records[daemon.address]["status"], records[daemon.address]["bytes"]) == (
            "unchanged",
            0,
        )
    refused = records[strict.address]
    assert set(refused) >= JSON_KEYS
    assert refused["status"] == "error"
    assert "allow.put" in refused["error"]


# -- owner and group -------------------------------------------------------------------


def _existing_group(*names: str) -> str:
    for name in names:
        try:
            grp.getgrnam(name)
            return name
        except KeyError:
            continue
    pytest.skip(f"none of the groups {names} exists here")


def test_put_owner_and_group_are_applied(daemon, host, client_home, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    group = _existing_group("nogroup", "nobody")
    local = write(tmp_path / "owned", b"owned\n")
    dest = uploads(daemon) / "owned"
    result = run_cli(
        client_home, "put", "--owner", "nobody", "--group", group, str(local), host, str(dest)
    )
    assert result.returncode == 0, result.stderr
    st = dest.stat()
    assert (st.st_uid, st.st_gid) == (pwd.getpwnam("nobody").pw_uid, grp.getgrnam(group).gr_gid)
    # Back to root: same content, other owner -> changed without transfer.
    back = run_cli(client_home, "put", "--owner", "root", str(local), host, str(dest))
    assert back.returncode == 0, back.stderr
    assert b": changed " in back.stdout
    assert (dest.stat().st_uid, dest.stat().st_gid) == (0, 0)


def test_put_unknown_owner_or_group_is_a_clear_error(daemon, host, client_home, tmp_path):
    local = write(tmp_path / "f", b"f")
    dest = uploads(daemon) / "f"
    user = run_cli(client_home, "put", "--owner", "no-such-user-x", str(local), host, str(dest))
    assert user.returncode == 1
    assert b"no such user 'no-such-user-x'" in user.stderr
    group = run_cli(client_home, "put", "--group", "no-such-group-x", str(local), host, str(dest))
    assert group.returncode == 1
    assert b"no such group 'no-such-group-x'" in group.stderr
    assert not dest.exists()


# -- the progress bar ------------------------------------------------------------------


def run_with_pty_stderr(home, *args: str, timeout: float = 60) -> tuple[int, bytes, bytes]:
    """Run radmin-cli with stderr on a pseudo-terminal; return (status, stdout, pty text)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        proc = subprocess.Popen(
            [RADMIN_CLI, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            env=cli_env(home),
        )
    finally:
        os.close(slave)
    seen = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the last holder of the terminal has gone
                break
            if not chunk:
                break
            seen += chunk
        stdout, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        stop_process(proc)
    return proc.returncode, stdout, bytes(seen)


def test_put_progress_bar_on_a_terminal(daemon, host, client_home, big_file):
    status, stdout, terminal = run_with_pty_stderr(
        client_home, "put", str(big_file), host, f"{uploads(daemon)}/"
    )
    assert status == 0, terminal
    assert stdout.startswith(f"{host}: changed ".encode())
    assert b"B/s" in terminal, terminal
    assert b"%" in terminal, terminal


def test_put_no_progress_bar_on_a_pipe(daemon, host, client_home, tmp_path):
    local = write(tmp_path / "piped.bin", os.urandom(20 * MiB))
    result = run_cli(client_home, "put", str(local), host)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert (uploads(daemon) / "piped.bin").stat().st_size == 20 * MiB


def test_put_no_progress_bar_with_json(daemon, host, client_home, big_file):
    status, stdout, terminal = run_with_pty_stderr(
        client_home, "put", "--json", str(big_file), host, f"{uploads(daemon)}/"
    )
    assert status == 0, terminal
    record = json.loads(stdout)
    assert (record["status"], record["bytes"]) == ("changed", big_file.stat().st_size)
    assert b"B/s" not in terminal and b"%" not in terminal, terminal


# -- the Python API against a second client identity -----------------------------------


def test_put_by_another_client_uses_its_own_policy(daemon_factory, client_home, tmp_path):
    """Policies are per client: one identity may upload where another may not."""
    other = make_client_home(tmp_path / "other")
    daemon = daemon_factory(
        {"ops": client_entry(client_home), "readonly": client_entry(other, put_allow=[])}
    )
    local = write(tmp_path / "f", b"f")
    with api(other, daemon) as conn, pytest.raises(RemoteError) as refused:
        conn.put(str(local), None)
    assert refused.value.code == "denied"
    with api(client_home, daemon) as conn:
        assert conn.put(str(local), None).status == "changed"


# -- failures the contract covers but the daemon gets wrong ------------------------------


def test_put_onto_a_read_only_filesystem_fails_with_exit_1_and_a_clear_message(
    daemon, host, client_home, tmp_path, tmpfs
):
    read_only = tmpfs("ro", "size=1m")
    dest = write(read_only / "motd", b"old\n")
    remounted = subprocess.run(["mount", "-o", "remount,ro", str(read_only)], capture_output=True)
    if remounted.returncode != 0:
        pytest.skip(f"cannot remount read-only: {remounted.stderr.decode().strip()}")
    local = write(tmp_path / "motd", b"new\n")
    result = run_cli(client_home, "put", str(local), host, str(dest))
    assert dest.read_bytes() == b"old\n"
    assert list(inflight(daemon).iterdir()) == []
    assert b"Read-only file system" in result.stderr, result.stderr
    assert result.returncode == 1


def test_put_failure_before_any_data_leaves_the_connection_usable(daemon, client_home, tmp_path):
    shutil.rmtree(inflight(daemon))  # the journal cannot record the upload: fails early
    local = write(tmp_path / "f.txt", b"data")
    with api(client_home, daemon) as conn:
        with pytest.raises(RemoteError) as failed:
            conn.put(str(local), None)
        assert failed.value.code == "failed"
        assert "cannot record the upload" in str(failed.value)
        assert conn.ping().client == "ops"


@pytest.mark.parametrize("name", ["n" * 240, "\u00e9" * 120], ids=["ascii-240", "utf8-240-bytes"])
def test_put_destination_with_a_long_name_is_uploaded(daemon, host, client_home, tmp_path, name):
    assert len(os.fsencode(name)) <= 255  # a valid file name on Linux
    local = write(tmp_path / "short", b"long name\n")
    dest = uploads(daemon) / name
    result = run_cli(client_home, "put", str(local), host, str(dest))
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == b"long name\n"


def test_put_destination_turned_into_a_directory_during_upload_fails_with_exit_1(
    daemon, host, client_home, tmp_path, big_file
):
    dest = write(uploads(daemon) / "big.bin", b"old content\n")
    proc = start_put(
        client_home, str(big_file), host, str(dest), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for_partial_temp(uploads(daemon), big_file.stat().st_size)
        proc.send_signal(signal.SIGSTOP)  # hold the transfer while the host changes
        dest.unlink()
        dest.mkdir()
        (dest / "keep").write_text("keep\n")
        proc.send_signal(signal.SIGCONT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    assert (dest / "keep").read_text() == "keep\n"
    assert temp_files(uploads(daemon)) == []
    assert list(inflight(daemon).iterdir()) == []
    assert b"is a directory" in stderr.lower(), stderr
    assert proc.returncode == 1


def test_put_through_a_symlinked_folder_is_held_to_where_it_really_lands(
    daemon_factory, client_home, tmp_path
):
    """allow.put covers /allowed/**; /allowed/escape -> /outside must not open /outside."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "escape").symlink_to(outside)
    daemon = daemon_factory({"ops": client_entry(client_home, put_allow=(f"{allowed}/**",))})
    local = write(tmp_path / "payload.txt", b"payload\n")
    result = run_cli(client_home, "put", str(local), daemon.address, f"{allowed}/escape/x.txt")
    assert result.returncode == 1
    assert b"allow.put" in result.stderr
    assert not (outside / "x.txt").exists()
    inside = run_cli(client_home, "put", str(local), daemon.address, f"{allowed}/x.txt")
    assert inside.returncode == 0, inside.stderr


# -- the digest sent after the data, or compared first when sizes match ----------------


def test_put_same_size_other_content_is_hashed_on_both_sides_then_sent(
    daemon, client_home, tmp_path
):
    """No digest announced + same size on the host: DIGEST first, then the data."""
    dest = write(uploads(daemon) / "same-size.bin", b"A" * 4096)
    local = write(tmp_path / "same-size.bin", b"B" * 4096)
    with api(client_home, daemon) as conn:
        result = conn.put(str(local), str(dest))
        assert (result.status, result.bytes) == ("changed", 4096)
        assert result.sha256 == sha256_of(b"B" * 4096)
        again = conn.put(str(local), str(dest))  # digest first, equal: nothing sent
        assert (again.status, again.bytes) == ("unchanged", 0)
        assert conn.ping().client == "ops"  # the stream is still in step
    assert dest.read_bytes() == b"B" * 4096


def _raw_put_with_trailing_digest(frames, dest: Path, data: bytes, digest: str) -> dict:
    frames.send_json(
        FrameType.REQUEST,
        {
            "op": "put",
            "path": str(dest),
            "name": dest.name,
            "size": len(data),
            "sha256": None,
            "mode": 0o644,
        },
    )
    _, proceed = frames.recv_json(FrameType.PROCEED)
    assert proceed["digest_first"] is False
    frames.send_frame(FrameType.FILE_DATA, data)
    frames.send_json(FrameType.DIGEST, {"sha256": digest})
    return frames.recv_json(FrameType.RESULT)[1]


def test_put_trailing_digest_mismatch_keeps_the_old_file(daemon, client_home):
    from support import frames_after_hello

    dest = write(uploads(daemon) / "trailing.txt", b"old content\n")
    frames = frames_after_hello(client_home, daemon.port)
    reply = _raw_put_with_trailing_digest(frames, dest, b"new content!!!\n", "0" * 64)
    assert reply["ok"] is False and "checksum mismatch" in reply["message"]
    assert dest.read_bytes() == b"old content\n"
    assert temp_files(uploads(daemon)) == []
    good = b"new content!!!\n"
    reply = _raw_put_with_trailing_digest(frames, dest, good, sha256_of(good))
    assert reply["ok"] is True and reply["sha256"] == sha256_of(good)
    assert dest.read_bytes() == good


def test_put_digest_caches_never_hide_a_change(daemon, client_home, tmp_path):
    """Both sides cache digests by (dev, inode, size, mtime, ctime); rewriting a file with
    same-size content -- even restoring its mtime -- must still be seen as a change."""
    local = write(tmp_path / "cached.txt", b"version 1\n")
    dest = uploads(daemon) / "cached.txt"
    for _ in range(3):  # changed, then unchanged from the caches
        assert run_cli(client_home, "put", str(local), daemon.address, str(dest)).returncode == 0
    assert client_home.digests.exists()
    before = os.stat(local)
    local.write_bytes(b"version 2\n")
    os.utime(local, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size, same mtime
    result = run_cli(client_home, "put", str(local), daemon.address, str(dest))
    assert result.returncode == 0, result.stderr
    assert b": changed " in result.stdout
    assert dest.read_bytes() == b"version 2\n"
    dest_stat = os.stat(dest)
    dest.write_bytes(b"version 3\n")  # someone edits the host's copy behind radmin's back
    os.utime(dest, ns=(dest_stat.st_atime_ns, dest_stat.st_mtime_ns))
    result = run_cli(client_home, "put", str(local), daemon.address, str(dest))
    assert b": changed " in result.stdout
    assert dest.read_bytes() == b"version 2\n"
