"""`radmin-cli mux`: run the client home's connection helper in the foreground, or ask
the running one for its status or to stop (radmin/mux has the helper)."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from radmin.identity import ClientHome

# How long --stop waits for the helper to let go of its socket and lock.
STOP_WAIT_S = 10.0


def mux_command(args: argparse.Namespace, home: ClientHome) -> int:
    from radmin.mux.client import query

    if args.status:
        answer = query(home, "status")
        if answer is None:
            print(f"no mux helper runs for {home.path}")
            return 1
        print(f"mux helper for {home.path}: {_describe(answer)}")
        return 0
    if args.stop:
        answer = query(home, "stop")
        if answer is None:
            print(f"radmin-cli: no mux helper runs for {home.path}", file=sys.stderr)
            return 1
        return _wait_stopped(home, answer)
    from radmin.mux.helper import run

    return run(home, args.idle_timeout)


def _describe(answer: dict[str, object]) -> str:
    return (
        f"pid {answer.get('pid')}, {answer.get('pooled', 0)} pooled connection(s), "
        f"{answer.get('sessions', 0)} other session(s), idle timeout "
        f"{answer.get('idle_timeout', '?')} s"
    )


def _wait_stopped(home: ClientHome, answer: dict[str, object]) -> int:
    """Until the helper process has ended (it lets its sessions finish first)."""
    import time

    pid = answer.get("pid")
    deadline = time.monotonic() + STOP_WAIT_S
    while isinstance(pid, int) and _alive(pid):
        if time.monotonic() > deadline:
            print(
                f"radmin-cli: the mux helper (pid {pid}) is still finishing its sessions",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.02)  # not our child: no wait() to block in
    print(f"mux helper for {home.path} stopped (pid {pid})")
    return 0


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != b"Z"
