"""The connection plugin with its `mux` option (on by default): Ansible's workers open
sessions through the client home's helper (`radmin-cli mux`), so the daemons see a
handful of connections for a whole playbook, and the recap is the one without it.

The fleet (three radminds for the doc's web1..web3, plus broken ones) and the doc's
playbook are those of test_connection_plugin.py.
"""

from __future__ import annotations

import json

import pytest
from support import run_cli
from test_connection_plugin import GOOD, fleet  # noqa: F401  (the module's fixture)

pytest.importorskip("ansible", reason="ansible-core is in the test extra: pip install -e '.[test]'")


def authenticated(daemon) -> int:
    return sum(1 for e in daemon.events() if e.get("event") == "authenticated")


@pytest.fixture
def no_helper(fleet):  # noqa: F811
    """Each test starts and ends with no helper for the fleet's home."""
    run_cli(fleet.home, "mux", "--stop")
    yield
    run_cli(fleet.home, "mux", "--stop")


def playbook(fleet, name: str, mux: bool, profile=None):  # noqa: F811
    app_dir = fleet.work / f"{name}-{{{{ inventory_hostname }}}}"
    extra = {"ANSIBLE_RADMIN_MUX": "true" if mux else "false"}
    if profile is not None:
        extra["ANSIBLE_RADMIN_PROFILE"] = str(profile)
    return fleet.ansible(
        "site.yml", "-l", "web", "-e", f"app_dir={app_dir}", program="ansible-playbook", **extra
    )


def test_doc_playbook_through_the_helper_same_recap_far_fewer_connections(
    fleet,  # noqa: F811
    no_helper,
    tmp_path,
):
    before = {name: authenticated(fleet.daemons[name]) for name in GOOD}
    direct = playbook(fleet, "direct", mux=False)
    assert direct.returncode == 0, direct
    direct_connections = {n: authenticated(fleet.daemons[n]) - before[n] for n in GOOD}
    before = {name: authenticated(fleet.daemons[name]) for name in GOOD}
    profile = tmp_path / "profile.jsonl"
    through = playbook(fleet, "mux", mux=True, profile=profile)
    assert through.returncode == 0, through
    for host in GOOD:
        assert through.recap(host) == direct.recap(host) == (7, 4, 0, 0), through
        landed = fleet.work / f"mux-{host}"
        assert (landed / "banner").read_text() == f"{host} is managed by Ansible over radmin\n"
    mux_connections = {n: authenticated(fleet.daemons[n]) - before[n] for n in GOOD}
    task_hosts = sum(1 for line in profile.read_text().splitlines() if '"connect"' in line)
    # A connection per task and host without the helper; a few (one per concurrent
    # worker at most) with it.
    assert sum(direct_connections.values()) >= len(GOOD) * 5, direct_connections
    assert sum(mux_connections.values()) <= len(GOOD) * 2, mux_connections
    assert sum(mux_connections.values()) < task_hosts / 3, (mux_connections, task_hosts)
    vias = {json.loads(line).get("via") for line in profile.read_text().splitlines()}
    assert vias >= {"mux"}
    status = run_cli(fleet.home, "mux", "--status")
    assert status.returncode == 0, status.stderr


def test_unreachable_and_changed_key_read_the_same_through_the_helper(
    fleet,  # noqa: F811
    no_helper,
):
    def run(mux: bool):
        extra = {"ANSIBLE_RADMIN_MUX": "true" if mux else "false"}
        return fleet.ansible("broken", "-m", "ping", **extra)

    direct, through = run(False), run(True)
    for host in ("down", "rekeyed"):
        assert through.recap(host) == direct.recap(host) == (0, 0, 0, 1)
        assert through.results(host)["msg"] == direct.results(host)["msg"]
    assert "HOST KEY CHANGED" in through.results("rekeyed")["msg"]
