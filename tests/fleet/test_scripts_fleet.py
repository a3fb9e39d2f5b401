"""scripts/fleet, run exactly as docs/testing.md shows it: up, cli, down."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from docsupport import REPO, fenced_blocks, shell_lines, split_comment

from fleet.netns import unavailable_reason


def documented_fleet_lines() -> list[str]:
    text = (REPO / "docs" / "testing.md").read_text()
    for block in fenced_blocks(text):
        lines = [split_comment(line)[0] for _, line in shell_lines(block)]
        if any(line.startswith("scripts/fleet up") for line in lines):
            return lines
    raise AssertionError("docs/testing.md shows no `scripts/fleet up` block")


def run(line: str, fleet_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADMIN_")}
    env["RADMIN_FLEET_DIR"] = str(fleet_dir)
    return subprocess.run(
        ["bash", "-c", line],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_documented_fleet_session_runs_and_leaves_nothing(tmp_path):
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    lines = documented_fleet_lines()
    assert lines[0].startswith("scripts/fleet up") and lines[-1] == "scripts/fleet down"
    fleet_dir = tmp_path / "fleet"
    outputs = []
    try:
        for line in lines:
            done = run(line, fleet_dir)
            assert done.returncode == 0, f"{line}: {done.stdout}{done.stderr}"
            outputs.append(done.stdout)
    finally:
        run("scripts/fleet down", fleet_dir)
    up = outputs[0]
    tag = re.match(r"fleet (rf[0-9a-f]+): 8 hosts up", up)
    assert tag, up
    assert "scripts/fleet down" in up and f"ip netns exec {tag[1]}-ctl" in up
    ping = outputs[lines.index("scripts/fleet cli ping @fleet")]
    assert len([line for line in ping.splitlines() if 'known as "ops"' in line]) == 8
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert tag[1] not in names
    assert not fleet_dir.exists()
