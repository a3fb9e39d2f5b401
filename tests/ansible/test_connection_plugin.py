"""The Ansible connection plugin radmin.fleet.radmin under the real ansible-core, against
real radminds on different ports (issue 17).

Each test runs `ansible` or `ansible-playbook` as a user would, with the JSON stdout
callback, and reads the recap: ok / changed / failures / unreachable per host. The
playbook is docs/ansible.md's own (its inventory, ansible.cfg, site.yml and role are
read out of the doc), so the doc's example runs as shown.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from docsupport import REPO, fenced_blocks
from support import Daemon, client_entry, make_client_home, prepare_daemon, run_cli

from radmin.identity import ClientHome, cert_file_fingerprint, create_identity

pytest.importorskip("ansible", reason="ansible-core is in the test extra: pip install -e '.[test]'")

BIN = Path(sys.executable).parent
DOC = REPO / "docs" / "ansible.md"
GOOD = ("web1", "web2", "web3")  # the doc inventory's hosts, served by three radminds
# A doc block that is a file starts with a comment naming it: `# site.yml`, `{# x.j2 #}`.
_FILE_NAME = re.compile(r"^(?:#|\{#) (\S+\.(?:yml|ini|cfg|j2))(?: #\})?$")


def doc_files() -> dict[str, str]:
    """The files docs/ansible.md shows, by name (inventory.ini, site.yml, roles/...)."""
    files = {}
    for block in fenced_blocks(DOC.read_text()):
        match = _FILE_NAME.match(block.lines[0]) if block.lines else None
        if match:
            files[match.group(1)] = "\n".join(block.lines) + "\n"
    return files


@dataclass
class Fleet:
    """Three radminds for the doc's web1..web3, one with a changed key, one refusing
    everything but `true`, and a port nobody listens on; the project folder Ansible
    runs in (the doc's files), and the client home."""

    folder: Path
    home: ClientHome
    daemons: dict[str, Daemon]
    work: Path  # where modules may write (the doc's app_dir lives here)
    remote_tmp: Path  # Ansible's remote_tmp (~/.ansible/tmp on a real host)
    system_tmp: Path  # its system_tmpdirs (/var/tmp): where become to nobody puts modules

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "RADMIN_"))}
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            RADMIN_HOME=str(self.home.path),
            ANSIBLE_CONFIG=str(self.folder / "ansible.cfg"),
            ANSIBLE_COLLECTIONS_PATH=str(REPO),
            ANSIBLE_HOME=str(self.folder / "ansible-home"),
            ANSIBLE_LOCAL_TEMP=str(self.folder / "ansible-local"),
            ANSIBLE_REMOTE_TMP=str(self.remote_tmp),
            ANSIBLE_SYSTEM_TMPDIRS=str(self.system_tmp),
            ANSIBLE_CALLBACK_PLUGINS=str(Path(__file__).parent / "callback_plugins"),
            ANSIBLE_STDOUT_CALLBACK="recap_json",
            ANSIBLE_LOAD_CALLBACK_PLUGINS="1",  # the stdout callback for ad-hoc `ansible` too
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_RADMIN_CONNECT_TIMEOUT="60",  # over the doc's 5 s: a busy test machine
        )
        env.update(extra)
        return env

    def ansible(self, *args: str, program: str = "ansible", **env: str) -> Run:
        done = subprocess.run(
            [str(BIN / program), *args],
            cwd=self.folder,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=180,
        )
        return Run(done)


class Run:
    """One ansible run: its exit status and the JSON callback's document."""

    def __init__(self, done: subprocess.CompletedProcess[str]):
        self.returncode = done.returncode
        self.stderr = done.stderr
        start = done.stdout.find("{")
        try:
            self.doc: dict[str, Any] = json.loads(done.stdout[start:])
        except ValueError:
            raise AssertionError(
                f"no JSON from ansible (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
            ) from None

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        return self.doc["stats"]

    def recap(self, host: str) -> tuple[int, int, int, int]:
        """(ok, changed, failures, unreachable) of `host`, as the PLAY RECAP line."""
        s = self.stats[host]
        return s["ok"], s["changed"], s["failures"], s["unreachable"]

    def results(self, host: str, task: int = -1) -> dict[str, Any]:
        """The result of `host` in the `task`-th task of the (only) play."""
        return self.doc["plays"][0]["tasks"][task]["hosts"][host]

    def __repr__(self) -> str:
        """The exit status, the recap, and what went wrong where (for a failed assert)."""
        problems = []
        for play in self.doc.get("plays", []):
            for task in play["tasks"]:
                for host, result in task["hosts"].items():
                    if result.get("failed") or result.get("unreachable"):
                        text = {k: result.get(k) for k in ("msg", "stderr", "module_stderr")}
                        problems.append(f"{task['task']['name']} @ {host}: {text}"[:1500])
        lines = [f"exit {self.returncode}", json.dumps(self.stats), *problems, self.stderr[-2000:]]
        return "\n".join(lines)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, server_identity) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("ansible")
    home = make_client_home(folder / "client")
    work, remote_tmp = folder / "work", folder / "remote-tmp"
    work.mkdir()
    # Like /var/tmp: nobody (become_user) must reach it, and pytest's folders are 0700.
    system_tmp = Path(tempfile.mkdtemp(prefix="radmin-ansible-", dir="/var/tmp"))
    system_tmp.chmod(0o1777)
    ours = client_entry(  # what docs/ansible.md says an Ansible client needs, nothing more
        home,
        put_allow=(f"{remote_tmp}/**", f"{system_tmp}/ansible-tmp-*/**"),
        get=[f"{work}/**"],
    )
    other_identity = folder / "other-identity"
    other_identity.mkdir()
    create_identity(other_identity / "server.key", other_identity / "server.crt", "radmind")
    plan = {
        **{name: (server_identity, ours) for name in GOOD},
        "rekeyed": (other_identity, ours),
        "restricted": (server_identity, client_entry(home, exec_allow=("true",))),
    }
    daemons: dict[str, Daemon] = {}
    try:
        for name, (identity, entry) in plan.items():
            # A generous handshake limit: the test machine may be very busy.
            limits = {"handshake_timeout": 30}
            daemon = prepare_daemon(
                folder / f"daemon-{name}", identity, {"ops": entry}, limits=limits
            )
            daemons[name] = daemon
            daemon.start()
        fleet = Fleet(folder, home, daemons, work, remote_tmp, system_tmp)
        _write_project(fleet)
        _trust(fleet, server_identity)
        yield fleet
    finally:
        for daemon in daemons.values():
            daemon.stop()
        shutil.rmtree(system_tmp, ignore_errors=True)


def _write_project(fleet: Fleet) -> None:
    """The doc's files, its inventory pointed at the test daemons, plus test-only hosts."""
    files = doc_files()
    assert {"inventory.ini", "ansible.cfg", "site.yml"} <= set(files), sorted(files)
    for name, text in files.items():
        path = fleet.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    inventory = files["inventory.ini"]
    for name in GOOD:  # `web2 ansible_host=10.0.0.12 ansible_port=7421` -> the test daemon
        inventory, found = re.subn(
            rf"^{name} .*$",
            f"{name} ansible_host=127.0.0.1 ansible_port={fleet.daemons[name].port}",
            inventory,
            flags=re.MULTILINE,
        )
        assert found == 1, name
    down = f"down ansible_host=127.0.0.1 ansible_port={closed_port()}"
    inventory += (
        "\n[broken]\n"
        f"{down}\n"
        f"rekeyed ansible_host=127.0.0.1 ansible_port={fleet.daemons['rekeyed'].port}\n"
        "\n[policy]\n"
        f"restricted ansible_host=127.0.0.1 ansible_port={fleet.daemons['restricted'].port}\n"
        "\n[broken:vars]\nansible_connection=radmin.fleet.radmin\n"
        "\n[policy:vars]\nansible_connection=radmin.fleet.radmin\n"
    )
    (fleet.folder / "inventory.ini").write_text(inventory)


def closed_port() -> int:
    """A port that was free a moment ago and that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _trust(fleet: Fleet, server_identity: Path) -> None:
    """known_hosts as the doc says (strict mode: `radmin-cli ping` first); `rekeyed` is
    recorded with the key it had before it changed."""
    hosts = ",".join(fleet.daemons[name].address for name in (*GOOD, "restricted"))
    done = run_cli(fleet.home, "ping", "--connect-timeout", "60", hosts)
    assert done.returncode == 0, done.stderr
    old = cert_file_fingerprint(server_identity / "server.crt")
    with open(fleet.home.known_hosts, "a") as f:
        f.write(f"{fleet.daemons['rekeyed'].address} {old}\n")


# -- the documented way in --------------------------------------------------------------


def test_ansible_doc_renders_the_plugin_documentation(fleet):
    done = subprocess.run(
        [str(BIN / "ansible-doc"), "-t", "connection", "radmin.fleet.radmin"],
        env=fleet.env(ANSIBLE_NOCOLOR="1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for option in ("host", "port", "home", "strict_host_key", "host_fingerprint"):
        assert option in done.stdout
    for variable in ("ansible_port", "ansible_radmin_connect_timeout", "ansible_radmin_home"):
        assert variable in done.stdout


def test_collection_builds_installs_and_runs_from_the_tarball(fleet, tmp_path):
    galaxy = str(BIN / "ansible-galaxy")
    installed_path = tmp_path / "collections"
    # Not the checkout: from it, galaxy would find radmin.fleet installed already.
    env = fleet.env(ANSIBLE_COLLECTIONS_PATH=str(installed_path))
    source = REPO / "ansible_collections" / "radmin" / "fleet"
    built = subprocess.run(
        [galaxy, "collection", "build", str(source), "--output-path", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (tarball,) = tmp_path.glob("radmin-fleet-*.tar.gz")
    installed = subprocess.run(
        [galaxy, "collection", "install", str(tarball), "-p", str(installed_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    plugin = installed_path / "ansible_collections/radmin/fleet/plugins/connection"
    assert (plugin / "radmin.py").is_file()
    run = fleet.ansible("web1", "-m", "ping", ANSIBLE_COLLECTIONS_PATH=str(installed_path))
    assert run.returncode == 0, run
    assert run.recap("web1") == (1, 0, 0, 0)


# -- ad-hoc modules ---------------------------------------------------------------------


def test_ping_every_host_and_profile_each_operation(fleet, tmp_path):
    profile = tmp_path / "profile.jsonl"
    run = fleet.ansible("web", "-m", "ping", ANSIBLE_RADMIN_PROFILE=str(profile))
    assert run.returncode == 0, run
    for host in GOOD:
        assert run.recap(host) == (1, 0, 0, 0)
        assert run.results(host)["ping"] == "pong"
    # One connection per host for the task; the module ran through exec (pipelined: no put).
    lines = [json.loads(line) for line in profile.read_text().splitlines()]
    for host in GOOD:
        phases = [line["phase"] for line in lines if line["host"] == fleet.daemons[host].address]
        assert phases.count("connect") == 1 and "exec" in phases and "put" not in phases, lines
    assert all(line["remote_s"] >= 0 for line in lines if line["phase"] == "exec")


def test_command_runs_as_the_daemons_run_as_user(fleet):
    run = fleet.ansible("web", "-m", "command", "-a", "id -u")
    assert run.returncode == 0, run
    for host in GOOD:
        assert run.results(host)["stdout"] == str(os.getuid())
        assert run.recap(host) == (1, 1, 0, 0)  # command always says changed


def test_copy_changed_then_ok(fleet):
    source = fleet.folder / "motd"
    source.write_text("managed over radmin\n")
    dest = fleet.work / "motd-{{ inventory_hostname }}"
    args = f"src={source} dest={dest} mode=0640"
    first = fleet.ansible("web", "-m", "copy", "-a", args)
    assert first.returncode == 0, first
    second = fleet.ansible("web", "-m", "copy", "-a", args)
    assert second.returncode == 0, second
    for host in GOOD:
        assert first.recap(host) == (1, 1, 0, 0)
        assert second.recap(host) == (1, 0, 0, 0)
        landed = fleet.work / f"motd-{host}"
        assert landed.read_text() == "managed over radmin\n"
        assert landed.stat().st_mode & 0o777 == 0o640
    # Ansible's temporary folders are gone: nothing was left behind in remote_tmp.
    assert not list(fleet.remote_tmp.glob("ansible-tmp-*"))


def test_fetch_lands_each_hosts_file_locally(fleet, tmp_path):
    (fleet.work / "fetch-me").write_text("remote content\n")
    run = fleet.ansible(
        "web", "-m", "fetch", "-a", f"src={fleet.work}/fetch-me dest={tmp_path}/fetched"
    )
    assert run.returncode == 0, run
    for host in GOOD:
        assert run.recap(host) == (1, 1, 0, 0)
        got = tmp_path / "fetched" / host / str(fleet.work).lstrip("/") / "fetch-me"
        assert got.read_text() == "remote content\n"


def test_setup_gathers_facts(fleet):
    run = fleet.ansible("web1", "-m", "setup", "-a", "gather_subset=!all")  # the "min" facts
    assert run.returncode == 0, run
    facts = run.results("web1")["ansible_facts"]
    assert facts["ansible_distribution"]
    assert facts["ansible_python"]["executable"]


def test_shell_with_stdin_heavy_pipelining(fleet):
    """A 1 MiB stdin for the module, inside the module's payload that travels on radmin's
    exec stdin (pipelining): it arrives whole and no temporary file is written."""
    blob = secrets.token_hex(512 * 1024)  # 1 MiB of text that does not compress
    (fleet.folder / "blob.json").write_text(json.dumps({"blob": blob}))
    run = fleet.ansible(
        "web",
        "-m",
        "shell",
        "-a",
        '{"cmd": "wc -c", "stdin": "{{ blob }}", "stdin_add_newline": false}',
        "-e",
        "@blob.json",
    )
    assert run.returncode == 0, run
    for host in GOOD:
        assert run.results(host)["stdout"] == str(len(blob))
    assert not fleet.remote_tmp.exists() or not list(fleet.remote_tmp.iterdir())


# -- the doc's playbook -----------------------------------------------------------------


def test_doc_playbook_with_role_handler_become_loop_and_template(fleet):
    app_dir = fleet.work / "app-{{ inventory_hostname }}"
    first = fleet.ansible("site.yml", "-e", f"app_dir={app_dir}", program="ansible-playbook")
    assert first.returncode == 0, first
    for host in GOOD:
        assert first.recap(host) == (7, 4, 0, 0), first
        landed = fleet.work / f"app-{host}"
        assert (landed / "banner").read_text() == f"{host} is managed by Ansible over radmin\n"
        assert (landed / "api.txt").read_text() == "api\n"
        assert (landed / "worker.txt").read_text() == "worker\n"
        assert (landed / "banner-handled").exists()
    again = fleet.ansible("site.yml", "-e", f"app_dir={app_dir}", program="ansible-playbook")
    assert again.returncode == 0, again
    for host in GOOD:
        assert again.recap(host) == (6, 0, 0, 0), again


# -- failures ---------------------------------------------------------------------------


def test_down_host_and_changed_key_are_unreachable_and_the_others_go_on(fleet):
    run = fleet.ansible("web,broken", "-m", "ping")
    assert run.returncode == 4, run  # ansible's status for unreachable hosts
    for host in GOOD:
        assert run.recap(host) == (1, 0, 0, 0)
    assert run.recap("down") == (0, 0, 0, 1)
    assert run.recap("rekeyed") == (0, 0, 0, 1)
    down = run.results("down")
    assert down["unreachable"] is True
    assert "connection refused" in down["msg"]
    rekeyed = run.results("rekeyed")["msg"]
    assert "rekeyed" not in rekeyed  # radmin's own words, naming the known_hosts line:
    assert "known_hosts" in rekeyed and fleet.daemons["rekeyed"].address in rekeyed, rekeyed


def test_refused_by_policy_is_a_task_failure_with_radmins_message(fleet):
    run = fleet.ansible("restricted", "-m", "command", "-a", "id -u")
    assert run.returncode == 2, run  # ansible's status for failed tasks, not 4
    assert run.recap("restricted") == (0, 0, 1, 0)
    message = run.results("restricted")["msg"]
    assert "refused by the daemon's policy" in message, message


def test_unknown_host_in_strict_mode_is_unreachable(fleet, tmp_path):
    """A fresh client home knows no daemon: strict mode refuses, naming the host."""
    home = tmp_path / "fresh-home"
    shutil.copytree(fleet.home.path, home)
    (home / "known_hosts").unlink()
    run = fleet.ansible("web1", "-m", "ping", RADMIN_HOME=str(home))
    assert run.recap("web1") == (0, 0, 0, 1), run
    assert fleet.daemons["web1"].address in run.results("web1")["msg"]


def test_upload_outside_allow_put_fails_the_task_with_radmins_message(fleet):
    """copy uploads into remote_tmp first: a remote_tmp the policy does not list is a
    refusal by the daemon, so the task fails (the host is not unreachable)."""
    source = fleet.folder / "refused-source"
    source.write_text("never lands\n")
    elsewhere = fleet.folder / "not-allowed-tmp"
    run = fleet.ansible(
        "web1",
        "-m",
        "copy",
        "-a",
        f"src={source} dest={fleet.work}/refused",
        ANSIBLE_REMOTE_TMP=str(elsewhere),
    )
    assert run.recap("web1") == (0, 0, 1, 0), run
    message = run.results("web1")["msg"]
    assert "refused by the daemon's policy" in message and "allow.put" in message, message
    assert not (fleet.work / "refused").exists()
