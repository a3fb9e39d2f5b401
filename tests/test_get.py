"""get through the real programs: a real radmind, real radmin-cli processes, real files.

The contract (interface.md, "get"): put's promises in the other direction. The local
file is either the old one or the complete, SHA-256-verified copy, whatever fails (a
killed client, a dropped connection, a full disk, a checksum mismatch), and no temporary
file outlives a failure (an unnamed O_TMPFILE; else `.radmin-get-PID-*`, removed by the
next get); nothing is sent when the local copy already has that content; the remote
permission bits are kept; several hosts land as LOCAL_PATH/HOST/BASENAME.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import (
    RADMIN_CLI,
    cli_env,
    client_entry,
    prepare_daemon,
    run_cli,
    trust,
    wait_until,
)

from radmin.client import ClientOptions, Connection, LocalFileError, connect
from radmin.client.landing import TEMP_PREFIX
from radmin.hosts import Target

MiB = 1024 * 1024
JSON_KEYS = {
    "host",
    "status",
    "path",
    "remote_path",
    "bytes",
    "sha256",
    "duration_s",
    "error",
    "metadata_only",
    "run_id",
}


# -- helpers ----------------------------------------------------------------------------


@pytest.fixture
def daemon(daemon_factory, client_home):
    """A daemon whose client "ops" may get anything (and do everything else)."""
    return daemon_factory({"ops": client_entry(client_home, get=["/**"])})


@pytest.fixture
def host(daemon, client_home) -> str:
    trust(client_home, daemon)
    return daemon.address


@pytest.fixture
def remote(tmp_path) -> Path:
    """The daemon's side: files the tests get."""
    folder = tmp_path / "remote"
    folder.mkdir()
    return folder


@pytest.fixture
def local(tmp_path) -> Path:
    """The client's side: where the files land."""
    folder = tmp_path / "local"
    folder.mkdir()
    return folder


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def api(home, daemon) -> Connection:
    return connect(Target("d", "127.0.0.1", daemon.port), ClientOptions(home))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(f"{TEMP_PREFIX}*"))


def get_events(daemon) -> list[dict]:
    return [e for e in daemon.events() if e.get("event") == "request" and e.get("op") == "get"]


def wait_get_events(daemon, count: int) -> list[dict]:
    return wait_until(
        lambda: (events := get_events(daemon)) and len(events) >= count and events,
        5,
        f"{count} get events",
    )


def start_get(home, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [RADMIN_CLI, "get", *args],
        stdin=subprocess.DEVNULL,
        stdout=kwargs.pop("stdout", subprocess.DEVNULL),
        stderr=kwargs.pop("stderr", subprocess.PIPE),
        env=cli_env(home),
        **kwargs,
    )


def receiving(pid: int, folder: Path) -> bool:
    """Has process `pid` written into a temporary file in `folder` (an O_TMPFILE shows
    in /proc as `FOLDER/#INODE (deleted)`)?"""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        if target.startswith(f"{folder}/") and (
            "(deleted)" in target or Path(target).name.startswith(TEMP_PREFIX)
        ):
            pos = int(
                next(line for line in info.splitlines() if line.startswith("pos:")).split()[1]
            )
            if pos > 0:
                return True
    return False


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


# -- a new file, the same file, the mode ---------------------------------------------


def test_get_new_file_is_changed_with_content_mode_and_human_line(
    daemon, host, client_home, remote, local
):
    data = os.urandom(3000)
    source = write(remote / "app.conf", data, 0o640)
    result = run_cli(client_home, "get", host, str(source), f"{local}/")
    assert result.returncode == 0, result.stderr
    landed = local / "app.conf"
    assert landed.read_bytes() == data
    assert stat.S_IMODE(landed.stat().st_mode) == 0o640
    line = result.stdout.decode()
    assert line.startswith(f"{host}: changed {landed} (2.9 KiB, sha256 ")
    assert leftovers(local) == []
    (event,) = wait_get_events(daemon, 1)
    assert event["outcome"] == "ok" and event["path"] == str(source)
    assert event["rule"] == "/**" and event["bytes"] == 3000


def test_get_without_local_path_lands_the_base_name_in_the_current_folder(
    host, client_home, remote, local
):
    source = write(remote / "motd", b"welcome\n")
    done = subprocess.run(
        [RADMIN_CLI, "get", host, str(source)],
        cwd=local,
        env=cli_env(client_home),
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (local / "motd").read_bytes() == b"welcome\n"
    assert done.stdout.startswith(f"{host}: changed motd ".encode())


def test_get_to_an_existing_folder_or_a_new_name(host, client_home, remote, local):
    source = write(remote / "hosts", b"127.0.0.1 localhost\n")
    assert run_cli(client_home, "get", host, str(source), str(local)).returncode == 0
    assert (local / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert run_cli(client_home, "get", host, str(source), str(local / "copy")).returncode == 0
    assert (local / "copy").read_bytes() == b"127.0.0.1 localhost\n"


def test_get_unchanged_sends_no_data(daemon, host, client_home, remote, local):
    source = write(remote / "data.bin", os.urandom(2 * MiB))
    first = run_cli(client_home, "get", "--json", host, str(source), f"{local}/")
    assert json.loads(first.stdout)["status"] == "changed"
    again = run_cli(client_home, "get", "--json", host, str(source), f"{local}/")
    record = json.loads(again.stdout)
    assert again.returncode == 0, again.stderr
    assert set(record) == JSON_KEYS
    assert (record["status"], record["bytes"], record["error"]) == ("unchanged", 0, None)
    assert record["path"] == f"{local}/data.bin" and record["remote_path"] == str(source)
    events = wait_get_events(daemon, 2)
    assert events[1]["bytes"] == 0 and events[1].get("status") == "unchanged"


def test_get_unchanged_without_a_cached_digest_is_compared_by_both_sides(
    daemon, host, client_home, remote, local
):
    """A local copy the client never hashed (no digests file): same size, so the daemon
    asks for the client's digest while it hashes its own; still no data."""
    data = os.urandom(MiB)
    source = write(remote / "same.bin", data)
    write(local / "same.bin", data)
    result = run_cli(client_home, "get", "--json", host, str(source), f"{local}/")
    record = json.loads(result.stdout)
    assert (record["status"], record["bytes"]) == ("unchanged", 0), result.stderr


def test_get_same_size_other_content_is_replaced(host, client_home, remote, local):
    new = os.urandom(MiB)
    source = write(remote / "same-size.bin", new)
    write(local / "same-size.bin", os.urandom(MiB))
    result = run_cli(client_home, "get", "--json", host, str(source), f"{local}/")
    assert json.loads(result.stdout)["status"] == "changed"
    assert (local / "same-size.bin").read_bytes() == new


def test_get_mode_only_difference_is_fixed_without_transfer(host, client_home, remote, local):
    data = b"#!/bin/sh\necho hi\n"
    source = write(remote / "tool", data, 0o755)
    write(local / "tool", data, 0o600)
    result = run_cli(client_home, "get", "--json", host, str(source), f"{local}/")
    record = json.loads(result.stdout)
    assert (record["status"], record["bytes"], record["metadata_only"]) == ("changed", 0, True)
    assert stat.S_IMODE((local / "tool").stat().st_mode) == 0o755


def test_get_keeps_permission_bits_but_never_set_id_or_sticky(host, client_home, remote, local):
    source = write(remote / "suid", b"x", 0o4751)
    assert run_cli(client_home, "get", host, str(source), f"{local}/").returncode == 0
    assert stat.S_IMODE((local / "suid").stat().st_mode) == 0o751


def test_get_empty_file_is_changed_then_unchanged(host, client_home, remote, local):
    source = write(remote / "empty", b"")
    first = run_cli(client_home, "get", "--json", host, str(source), f"{local}/")
    again = run_cli(client_home, "get", "--json", host, str(source), f"{local}/")
    assert [json.loads(r.stdout)["status"] for r in (first, again)] == ["changed", "unchanged"]
    assert (local / "empty").read_bytes() == b""


def test_get_replaces_a_local_symlink_instead_of_writing_through_it(
    host, client_home, remote, local, tmp_path
):
    """As put does on the host: the link is replaced, its target left alone."""
    elsewhere = write(tmp_path / "elsewhere", b"keep me\n")
    (local / "conf").symlink_to(elsewhere)
    source = write(remote / "conf", b"new\n")
    assert run_cli(client_home, "get", host, str(source), f"{local}/").returncode == 0
    assert not (local / "conf").is_symlink()
    assert (local / "conf").read_bytes() == b"new\n"
    assert elsewhere.read_bytes() == b"keep me\n"


def test_get_the_api_returns_a_get_result(daemon, client_home, remote, local):
    data = os.urandom(5000)
    source = write(remote / "api.bin", data, 0o600)
    received: list[int] = []
    sizes: list[int] = []
    with api(client_home, daemon) as conn:
        result = conn.get(
            str(source), str(local / "api.bin"), progress=received.append, on_size=sizes.append
        )
        assert conn.get(str(source), str(local / "api.bin")).status == "unchanged"
    assert (result.status, result.bytes, result.mode) == ("changed", 5000, 0o600)
    assert (result.size, result.metadata_only) == (5000, False)
    assert (result.path, result.remote_path) == (str(local / "api.bin"), str(source))
    assert sum(received) == 5000 and sizes == [5000]
    assert (local / "api.bin").read_bytes() == data


# -- usage and remote errors -----------------------------------------------------------


@pytest.mark.parametrize("remote_path", ["relative/file", "/var/log/"])
def test_get_remote_path_must_be_an_absolute_file_path(host, client_home, remote_path):
    result = run_cli(client_home, "get", host, remote_path)
    assert result.returncode == 2
    assert b"REMOTE_PATH must" in result.stderr


def test_get_missing_remote_file_exits_1(host, client_home, remote, local):
    result = run_cli(client_home, "get", host, str(remote / "nothing"), f"{local}/")
    assert result.returncode == 1
    assert f"no such file: {remote}/nothing".encode() in result.stderr
    assert list(local.iterdir()) == []


def test_get_unreachable_host_exits_255(client_home, local):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = run_cli(client_home, "get", f"127.0.0.1:{port}", "/etc/hostname", f"{local}/")
    assert result.returncode == 255
    assert list(local.iterdir()) == []


# -- failures leave the old local file and no temporary file ----------------------------


def test_get_client_killed_mid_transfer_keeps_old_file_and_leaves_no_temp(
    host, client_home, local, big_file
):
    old = write(local / "big.bin", b"old content\n")
    proc = start_get(client_home, host, str(big_file), f"{local}/")
    try:
        wait_until(lambda: receiving(proc.pid, local), 20, "the download to start")
        proc.send_signal(signal.SIGKILL)
    finally:
        stop_process(proc)
    assert proc.returncode == -signal.SIGKILL
    assert old.read_bytes() == b"old content\n"
    assert sorted(p.name for p in local.iterdir()) == ["big.bin"]  # an O_TMPFILE has no name


def test_get_removes_named_temporary_files_of_dead_gets_but_not_of_running_ones(
    host, client_home, remote, local
):
    """Where O_TMPFILE is not supported a killed get leaves `.radmin-get-PID-...`; the
    next get in that folder removes it once PID has ended, never one still running."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    dead = write(local / f"{TEMP_PREFIX}{ended.pid}-0a1b2c3d-report.txt", b"partial")
    alive = write(local / f"{TEMP_PREFIX}{os.getpid()}-0a1b2c3d-report.txt", b"in progress")
    unrelated = write(local / ".radmin-get-notapid-report.txt", b"someone's file")
    source = write(remote / "report.txt", b"report\n")
    assert run_cli(client_home, "get", host, str(source), f"{local}/").returncode == 0
    assert not dead.exists()
    assert alive.exists() and unrelated.exists()


def test_get_dropped_connection_exits_255_and_keeps_the_old_file(
    daemon, host, client_home, local, big_file
):
    old = write(local / "big.bin", b"old content\n")
    proc = start_get(client_home, host, str(big_file), f"{local}/")
    try:
        wait_until(lambda: receiving(proc.pid, local), 20, "the download to start")
        daemon.proc.kill()
        assert proc.wait(timeout=30) == 255
    finally:
        stop_process(proc)
    assert b"connection" in proc.stderr.read()
    assert old.read_bytes() == b"old content\n"
    assert sorted(p.name for p in local.iterdir()) == ["big.bin"]


@pytest.fixture
def small_disk(tmpfs) -> Path:
    """A 2 MiB filesystem, to fill up."""
    return tmpfs("small", "size=2m")


def test_get_full_local_disk_exits_1_keeps_the_old_file_and_the_connection(
    daemon, host, client_home, remote, small_disk
):
    old = os.urandom(100 * 1024)
    write(small_disk / "data.bin", old)
    source = write(remote / "data.bin", os.urandom(5 * MiB))
    result = run_cli(client_home, "get", host, str(source), f"{small_disk}/")
    assert result.returncode == 1, result.stderr
    assert b"not enough space" in result.stderr
    assert (small_disk / "data.bin").read_bytes() == old
    assert sorted(p.name for p in small_disk.iterdir()) == ["data.bin"]

    small = write(remote / "small.txt", b"still in step\n")
    with api(client_home, daemon) as conn:
        with pytest.raises(LocalFileError, match="not enough space"):
            conn.get(str(source), f"{small_disk}/")
        assert conn.ping().client == "ops"
        assert conn.get(str(small), f"{small_disk}/").status == "changed"
    assert (small_disk / "small.txt").read_bytes() == b"still in step\n"


def test_get_ctrl_c_mid_transfer_exits_130_and_keeps_the_old_file(
    host, client_home, local, big_file
):
    old = write(local / "big.bin", b"old content\n")
    proc = start_get(client_home, host, str(big_file), f"{local}/")
    try:
        wait_until(lambda: receiving(proc.pid, local), 20, "the download to start")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        stop_process(proc)
    assert old.read_bytes() == b"old content\n"
    assert sorted(p.name for p in local.iterdir()) == ["big.bin"]


def test_get_local_failure_before_the_data_cancels_and_keeps_the_connection_in_step(
    daemon, client_home, remote, local
):
    """The daemon streams as soon as it has said PROCEED; a client that cannot land the
    file (here: no room under its RLIMIT_FSIZE) sends CANCEL, skips what was already on
    the way, and the connection serves the next request."""
    source = write(remote / "data.bin", os.urandom(8 * MiB))
    write(local / "data.bin", b"old\n")
    script = (
        "import resource, sys\n"
        "from radmin.client import ClientOptions, LocalFileError, connect\n"
        "from radmin.hosts import Target\n"
        "from radmin.identity import ClientHome\n"
        "from pathlib import Path\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "home, port, source, local = sys.argv[1:]\n"
        "options = ClientOptions(ClientHome(Path(home)))\n"
        "with connect(Target('d', '127.0.0.1', int(port)), options) as conn:\n"
        "    try:\n"
        "        conn.get(source, local)\n"
        "    except LocalFileError as exc:\n"
        "        print('failed:', exc)\n"
        "    print('ping:', conn.ping().client)\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(client_home.path),
            str(daemon.port),
            str(source),
            f"{local}/",
        ],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0].startswith("failed: ") and "the old file" in lines[0], lines
    assert lines[1] == "ping: ops"
    assert (local / "data.bin").read_bytes() == b"old\n"
    assert sorted(p.name for p in local.iterdir()) == ["data.bin"]


def test_get_into_a_read_only_folder_exits_1_with_a_clear_message(host, client_home, remote, tmpfs):
    read_only = tmpfs("ro", "size=1m")
    write(read_only / "motd", b"old\n")
    remounted = subprocess.run(["mount", "-o", "remount,ro", str(read_only)], capture_output=True)
    if remounted.returncode != 0:
        pytest.skip(f"cannot remount read-only: {remounted.stderr.decode().strip()}")
    source = write(remote / "motd", b"new\n")
    result = run_cli(client_home, "get", host, str(source), f"{read_only}/")
    assert result.returncode == 1, result.stderr
    assert b"Read-only file system" in result.stderr
    assert (read_only / "motd").read_bytes() == b"old\n"


def test_get_into_a_missing_local_folder_exits_1(host, client_home, remote, local):
    source = write(remote / "f", b"f")
    result = run_cli(client_home, "get", host, str(source), f"{local}/missing/")
    assert result.returncode == 1
    assert f"{local}/missing".encode() in result.stderr


_WRONG_DIGEST = """
import sys
from radmin.ops import get
get.DIGESTS.get = lambda st: "0" * 64  # a daemon that announces the wrong digest
from radmin.cli.radmind import main
sys.exit(main(sys.argv[1:]))
"""


def test_get_checksum_mismatch_exits_1_and_keeps_the_old_file(
    tmp_path, server_identity, client_home, remote, local
):
    daemon = prepare_daemon(
        tmp_path / "lying", server_identity, {"ops": client_entry(client_home, get=["/**"])}
    )
    daemon.program = [sys.executable, "-c", _WRONG_DIGEST]
    try:
        daemon.start()
        trust(client_home, daemon)
        write(local / "data.bin", b"old content\n")
        source = write(remote / "data.bin", os.urandom(MiB))
        result = run_cli(client_home, "get", daemon.address, str(source), f"{local}/")
    finally:
        daemon.stop()
    assert result.returncode == 1, result.stderr
    assert b"checksum mismatch" in result.stderr
    assert (local / "data.bin").read_bytes() == b"old content\n"
    assert sorted(p.name for p in local.iterdir()) == ["data.bin"]


# -- the remote file changes while it is sent ------------------------------------------


def test_get_file_changing_while_sent_is_reported_not_delivered_torn(
    daemon, host, client_home, remote, local
):
    source = write(remote / "growing.log", os.urandom(60 * MiB))
    write(local / "growing.log", b"old\n")
    stop = threading.Event()

    def rewrite() -> None:
        with open(source, "r+b") as f:
            while not stop.is_set():
                f.seek(MiB)
                f.write(os.urandom(16))
                f.flush()
                time.sleep(0.001)

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        result = run_cli(client_home, "get", host, str(source), f"{local}/")
    finally:
        stop.set()
        writer.join()
    assert result.returncode == 1, result.stderr
    assert b"changed while it was being sent" in result.stderr
    assert (local / "growing.log").read_bytes() == b"old\n"
    assert sorted(p.name for p in local.iterdir()) == ["growing.log"]
    assert wait_get_events(daemon, 1)[0]["outcome"] == "failed"


def test_get_file_shrinking_while_sent_is_reported(daemon, host, client_home, remote, local):
    source = write(remote / "shrinking.bin", os.urandom(80 * MiB))
    proc = start_get(client_home, host, str(source), f"{local}/")
    try:
        wait_until(lambda: receiving(proc.pid, local), 20, "the download to start")
        os.truncate(source, MiB)
        assert proc.wait(timeout=30) == 1
    finally:
        stop_process(proc)
    stderr = proc.stderr.read()
    assert b"shrank" in stderr or b"changed while it was being sent" in stderr, stderr
    assert list(local.iterdir()) == []


# -- several hosts ---------------------------------------------------------------------


def test_get_from_several_hosts_lands_in_host_folders_in_parallel(
    daemon_factory, client_home, remote, local
):
    daemon = daemon_factory(
        {"ops": client_entry(client_home, get=["/**"])},
        listen=["127.0.0.1:0", "127.0.0.2:0", "127.0.0.3:0"],
    )
    addresses = trust(client_home, daemon)
    (client_home.path / "config.yaml").write_text(f"hosts:\n  web1: {addresses[0]}\n")
    data = os.urandom(200 * 1024)
    source = write(remote / "syslog", data, 0o640)
    hosts = ",".join(["web1", *addresses[1:]])
    result = run_cli(client_home, "get", "--json", hosts, str(source), str(local / "logs"))
    assert result.returncode == 0, result.stderr
    records = {r["host"]: r for r in map(json.loads, result.stdout.splitlines())}
    folders = ["web1", *(a.replace(":", "_") for a in addresses[1:])]
    assert set(records) == {"web1", *addresses[1:]}
    for label, folder in zip(["web1", *addresses[1:]], folders, strict=True):
        landed = local / "logs" / folder / "syslog"
        assert landed.read_bytes() == data
        assert stat.S_IMODE(landed.stat().st_mode) == 0o640
        assert records[label]["path"] == str(landed)
        assert records[label]["status"] == "changed"


def test_get_from_several_hosts_human_lines_and_summary(
    daemon_factory, client_home, remote, tmp_path
):
    daemon = daemon_factory(
        {"ops": client_entry(client_home, get=["/**"])}, listen=["127.0.0.1:0", "127.0.0.2:0"]
    )
    addresses = trust(client_home, daemon)
    source = write(remote / "motd", b"hi\n")
    done = subprocess.run(
        [RADMIN_CLI, "get", ",".join(addresses), str(source)],
        cwd=tmp_path,
        env=cli_env(client_home),
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for address in addresses:
        assert (tmp_path / address.replace(":", "_") / "motd").read_bytes() == b"hi\n"
        assert f"{address}: changed ./{address.replace(':', '_')}/motd".encode() in done.stdout
    assert b"2 changed" in done.stderr


def test_get_ipv6_host_folder_has_no_brackets_or_colons(daemon_factory, client_home, remote, local):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    daemon = daemon_factory(
        {"ops": client_entry(client_home, get=["/**"])}, listen=["[::1]:0", "127.0.0.1:0"]
    )
    addresses = trust(client_home, daemon)
    source = write(remote / "motd", b"v6\n")
    result = run_cli(client_home, "get", ",".join(addresses), str(source), str(local))
    assert result.returncode == 0, result.stderr
    v6 = next(a for a in addresses if a.startswith("["))
    folder = v6.replace("[", "").replace("]", "").replace(":", "_")
    assert folder.startswith("__1_")
    assert (local / folder / "motd").read_bytes() == b"v6\n"


def test_get_one_host_failing_others_succeed_exit_1(daemon_factory, client_home, remote, local):
    allowed = daemon_factory(
        {"ops": client_entry(client_home, get=["/**"])}, listen=["127.0.0.1:0"]
    )
    refusing = daemon_factory({"ops": client_entry(client_home)}, listen=["127.0.0.2:0"])
    hosts = [*trust(client_home, allowed), *trust(client_home, refusing)]
    source = write(remote / "f", b"f")
    result = run_cli(client_home, "get", "--json", ",".join(hosts), str(source), str(local))
    assert result.returncode == 1
    records = {r["host"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert records[hosts[0]]["status"] == "changed"
    assert records[hosts[1]]["status"] == "error"
    assert "allow.get is empty" in records[hosts[1]]["error"]


# -- the progress bar ------------------------------------------------------------------


def test_get_progress_bar_on_a_terminal_only(host, client_home, local, big_file):
    from test_put import run_with_pty_stderr

    status, _stdout, terminal = run_with_pty_stderr(
        client_home, "get", host, str(big_file), f"{local}/"
    )
    assert status == 0, terminal
    assert b"B/s" in terminal and b"%" in terminal, terminal
    (local / "big.bin").unlink()
    piped = run_cli(client_home, "get", host, str(big_file), f"{local}/")
    assert piped.returncode == 0 and piped.stderr == b""


# -- heartbeats ------------------------------------------------------------------------


def test_get_from_a_frozen_daemon_exits_255_within_three_heartbeats(
    daemon, host, client_home, remote, local
):
    source = remote / "sparse.bin"
    with open(source, "wb") as f:
        f.truncate(1024**3)  # read fast, sent for seconds
    old = write(local / "sparse.bin", b"old content\n")
    proc = start_get(client_home, "--heartbeat-interval", "0.5", host, str(source), f"{local}/")
    try:
        wait_until(lambda: receiving(proc.pid, local), 20, "the download to start")
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert proc.wait(timeout=15) == 255
            took = time.monotonic() - started
        finally:
            os.kill(daemon.proc.pid, signal.SIGCONT)
    finally:
        stop_process(proc)
    assert took < 1.5 + 4.0  # three intervals, and a loaded machine
    assert b"no answer from" in proc.stderr.read()
    assert old.read_bytes() == b"old content\n"
    assert sorted(p.name for p in local.iterdir()) == ["sparse.bin"]


def test_get_longer_than_three_heartbeat_intervals_succeeds(host, client_home, remote, local):
    source = remote / "sparse.bin"
    with open(source, "wb") as f:
        f.truncate(256 * MiB)
    got = run_cli(client_home, "get", "--heartbeat-interval", "0.1", host, str(source), f"{local}/")
    assert got.returncode == 0, got.stderr
    assert (local / "sparse.bin").stat().st_size == 256 * MiB
