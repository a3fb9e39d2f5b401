"""scripts/fleet's work: up, cli and down for a fleet of radmin hosts in namespaces.

The fleet is tests/fleet's (tests/fleet/netns.py builds the network, radmin_fleet.py the
daemons and the client home); what `down` and `cli` need is kept in fleet.json in the
fleet's folder ($RADMIN_FLEET_DIR, default /tmp/radmin-fleet).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fleet.netns import MAX_HOSTS, Fleet, unavailable_reason  # noqa: E402
from fleet.radmin_fleet import BASE_SIZE, RadminFleet  # noqa: E402

BIN = ROOT / ".venv" / "bin"


def folder() -> Path:
    return Path(os.environ.get("RADMIN_FLEET_DIR") or "/tmp/radmin-fleet")


def state_file() -> Path:
    return folder() / "fleet.json"


def load_state() -> dict | None:
    try:
        return json.loads(state_file().read_text())
    except FileNotFoundError:
        return None


def up(count: int) -> int:
    reason = unavailable_reason()
    if reason is not None:
        print(f"fleet: {reason}", file=sys.stderr)
        return 1
    state = load_state()
    if state is not None:
        print(
            f"fleet: fleet {state['tag']} is up already ({state_file()}); "
            "`scripts/fleet down` first",
            file=sys.stderr,
        )
        return 1
    if folder().exists() and any(folder().iterdir()):
        print(f"fleet: {folder()} is not empty; remove it or set RADMIN_FLEET_DIR", file=sys.stderr)
        return 1
    started = time.monotonic()
    fleet = RadminFleet(folder(), BIN)
    try:
        fleet.up(count)
    except BaseException:
        fleet.down()
        raise
    state_file().write_text(json.dumps(fleet.state(), indent=1) + "\n")
    print_usage(fleet, time.monotonic() - started)
    return 0


def print_usage(fleet: RadminFleet, seconds: float) -> None:
    net = fleet.net
    print(f"fleet {net.tag}: {len(fleet.hosts)} hosts up in {seconds:.1f} s, each its own radmind")
    for host in fleet.hosts:
        print(
            f"  {host.name:<4} {host.node.ipv4:<12} {host.node.ipv6:<16} netns {host.node.netns}"
            f"  log {host.log}"
        )
    count = len(fleet.hosts)
    groups = f"@fleet = h1..h{min(count, BASE_SIZE)}" + (
        f", @fleet{count} = h1..h{count}" if count > BASE_SIZE else ""
    )
    print(f"control node: netns {net.control.netns}, {net.control.ipv4}, {net.control.ipv6}")
    print(f"client home: {fleet.home} ({groups}; every host in known_hosts)")
    print("try:")
    print("  scripts/fleet cli ping @fleet")
    print("  scripts/fleet cli exec @fleet 'hostname -I'")
    print(
        f"  ip netns exec {net.control.netns} {BIN}/radmin-cli exec --home {fleet.home} h1 uptime"
    )
    print(f"  ip netns exec {net.control.netns} bash   # a shell on the control node")
    print("  scripts/fleet down")


def down() -> int:
    state = load_state()
    if state is None:
        print(f"fleet: no fleet is up ({state_file()} does not exist)")
        return 0
    net = Fleet(state["tag"])
    net.namespaces = list(state["namespaces"])
    net.destroy()
    shutil.rmtree(folder(), ignore_errors=True)
    print(f"fleet {state['tag']}: down ({len(state['namespaces'])} namespaces deleted)")
    return 0


def cli(args: list[str]) -> int:
    state = load_state()
    if state is None:
        print("fleet: no fleet is up: `scripts/fleet up` first", file=sys.stderr)
        return 1
    if not args:
        print("fleet: cli needs radmin-cli's arguments, e.g. ping @fleet", file=sys.stderr)
        return 2
    home = folder() / "client"
    command, *rest = args
    argv = [str(BIN / "radmin-cli"), command, "--home", str(home), *rest]
    os.execvp("ip", ["ip", "netns", "exec", f"{state['tag']}-ctl", *argv])


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/fleet", description="radmin hosts in network namespaces (needs root)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("up", help="build N hosts, each with its own radmind")
    make.add_argument("count", nargs="?", type=int, default=BASE_SIZE, metavar="N")
    sub.add_parser("down", help="stop the fleet's processes and delete its namespaces")
    run = sub.add_parser("cli", help="radmin-cli ARGS on the control node")
    run.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.command == "up":
        if not 1 <= args.count <= MAX_HOSTS:
            parser.error(f"N must be 1 to {MAX_HOSTS}")
        return up(args.count)
    if args.command == "down":
        return down()
    return cli(args.args)


if __name__ == "__main__":
    sys.exit(main())
