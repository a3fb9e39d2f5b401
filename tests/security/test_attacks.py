"""The attack suite: a low-privilege client against a real radmind running as root.

Each escape found when radmin was tried as an attacker is a test here, run through the
real radmin-cli (or the Python API where the attack needs exact timing). The client
"limited" is what a least-privilege deployment looks like: a few argv patterns, run_as
nobody, uploads into one folder. "admin" has "*" and run_as root.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from support import (
    RADMIND,
    Daemon,
    base_config,
    client_entry,
    frames_after_hello,
    make_client_home,
    run_cli,
    trust,
    wait_until,
)

from radmin.client import ClientOptions, RemoteError, connect
from radmin.hosts import Target
from radmin.identity import ClientHome
from radmin.journal import TEMP_PREFIX
from radmin.protocol import FrameType

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as run_as nobody")

NOBODY = "nobody"


@dataclass
class Site:
    daemon: Daemon
    limited: ClientHome
    admin: ClientHome
    area: Path  # the tree "limited" may write below, under /var/tmp (nobody can reach it)

    @property
    def host(self) -> str:
        return self.daemon.address


def _make_area() -> Path:
    area = Path(tempfile.mkdtemp(prefix="radmin-attack-", dir="/var/tmp"))
    area.chmod(0o755)
    (area / "pub").mkdir(mode=0o777)
    (area / "pub").chmod(0o777)
    (area / "sticky").mkdir()
    (area / "sticky").chmod(0o1777)
    (area / "rootonly").mkdir(mode=0o755)
    (area / "outside").mkdir(mode=0o777)
    (area / "outside").chmod(0o777)
    return area


@pytest.fixture(scope="module")
def site(tmp_path_factory, server_identity) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("attacks")
    (folder / "uploads").mkdir()
    area = _make_area()
    limited = make_client_home(folder / "limited")
    admin = make_client_home(folder / "admin")
    config = base_config(server_identity, folder)
    config["clients"] = {
        "limited": client_entry(
            limited,
            exec_allow=(
                "uptime",
                "echo *",
                "printf * *",
                "tail -n 5 /var/log/*",
                "find /var/log *",
                "pwd",
                "env",
                "no-such-program-radmin",
                f"{area}/pub/tool",
                "cat",
            ),
            put_allow=(f"{area}/pub/**", f"{area}/sticky/**", f"{area}/rootonly/**"),
            run_as=NOBODY,
            env=["DEPLOY_ENV", "PATH", "LD_PRELOAD"],
            cwd=[f"{area}/pub/**"],
        ),
        "admin": client_entry(admin),
    }
    env = {**os.environ, "RADMIN_TEST_SECRET": "daemon-only", "LC_TIME": "C.UTF-8"}
    daemon = Daemon(folder, config, env=env).start()
    trust(limited, daemon)
    trust(admin, daemon)
    try:
        yield Site(daemon, limited, admin, area)
    finally:
        daemon.stop()
        shutil.rmtree(area, ignore_errors=True)


def cli(site: Site, *args: str, home: ClientHome | None = None, **kwargs):
    return run_cli(home or site.limited, *args, **kwargs)


def refused_exec(result: subprocess.CompletedProcess[bytes]) -> bool:
    return result.returncode == 126 and b"refused by the daemon's policy: " in result.stderr


def temp_files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(f"{TEMP_PREFIX}*")]


def api(site: Site, home: ClientHome):
    options = ClientOptions(home=home)
    host, port = site.host.split(":")
    return connect(Target(site.host, host, int(port)), options)


# -- exec: -e cannot defeat allow.exec --------------------------------------------------


def test_env_path_cannot_redirect_an_allowed_program(site):
    """-e PATH=/dir/it/may/upload/to uptime ran the attacker's `uptime` as root."""
    marker = site.area / "pub" / "pwned-path"
    fake = site.area / "pub" / "uptime"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(0o755)
    result = cli(site, "exec", "-e", f"PATH={site.area}/pub", site.host, "uptime")
    assert refused_exec(result), result.stderr
    assert b"PATH" in result.stderr and b"env_unsafe" in result.stderr
    assert not marker.exists()
    # Without -e, `uptime` is the system's, from the fixed safe PATH.
    result = cli(site, "exec", site.host, "uptime")
    assert result.returncode == 0 and b"load average" in result.stdout
    assert not marker.exists()


@pytest.mark.parametrize("name", ["LD_PRELOAD", "BASH_ENV", "PYTHONPATH", "GIT_SSH_COMMAND"])
def test_env_unsafe_names_are_refused(site, name):
    result = cli(site, "exec", "-e", f"{name}=/tmp/x", site.host, "uptime")
    assert refused_exec(result), result.stderr


def test_env_name_not_listed_is_refused_and_a_listed_one_arrives(site):
    assert refused_exec(cli(site, "exec", "-e", "OTHER=1", site.host, "env"))
    result = cli(site, "exec", "-e", "DEPLOY_ENV=blue", site.host, "env")
    assert result.returncode == 0, result.stderr
    assert b"DEPLOY_ENV=blue\n" in result.stdout


def test_environment_is_built_from_scratch(site):
    result = cli(site, "exec", site.host, "env")
    assert result.returncode == 0, result.stderr
    env = dict(line.split("=", 1) for line in result.stdout.decode().splitlines())
    assert "RADMIN_TEST_SECRET" not in env  # the daemon's own variables never leak in
    assert env["LC_TIME"] == "C.UTF-8"  # locale and time zone do
    assert env["USER"] == NOBODY and env["LOGNAME"] == NOBODY
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"


# -- exec: argv matching ----------------------------------------------------------------


def test_dot_dot_through_a_glob_does_not_read_shadow(site):
    result = cli(site, "exec", site.host, "tail -n 5 /var/log/../../etc/shadow")
    assert refused_exec(result), result.stderr
    assert result.stdout == b""


def test_extra_words_after_a_glob_are_refused(site):
    result = cli(site, "exec", site.host, "tail -n 5 /var/log/syslog /etc/shadow")
    assert refused_exec(result) and result.stdout == b""


def test_find_cannot_run_exec_through_a_glob(site):
    marker = site.area / "pub" / "pwned-find"
    result = cli(site, "exec", site.host, f"find /var/log -exec touch {marker} +")
    assert refused_exec(result)
    assert not marker.exists()


@pytest.mark.parametrize(
    "command",
    [
        "echo $(id)",
        "echo `id`",
        "echo x; id",
        "echo x && id",
        "echo x | sh",
        "echo 'x;id'",
        "echo x\\ y",
        "echo $'\\x41'",
        "echo > /tmp/radmin-attack-file",
        "echo *",
        "echo ~root",
        "echo x\nid",
    ],
)
def test_shell_syntax_is_refused_for_a_restricted_client(site, command):
    result = cli(site, "exec", site.host, command)
    assert refused_exec(result), (command, result.stderr)
    assert result.stdout == b""


def test_quoted_argument_reaches_the_program_as_one_argument_without_a_shell(site):
    result = cli(site, "exec", site.host, "printf '=%s=' 'a b'")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"=a b="


def test_option_injected_into_a_plain_glob_is_refused(site):
    assert refused_exec(cli(site, "exec", site.host, "echo -e x"))
    assert refused_exec(cli(site, "exec", site.host, "printf -v x y"))


def test_missing_program_exits_127(site):
    result = cli(site, "exec", site.host, "no-such-program-radmin")
    assert result.returncode == 127
    assert b"command not found" in result.stderr


def test_relative_program_path_is_a_check_error(site, tmp_path):
    config = dict(site.daemon.config)
    entry = dict(config["clients"]["limited"])
    entry["allow"] = {**entry["allow"], "exec": ["./deploy.sh"]}
    config["clients"] = {"limited": entry}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([RADMIND, "check", "-c", str(path)], capture_output=True)
    assert result.returncode == 1
    assert b"clients.limited.allow.exec" in result.stderr
    assert b"bare name or an absolute path" in result.stderr


# -- exec: working directory -------------------------------------------------------------


def test_default_working_directory_is_home_or_root(site):
    """nobody's home (/nonexistent) does not exist: commands start in / instead of
    failing."""
    result = cli(site, "exec", site.host, "pwd")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"/\n"


def test_cwd_outside_allow_cwd_is_refused_without_an_oracle(site):
    for place in ("/etc", "/no/such/folder", f"{site.area}/pub/../outside"):
        result = cli(site, "exec", "--cwd", place, site.host, "pwd")
        assert refused_exec(result), (place, result.stderr)
        assert b"does not exist" not in result.stderr


def test_cwd_inside_allow_cwd_works_and_a_symlink_out_is_refused(site):
    inside = site.area / "pub" / "work"
    inside.mkdir(exist_ok=True)
    result = cli(site, "exec", "--cwd", str(inside), site.host, "pwd")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == str(inside)
    link = site.area / "pub" / "escape"
    if not link.is_symlink():
        link.symlink_to("/etc")
    assert refused_exec(cli(site, "exec", "--cwd", str(link), site.host, "pwd"))


# -- exec: audit -------------------------------------------------------------------------


def test_denied_exec_is_logged_with_its_command_line_as_a_warning(site):
    command = "tail -n 5 /var/log/../../etc/audit-marker"
    assert refused_exec(cli(site, "exec", site.host, command))
    event = site.daemon.wait_for_event(
        lambda e: e.get("event") == "request" and e.get("command") == command
    )
    assert event["level"] == "warning"
    assert event["outcome"] == "denied"
    assert event["client"] == "limited"
    assert event["fingerprint"].startswith("SHA256:")
    assert event["rule"] is None
    assert event["run_as"] == NOBODY
    assert "peer" in event


def test_allowed_exec_is_logged_with_argv_rule_and_env_names_only(site):
    result = cli(site, "exec", "-e", "DEPLOY_ENV=secret-value", site.host, "echo audit-ok")
    assert result.returncode == 0, result.stderr
    event = site.daemon.wait_for_event(
        lambda e: e.get("event") == "request" and e.get("command") == "echo audit-ok"
    )
    assert event["level"] == "info" and event["outcome"] == "ok"
    assert event["argv"] == ["echo", "audit-ok"]
    assert event["rule"] == "echo *"
    assert event["env_names"] == ["DEPLOY_ENV"]
    assert "secret-value" not in site.daemon.log_path.read_text()


# -- put: run_as bounds uploads -----------------------------------------------------------


def _local_copy_of_id(tmp_path: Path, mode: int = 0o755) -> Path:
    local = tmp_path / "id-copy"
    shutil.copy("/usr/bin/id", local)
    local.chmod(mode)
    return local


@pytest.mark.parametrize(
    "options",
    [
        ["--owner", "root", "--mode", "4755"],
        ["--mode", "4755"],
        ["--mode", "2755"],
        ["--mode", "1755"],
        ["--owner", "root"],
        ["--group", "root"],
        ["--owner", "no-such-user-radmin"],  # refused as foreign, not "no such user"
    ],
)
def test_non_root_run_as_cannot_make_setid_or_foreign_owned_files(site, tmp_path, options):
    local = _local_copy_of_id(tmp_path)
    dest = site.area / "pub" / "suid-id"
    result = cli(site, "put", *options, str(local), site.host, str(dest))
    assert result.returncode == 1, result.stderr
    assert b"refused by the daemon's policy: " in result.stderr
    assert b"no such" not in result.stderr  # no oracle for which users exist
    assert not dest.exists()


def test_local_setuid_file_is_refused_for_non_root_run_as(site, tmp_path):
    local = _local_copy_of_id(tmp_path, mode=0o4755)
    dest = site.area / "pub" / "local-suid"
    result = cli(site, "put", str(local), site.host, str(dest))
    assert result.returncode == 1 and b"setuid" in result.stderr
    assert not dest.exists()


def test_upload_belongs_to_run_as_and_its_own_group_is_accepted(site, tmp_path):
    local = _local_copy_of_id(tmp_path)
    dest = site.area / "pub" / "own-id"
    result = cli(
        site, "put", "--owner", NOBODY, "--group", "nogroup", str(local), site.host, str(dest)
    )
    assert result.returncode == 0, result.stderr
    st = dest.stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert stat.S_IMODE(st.st_mode) == 0o755


def test_uploaded_copy_of_id_runs_as_nobody_not_root(site, tmp_path):
    """The original escape: upload id as setuid root, run it, get euid=0."""
    local = _local_copy_of_id(tmp_path)
    cli(site, "put", "--owner", "root", "--mode", "4755", str(local), site.host,
        str(site.area / "pub" / "tool"))
    result = cli(site, "put", str(local), site.host, str(site.area / "pub" / "tool"))
    assert result.returncode == 0, result.stderr
    result = cli(site, "exec", site.host, f"{site.area}/pub/tool")
    assert result.returncode == 0, result.stderr
    assert b"euid=" not in result.stdout
    assert result.stdout.startswith(b"uid=65534(nobody)")


def test_run_as_user_cannot_overwrite_a_root_file_in_a_root_folder(site, tmp_path):
    protected = site.area / "rootonly" / "config"
    protected.write_text("root's\n")
    protected.chmod(0o644)
    local = tmp_path / "config"
    local.write_text("attacker's\n")
    result = cli(site, "put", str(local), site.host, str(protected))
    assert result.returncode == 1
    assert b"Permission denied" in result.stderr
    assert protected.read_text() == "root's\n"
    assert temp_files_under(site.area / "rootonly") == []


def test_run_as_user_cannot_replace_a_root_file_in_a_sticky_folder(site, tmp_path):
    protected = site.area / "sticky" / "root-owned"
    protected.write_text("root's\n")
    protected.chmod(0o666)  # even world-writable content: the name is root's (sticky bit)
    local = tmp_path / "root-owned"
    local.write_text("attacker's\n")
    result = cli(site, "put", str(local), site.host, str(protected))
    assert result.returncode == 1, result.stderr
    assert protected.read_text() == "root's\n"
    assert protected.stat().st_uid == 0
    assert temp_files_under(site.area / "sticky") == []


def test_put_replaces_a_symlink_at_the_destination_never_its_target(site, tmp_path):
    target = site.area / "rootonly" / "shadow-like"
    target.write_text("secret\n")
    target.chmod(0o600)
    link = site.area / "pub" / "link"
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    local = tmp_path / "link"
    local.write_text("new\n")
    result = cli(site, "put", "--mode", "666", str(local), site.host, str(link))
    assert result.returncode == 0, result.stderr
    assert not link.is_symlink() and link.read_text() == "new\n"
    assert target.read_text() == "secret\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.stat().st_uid == 0


def test_symlinked_folder_leading_outside_allow_put_is_refused(site, tmp_path):
    link = site.area / "pub" / "to-outside"
    if not link.is_symlink():
        link.symlink_to(site.area / "outside")
    local = tmp_path / "f"
    local.write_text("x\n")
    result = cli(site, "put", str(local), site.host, f"{link}/f")
    assert result.returncode == 1
    assert b"refused by the daemon's policy: " in result.stderr
    assert not (site.area / "outside" / "f").exists()


def test_swap_race_never_writes_outside_or_touches_a_link_target(site, tmp_path):
    """A loop swaps a folder for a symlink (to a forbidden folder) thousands of times
    while uploads with --mode run into it: no upload lands outside allow.put, the
    protected file keeps its owner and mode, no temporary file is left anywhere."""
    racing = site.area / "pub" / "racing"
    real = site.area / "pub" / "racing-real"
    real.mkdir(exist_ok=True)
    real.chmod(0o777)
    forbidden = site.area / "outside"
    protected = forbidden / "victim"
    protected.write_text("root's\n")
    protected.chmod(0o600)
    spare = site.area / "pub" / "racing-swap"
    stop = threading.Event()
    swaps = 0

    def swapper() -> None:
        nonlocal swaps
        while not stop.is_set():
            for source in (real, None):
                spare.unlink(missing_ok=True)
                if source is None:
                    spare.symlink_to(forbidden)
                else:
                    spare.symlink_to(source)  # a symlink to the allowed real folder
                os.replace(spare, racing)
                swaps += 1

    local = tmp_path / "victim"
    local.write_text("attacker's\n")
    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    outcomes = {"ok": 0, "refused": 0}
    try:
        with api(site, site.limited) as conn:
            for _ in range(150):
                try:
                    conn.put(str(local), f"{racing}/victim", mode=0o666)
                    outcomes["ok"] += 1
                except RemoteError:
                    outcomes["refused"] += 1
    finally:
        stop.set()
        thread.join()
    assert swaps > 1000, swaps
    assert outcomes["ok"] > 0 and outcomes["refused"] > 0, outcomes
    assert protected.read_text() == "root's\n"
    st = protected.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    assert sorted(p.name for p in forbidden.iterdir()) == ["victim"]
    assert temp_files_under(site.area) == []


def test_admin_with_root_run_as_may_set_any_owner_and_setid_bits(site, tmp_path):
    local = tmp_path / "admin-tool"
    local.write_text("#!/bin/sh\n")
    dest = site.area / "rootonly" / "admin-tool"
    result = cli(
        site, "put", "--owner", NOBODY, "--mode", "4750", str(local), site.host, str(dest),
        home=site.admin,
    )
    assert result.returncode == 0, result.stderr
    st = dest.stat()
    assert st.st_uid == 65534 and stat.S_IMODE(st.st_mode) == 0o4750


def test_existing_file_keeps_owner_for_root_and_becomes_run_as_for_others(site, tmp_path):
    dest = site.area / "pub" / "shared.conf"
    dest.write_text("old\n")
    os.chown(dest, 0, 0)
    dest.chmod(0o640)
    local = tmp_path / "shared.conf"
    local.write_text("new\n")
    local.chmod(0o600)
    result = cli(site, "put", "--json", str(local), site.host, str(dest), home=site.admin)
    assert result.returncode == 0, result.stderr
    st = dest.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o640)  # kept, as Ansible copy
    local.write_text("newer\n")
    result = cli(site, "put", str(local), site.host, str(dest))
    assert result.returncode == 0, result.stderr
    st = dest.stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)  # the file now belongs to run_as
    assert stat.S_IMODE(st.st_mode) == 0o640  # its bits are kept


# -- oversize values ----------------------------------------------------------------------


def test_oversize_command_env_and_path_get_clear_errors(site, tmp_path):
    long_command = "echo " + "a" * 70_000
    result = cli(site, "exec", site.host, long_command, home=site.admin)
    assert result.returncode in (126, 255) and result.stderr
    assert b"Traceback" not in result.stderr
    result = cli(site, "exec", "-e", "DEPLOY_ENV=" + "v" * 70_000, site.host, "env")
    assert result.returncode in (126, 255) and b"Traceback" not in result.stderr
    local = tmp_path / "f"
    local.write_text("x")
    deep = str(site.area / "pub") + "/" + "d" * 300 + "/f"
    result = cli(site, "put", str(local), site.host, deep)
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    assert cli(site, "exec", site.host, "echo still-up").stdout == b"still-up\n"


@pytest.mark.parametrize("who", ["limited", "admin"])
def test_folder_renamed_mid_upload_leaves_no_temporary_file(site, who):
    """The temporary file is removed through the folder's descriptor, wherever the
    folder went (run_as nobody: the helper child; root: the daemon itself)."""
    home = site.limited if who == "limited" else site.admin
    moving = site.area / "pub" / f"moving-{who}"
    moved = site.area / "pub" / f"moved-{who}"
    moving.mkdir(mode=0o777)
    moving.chmod(0o777)
    frames = frames_after_hello(home, site.daemon.port)
    dest = moving / "f.bin"
    frames.send_json(
        FrameType.REQUEST,
        {"op": "put", "path": str(dest), "name": "f.bin", "size": 100_000, "sha256": None},
    )
    frames.recv_json(FrameType.PROCEED)
    frames.send_frame(FrameType.FILE_DATA, b"x" * 1000)
    wait_until(lambda: temp_files_under(moving), timeout=5, what="the temporary file")
    moving.rename(moved)
    frames.close()  # the client goes away mid-upload
    site.daemon.wait_for_event(
        lambda e: e.get("event") == "request" and e.get("path") == str(dest)
    )
    assert temp_files_under(moved) == []
    assert os.listdir(moved) == []
