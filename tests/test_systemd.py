"""The unit under a real systemd: boots a throw-away systemd-nspawn container (needs
root; about 30 s) and runs tests/systemd/nspawn-radmind.sh, which installs radmin the
way docs/install.md says and checks start, ping, reload, watchdog and stop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "systemd" / "nspawn-radmind.sh"


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="booting systemd in a container needs root")
def test_unit_under_real_systemd(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "RADMIN_NSPAWN_DIR": str(tmp_path / "nspawn")}
    result = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=300, env=env
    )
    report = result.stdout + result.stderr
    if result.returncode == 77:
        pytest.skip(report)
    assert result.returncode == 0, report
    assert "FAIL" not in report, report
    assert report.count("ok   - ") >= 20, report
