"""get cannot read what allow.get and the run_as user's rights do not grant.

The one path rule (docs/policy.md): `..` refused; the path matched against allow.get
before anything on disk is looked at; the parent resolved and matched again; the last
component never followed (a symlink is refused); the file opened with the run_as user's
rights; only a regular file whose content is as long as its size (no FIFO, device,
folder, /proc or /sys file). Each refusal exits 1, quickly (never a hang), and leaves
nothing on the client.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import Daemon, base_config, client_entry, make_client_home, run_cli, trust

from radmin.identity import ClientHome

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as run_as nobody")


@dataclass
class Site:
    daemon: Daemon
    reader: ClientHome  # run_as nobody, allow.get under AREA/pub and /proc, /sys, /dev
    admin: ClientHome  # run_as root (absent), allow.get under AREA/pub
    none: ClientHome  # no allow.get at all
    area: Path  # under /var/tmp, which nobody can reach (pytest's tmp_path is 0700)

    @property
    def host(self) -> str:
        return self.daemon.address


@pytest.fixture(scope="module")
def site(tmp_path_factory, server_identity) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("get-policy")
    (folder / "uploads").mkdir()
    area = Path(tempfile.mkdtemp(prefix="radmin-get-", dir="/var/tmp"))
    area.chmod(0o755)
    for name in ("pub", "secret"):
        (area / name).mkdir(mode=0o755)
    homes = {name: make_client_home(folder / name) for name in ("reader", "admin", "none")}
    pub = f"{area}/pub/**"
    config = base_config(server_identity, folder)
    config["clients"] = {
        "reader": client_entry(
            homes["reader"],
            exec_allow=(),
            put_allow=(),
            run_as="nobody",
            get=[pub, "/proc/**", "/sys/**", "/dev/**"],
        ),
        "admin": client_entry(homes["admin"], exec_allow=(), put_allow=(), get=[pub]),
        "none": client_entry(homes["none"], exec_allow=(), put_allow=()),
    }
    daemon = Daemon(folder, config).start()
    for home in homes.values():
        trust(home, daemon)
    try:
        yield Site(daemon, homes["reader"], homes["admin"], homes["none"], area)
    finally:
        daemon.stop()
        shutil.rmtree(area, ignore_errors=True)


@pytest.fixture
def local(tmp_path) -> Path:
    folder = tmp_path / "local"
    folder.mkdir()
    return folder


def get(site: Site, home: ClientHome, remote: str, local: Path):
    return run_cli(home, "get", "--json", site.host, remote, f"{local}/", timeout=30)


def refused(result, *words: str) -> str:
    """The one --json record of a refused get, checked: exit 1, status error."""
    assert result.returncode == 1, result.stderr
    record = json.loads(result.stdout)
    assert record["status"] == "error"
    for word in words:
        assert word in record["error"], record["error"]
    return record["error"]


def public(site: Site, name: str, data: bytes = b"public\n", mode: int = 0o644) -> Path:
    path = site.area / "pub" / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


# -- allow.get ------------------------------------------------------------------------


def test_get_inside_allow_get_works_for_run_as_nobody(site, local):
    source = public(site, "ok.txt")
    result = get(site, site.reader, str(source), local)
    assert result.returncode == 0, result.stderr
    assert (local / "ok.txt").read_bytes() == b"public\n"


def test_get_without_allow_get_is_refused(site, local):
    source = public(site, "none.txt")
    refused(
        get(site, site.none, str(source), local),
        "refused by the daemon's policy",
        "allow.get is empty",
    )
    assert list(local.iterdir()) == []


def test_get_outside_allow_get_is_refused_before_anything_is_looked_up(site, local):
    error = refused(get(site, site.admin, "/etc/shadow", local), "matches no allow.get pattern")
    assert "/etc/shadow" in error
    missing = refused(get(site, site.admin, "/etc/no-such-file-radmin", local))
    assert "no such file" not in missing  # no oracle: the same refusal either way
    assert list(local.iterdir()) == []


def test_get_dot_dot_is_refused(site, local):
    refused(get(site, site.admin, f"{site.area}/pub/../secret/x", local), "'..'")


def test_get_a_symlink_as_the_last_component_is_refused(site, local):
    secret = site.area / "secret" / "key"
    secret.write_bytes(b"secret\n")
    link = site.area / "pub" / "link-to-key"
    link.unlink(missing_ok=True)
    link.symlink_to(secret)
    refused(get(site, site.admin, str(link), local), "symlink")
    inside = site.area / "pub" / "link-inside"
    inside.unlink(missing_ok=True)
    inside.symlink_to(public(site, "target.txt"))
    refused(get(site, site.admin, str(inside), local), "symlink")  # even pointing inside
    assert list(local.iterdir()) == []


def test_get_through_a_symlinked_folder_is_held_to_where_it_really_leads(site, local):
    (site.area / "secret" / "db.conf").write_bytes(b"password\n")
    out = site.area / "pub" / "out"
    if not out.is_symlink():
        out.symlink_to(site.area / "secret")
    error = refused(get(site, site.admin, f"{out}/db.conf", local), "matches no allow.get")
    assert f"{site.area}/secret/db.conf" in error
    sub = site.area / "pub" / "sub"
    sub.mkdir(exist_ok=True)
    (sub / "ok.txt").write_bytes(b"fine\n")
    stays = site.area / "pub" / "stays"
    if not stays.is_symlink():
        stays.symlink_to(sub)
    assert get(site, site.admin, f"{stays}/ok.txt", local).returncode == 0
    assert (local / "ok.txt").read_bytes() == b"fine\n"


def test_get_a_file_run_as_cannot_read_is_refused_although_the_daemon_is_root(site, local):
    private = public(site, "private.txt", b"root only\n", mode=0o600)
    error = refused(get(site, site.reader, str(private), local), "Permission denied")
    assert "nobody" in error
    assert get(site, site.admin, str(private), local).returncode == 0  # root may


def test_get_a_folder_run_as_cannot_enter_is_refused(site, local):
    closed = site.area / "pub" / "closed"
    closed.mkdir(mode=0o700, exist_ok=True)
    (closed / "f").write_bytes(b"x")
    refused(get(site, site.reader, str(closed / "f"), local), "Permission denied")


# -- only regular files whose content is their size -----------------------------------


def test_get_a_directory_is_refused(site, local):
    refused(get(site, site.admin, f"{site.area}/pub/sub", local), "is a directory")


def test_get_a_fifo_is_refused_without_hanging(site, local):
    fifo = site.area / "pub" / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo, 0o666)
    refused(get(site, site.reader, str(fifo), local), "a FIFO")  # run_cli's timeout: 30 s


def test_get_a_device_is_refused(site, local):
    refused(get(site, site.reader, "/dev/zero", local), "a device")


@pytest.mark.parametrize(
    "path", ["/proc/version", "/proc/self/status", "/sys/kernel/uevent_seqnum"]
)
def test_get_a_proc_or_sys_file_is_refused_not_streamed_forever(site, local, path):
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist here")
    refused(get(site, site.reader, path, local), "not as long as its size")
    assert list(local.iterdir()) == []


def test_refusals_are_audited_with_the_rule_and_run_as(site, local):
    get(site, site.admin, "/etc/shadow", local)
    event = site.daemon.wait_for_event(
        lambda e: (
            e.get("event") == "request" and e.get("op") == "get" and e.get("path") == "/etc/shadow"
        )
    )
    assert event["outcome"] == "denied" and event["rule"] is None
    assert event["client"] == "admin"
