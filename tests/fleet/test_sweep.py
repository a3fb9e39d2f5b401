"""Fleets left by a SIGKILLed test run are swept by the next one; live ones are not."""

from __future__ import annotations

import os
import subprocess

import pytest

from fleet.netns import TEST_TAG_PREFIX, Fleet, sweep_abandoned, unavailable_reason


def _namespaces() -> set[str]:
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in done.stdout.splitlines() if line.strip()}


def test_the_fleet_of_a_dead_run_is_swept_with_its_processes_and_a_live_ones_kept():
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a PID that no longer runs: the "SIGKILLed test run"
    dead = Fleet(f"{TEST_TAG_PREFIX}{gone.pid}x0000")
    live = Fleet(f"{TEST_TAG_PREFIX}{os.getpid()}x0000")
    try:
        for fleet in (dead, live):
            for name in (f"{fleet.tag}-sw", f"{fleet.tag}-h1"):
                subprocess.run(["ip", "netns", "add", name], check=True)
                fleet.namespaces.append(name)
        left_running = subprocess.Popen(Fleet.argv(f"{dead.tag}-h1", "sleep", "600"))
        swept = sweep_abandoned()
        assert sorted(swept) == sorted(dead.namespaces)
        assert left_running.wait(timeout=10) != 0  # ended by the sweep, not by its sleep
        assert not set(dead.namespaces) & _namespaces()
        assert set(live.namespaces) <= _namespaces()
    finally:
        dead.destroy(grace=0.5)
        live.destroy(grace=0.5)
