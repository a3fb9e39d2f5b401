"""Files radmin creates have safe modes whatever the umask, and a private key that group
or others can access is refused -- by `radmind check`, by `radmind run` and by
`radmin-cli` -- as OpenSSH refuses one.

The programs run for real, under umask 000 where the umask matters: the worst a careless
init script or cron job can hand them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from support import RADMIND, client_entry, run_cli, under_umask

from radmin.identity import ClientHome
from radmin.log import LOG_FILE_MODE

REPO = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def radmind(
    *args: str, umask: int | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    argv = [RADMIND, *args]
    return subprocess.run(
        argv if umask is None else under_umask(umask, argv),
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "RADMIN_CONFIG"},
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


# -- what radmin creates ---------------------------------------------------------------


def test_init_under_umask_000_writes_config_0640_key_0600_in_a_0755_folder(tmp_path):
    folder = tmp_path / "etc" / "radmin"
    result = radmind("init", "--dir", str(folder), umask=0)
    assert result.returncode == 0, result.stderr
    assert mode(folder / "radmind.yaml") == 0o640
    assert mode(folder / "server.key") == 0o600
    assert mode(folder / "server.crt") == 0o644
    assert mode(folder) == 0o755  # others may not swap the key or the config


def test_keygen_under_umask_000_makes_an_owner_only_home_and_key(tmp_path):
    home = ClientHome(tmp_path / "config" / "radmin")
    result = run_cli(home, "keygen", umask=0)
    assert result.returncode == 0, result.stderr
    assert mode(home.path) == 0o700  # like ~/.ssh
    assert mode(home.key) == 0o600
    assert mode(home.cert) == 0o644


def test_known_hosts_recorded_under_umask_000_is_not_writable_by_others(daemon, client_home):
    result = run_cli(client_home, "ping", daemon.address, umask=0)
    assert result.returncode == 0, result.stderr
    assert mode(client_home.known_hosts) == 0o644  # others adding a line = a trusted host


def test_log_file_is_created_0640_under_umask_000_and_so_is_its_reopened_successor(
    daemon_factory,
):
    daemon = daemon_factory(umask=0, log={"level": "info", "format": "json", "file": "events.log"})
    log_file = daemon.log_path
    assert log_file.name == "events.log" and daemon.events()  # the daemon wrote it
    assert mode(log_file) == 0o640

    log_file.rename(log_file.with_name("events.log.1"))  # logrotate without `create`
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_event(lambda e: e.get("event") == "reloaded")
    assert mode(log_file) == 0o640


def test_logrotate_snippet_creates_log_files_with_the_mode_radmind_uses():
    snippet = (REPO / "packaging" / "logrotate" / "radmind").read_text()
    (create,) = re.findall(r"^\s*create (\d+) (\S+) (\S+)$", snippet, re.MULTILINE)
    assert int(create[0], 8) == LOG_FILE_MODE == 0o640
    assert create[1:] == ("root", "adm")


# -- private keys others can read are refused -----------------------------------------

CONFIG = """\
listen: ["127.0.0.1:0"]
identity:
  key: server.key
  cert: server.crt
"""
KEY_LINE = 3


@pytest.fixture
def config(tmp_path, server_identity) -> Path:
    """radmind.yaml beside a copy of the server identity (key 0600, as init makes it)."""
    folder = tmp_path / "etc-radmin"
    folder.mkdir()
    for name in ("server.key", "server.crt"):
        shutil.copy(server_identity / name, folder / name)
    (folder / "state").mkdir()
    path = folder / "radmind.yaml"
    path.write_text(CONFIG + f"state_dir: {folder / 'state'}\n")
    return path


def too_open(key: Path, key_mode: int) -> str:
    """The complaint about a key others can access, as radmind and radmin-cli word it."""
    return (
        f"permissions {key_mode:04o} for {key} are too open: the private key must not be "
        f"accessible by group or others; run: chmod 600 {key}"
    )


def key_mode_complaint(config: Path, key_mode: int) -> str:
    """radmind's line for it: FILE:LINE: KEY: what is wrong."""
    return f"{config}:{KEY_LINE}: identity.key: {too_open(config.parent / 'server.key', key_mode)}"


@pytest.mark.parametrize("key_mode", [0o640, 0o604, 0o620], ids=oct)
def test_check_refuses_a_server_key_group_or_others_can_access(config, key_mode):
    os.chmod(config.parent / "server.key", key_mode)
    result = radmind("check", "-c", str(config))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [key_mode_complaint(config, key_mode)]


def test_the_fix_check_names_makes_the_config_pass(config):
    os.chmod(config.parent / "server.key", 0o644)
    complaint = radmind("check", "-c", str(config)).stderr
    fix = re.search(r"run: (chmod 600 \S+)$", complaint, re.MULTILINE)
    assert fix, complaint
    subprocess.run(shlex.split(fix.group(1)), check=True)
    result = radmind("check", "-c", str(config))
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


def test_the_daemon_refuses_to_start_with_a_key_others_can_read(config):
    os.chmod(config.parent / "server.key", 0o644)
    result = radmind("run", "-c", str(config), timeout=20)  # one that started would time out
    assert result.returncode == 1
    assert result.stderr.splitlines() == [key_mode_complaint(config, 0o644)]


def test_install_md_shows_what_check_says_of_an_init_config_with_a_key_others_can_read(
    tmp_path,
):
    docs = (REPO / "docs" / "install.md").read_text()
    (shown,) = re.findall(r"^/etc/radmin/radmind\.yaml:\d+: identity\.key: .*$", docs, re.M)
    folder = tmp_path / "etc" / "radmin"
    assert radmind("init", "--dir", str(folder)).returncode == 0
    os.chmod(folder / "server.key", 0o640)
    result = radmind("check", "-c", str(folder / "radmind.yaml"))
    assert result.returncode == 1
    assert result.stderr == shown.replace("/etc/radmin", str(folder)) + "\n"


def test_a_reload_with_a_key_others_can_read_is_rejected_and_the_old_config_stays(
    tmp_path, server_identity, daemon_factory, client_home
):
    identity = tmp_path / "identity"
    identity.mkdir()
    for name in ("server.key", "server.crt"):
        shutil.copy(server_identity / name, identity / name)
    daemon = daemon_factory(
        {"ops": client_entry(client_home)},
        identity={"key": str(identity / "server.key"), "cert": str(identity / "server.crt")},
    )
    os.chmod(identity / "server.key", 0o640)
    daemon.signal(signal.SIGHUP)
    rejected = daemon.wait_for_event(lambda e: e.get("event") == "reload_rejected")
    (problem,) = rejected["problems"]
    assert problem.endswith(f"identity.key: {too_open(identity / 'server.key', 0o640)}")
    ping = run_cli(client_home, "ping", daemon.address)
    assert ping.returncode == 0, ping.stderr


def test_cli_refuses_an_identity_key_others_can_read_like_ssh(daemon, client_home):
    os.chmod(client_home.key, 0o644)
    refused = run_cli(client_home, "ping", daemon.address)
    assert refused.returncode == 255
    assert refused.stderr.decode() == (  # the key is ours, not the host's: said once
        f"radmin-cli: UNPROTECTED PRIVATE KEY FILE! {too_open(client_home.key, 0o644)}\n"
    )

    os.chmod(client_home.key, 0o600)
    accepted = run_cli(client_home, "ping", daemon.address)
    assert accepted.returncode == 0, accepted.stderr
    daemon.wait_for_event(lambda e: e.get("event") == "connection_closed")
    # The refused run never connected: the only connection the daemon saw is the second.
    connections = [
        e for e in daemon.events() if e.get("event") in ("connection_closed", "handshake_failed")
    ]
    assert len(connections) == 1, connections
