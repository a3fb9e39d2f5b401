"""A fleet of hosts on one machine: Linux network namespaces on a bridge.

Knows nothing about radmin: it builds the network, starts processes inside it and
impairs links. Used by tests/fleet/conftest.py and scripts/fleet.

Layout (see docs/testing.md): a switch namespace holding the bridge `br0`; a control
namespace and host namespaces, each joined to the bridge by a veth pair created from
inside the switch namespace (so no device ever exists in the machine's own namespace).
Addresses come from 198.18.0.0/15 (RFC 2544 benchmarking) and fd00::/8 (ULA): the
control node is 198.18.0.1 / fd00:18::1, host i is 198.18.1.i / fd00:18::1:i. Every
fleet has its own switch, so fleets never see each other's addresses; only namespace
names are global, and they carry a per-run tag.

This kernel has no netem (docs/testing.md): rate is `tbf` on the host's switch port,
loss is an nftables `numgen random` rule in the host, delay is a userspace forwarder
(tests/fleet/delay.py) spliced between a port and the bridge, and a partition is a
switch port taken down (a cable pull: the host keeps its routes and hears nothing).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

MAX_HOSTS = 64
V4_PREFIX_LEN = 15  # 198.18.0.0/15: the control node and every host on one link
V6_PREFIX_LEN = 64
DELAY_SCRIPT = Path(__file__).with_name("delay.py")
SWITCH_BRIDGE = "br0"
OFFLOAD_OFF = ("tx", "off", "tso", "off", "gso", "off")
OFFLOAD_ON = ("tx", "on", "tso", "on", "gso", "on")


def unavailable_reason() -> str | None:
    """Why no fleet can be built here, or None. Checked by creating and deleting one
    throw-away namespace: the only proof that the kernel and our rights allow it."""
    if os.geteuid() != 0:
        return "the fleet needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "the fleet needs iproute2's `ip`"
    probe = f"rfprobe{os.getpid()}{secrets.token_hex(2)}"
    done = _ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"`ip netns add` does not work here: {done.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


TEST_TAG_PREFIX = "rft"  # a test run's fleet: rft<PID>x<hex>, swept once that PID is gone


def owned_tag() -> str:
    """A tag naming the test process that owns the fleet, so a later run can tell a
    fleet abandoned by a SIGKILLed run (its PID gone) from one still in use."""
    return f"{TEST_TAG_PREFIX}{os.getpid()}x{secrets.token_hex(2)}"


def sweep_abandoned() -> list[str]:
    """Destroy the fleets of test runs that died without tearing down (a SIGKILLed
    pytest cannot run its finalizers); returns the namespaces removed. Fleets of live
    runs and those of `scripts/fleet up` (meant to outlive their command) are left alone.
    """
    done = _ip("netns", "list", check=False)
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    abandoned: dict[str, list[str]] = {}
    for name in names:
        tag = name.split("-", 1)[0]
        owner = tag[len(TEST_TAG_PREFIX) :].split("x", 1)[0]
        if tag.startswith(TEST_TAG_PREFIX) and owner.isdigit() and not _pid_exists(int(owner)):
            abandoned.setdefault(tag, []).append(name)
    for tag, namespaces in abandoned.items():
        fleet = Fleet(tag)
        fleet.namespaces = list(namespaces)  # destroy() empties its own list
        fleet.destroy(grace=1.0)
    return [name for namespaces in abandoned.values() for name in namespaces]


def _pid_exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _ip(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, input=input)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _alive(pid: int, children: Sequence[subprocess.Popen]) -> bool:
    """Whether `pid` still runs; our own children are reaped, others looked up."""
    for proc in children:
        if proc.pid == pid:
            return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for_line(log: Path, text: str, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args} did not start: {log.read_text()}")
        time.sleep(0.02)


def _run(argv: Sequence[str], input: str | None = None) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, input=input)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")


@dataclass(frozen=True)
class Node:
    """One machine of the fleet: its short name, namespace, switch port and addresses."""

    name: str  # "ctl", "h1", ...
    netns: str  # the namespace's (globally unique) name
    port: str  # its veth end on the switch, inside the switch namespace
    ipv4: str
    ipv6: str


class Fleet:
    """A switch, a control node and hosts h1..hN; `create()` builds them, `destroy()`
    removes every process and namespace it made (idempotent, safe after a failure)."""

    def __init__(self, tag: str | None = None):
        self.tag = tag or f"rf{secrets.token_hex(3)}"
        self.switch = f"{self.tag}-sw"
        self.control = Node("ctl", f"{self.tag}-ctl", "p-ctl", "198.18.0.1", "fd00:18::1")
        self.hosts: list[Node] = []
        self.processes: list[subprocess.Popen] = []  # what spawn() started, by PID
        self.namespaces: list[str] = []  # made so far, for destroy()

    # -- building and tearing down -------------------------------------------------------

    def create(self, count: int) -> Fleet:
        """The switch, the control node and `count` hosts."""
        self._add_namespace(self.switch)
        _ip(
            "-n",
            self.switch,
            "-batch",
            "-",
            input=f"link set lo up\nlink add {SWITCH_BRIDGE} "
            f"type bridge\nlink set {SWITCH_BRIDGE} up\n",
        )
        self._add_nodes([self.control])
        return self.grow(count)

    def grow(self, count: int) -> Fleet:
        """Add hosts until there are `count` (a 64-host test extends the 8-host fleet)."""
        if not 1 <= count <= MAX_HOSTS:
            raise ValueError(f"a fleet has 1 to {MAX_HOSTS} hosts, not {count}")
        new = [self.host_node(i) for i in range(len(self.hosts) + 1, count + 1)]
        self._add_nodes(new)
        self.hosts.extend(new)
        return self

    def host_node(self, index: int) -> Node:
        return Node(
            f"h{index}",
            f"{self.tag}-h{index}",
            f"p-h{index}",
            f"198.18.1.{index}",
            f"fd00:18::1:{index:x}",
        )

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)

    def _add_nodes(self, nodes: list[Node]) -> None:
        """Namespaces, veth pairs made inside the switch, addresses (nodad: usable at
        once, no duplicate-address-detection wait); one `ip -batch` per namespace."""
        for node in nodes:
            self._add_namespace(node.netns)
        switch_lines = []
        for node in nodes:
            switch_lines += [
                f"link add {node.port} type veth peer name eth0 netns {node.netns}",
                f"link set {node.port} master {SWITCH_BRIDGE} up",
            ]
        _ip("-n", self.switch, "-batch", "-", input="\n".join(switch_lines) + "\n")
        for node in nodes:
            _ip(
                "-n",
                node.netns,
                "-batch",
                "-",
                input=(
                    "link set lo up\n"
                    f"addr add {node.ipv4}/{V4_PREFIX_LEN} dev eth0\n"
                    f"addr add {node.ipv6}/{V6_PREFIX_LEN} dev eth0 nodad\n"
                    "link set eth0 up\n"
                ),
            )

    def destroy(self, grace: float = 3.0) -> None:
        """Stop what runs in the fleet, by PID -- what spawn() started and whatever else
        `ip netns pids` finds in its namespaces (commands, helpers) -- with SIGTERM, then
        SIGKILL after `grace` seconds; then delete the namespaces (their veths go with
        them). Safe to call twice, on a half-built fleet, or from another process that
        only knows the namespace names (scripts/fleet down)."""
        pids = self._running()
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(pid, self.processes) for pid in pids):
            time.sleep(0.05)
        for pid in self._running():  # looked up again: a PID that ended may be reused
            _signal(pid, signal.SIGKILL)
        for proc in self.processes:
            proc.wait()
        if self.namespaces:
            lines = "".join(f"netns del {name}\n" for name in reversed(self.namespaces))
            _ip("-force", "-batch", "-", input=lines, check=False)
        self.namespaces.clear()
        self.processes.clear()

    def _running(self) -> set[int]:
        """Our children still running, and every process in our namespaces."""
        pids = {proc.pid for proc in self.processes if proc.poll() is None}
        for name in self.namespaces:
            pids.update(self.pids(name))
        return pids

    @staticmethod
    def pids(netns: str) -> list[int]:
        done = _ip("netns", "pids", netns, check=False)
        return [int(pid) for pid in done.stdout.split()] if done.returncode == 0 else []

    # -- running things inside -----------------------------------------------------------

    @staticmethod
    def argv(node: Node | str, *argv: str) -> list[str]:
        """`argv` run inside the node's namespace."""
        return ["ip", "netns", "exec", node if isinstance(node, str) else node.netns, *argv]

    def run(
        self, node: Node | str, *argv: str, timeout: float = 60, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.argv(node, *argv), capture_output=True, timeout=timeout, input=input
        )

    def spawn(
        self,
        node: Node | str,
        argv: Sequence[str],
        log: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        """A long-lived process in the node's namespace, recorded for destroy(). Its own
        session, so a Ctrl-C meant for the test run (or scripts/fleet) does not reach it;
        `ip netns exec` execs the program, so the PID is the program's own."""
        output = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                self.argv(node, *argv),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                env=env,
                start_new_session=True,
            )
        finally:
            if log is not None:
                output.close()
        self.processes.append(proc)
        return proc

    # -- impairments (each undone by leaving its context) ---------------------------------

    @contextlib.contextmanager
    def rate(self, hosts: Sequence[Node], rate: str = "100mbit") -> Iterator[None]:
        """Traffic toward each host limited to `rate` (tbf on its switch port)."""
        lines = [
            f"qdisc add dev {h.port} root tbf rate {rate} burst 64kb latency 50ms" for h in hosts
        ]
        _run(["tc", "-n", self.switch, "-batch", "-"], input="\n".join(lines) + "\n")
        try:
            yield
        finally:
            lines = [f"qdisc del dev {h.port} root" for h in hosts]
            subprocess.run(
                ["tc", "-n", self.switch, "-force", "-batch", "-"],
                input="\n".join(lines) + "\n",
                capture_output=True,
                text=True,
            )

    @contextlib.contextmanager
    def loss(self, hosts: Sequence[Node], percent: int) -> Iterator[None]:
        """`percent` % of the packets each host receives dropped at random (nftables)."""
        ruleset = (
            "table inet rfloss {\n  chain in {\n    type filter hook input priority 0; "
            f"policy accept;\n    numgen random mod 100 < {percent} counter drop\n  }}\n}}\n"
        )
        for host in hosts:
            _run(self.argv(host, "nft", "-f", "-"), input=ruleset)
        try:
            yield
        finally:
            for host in hosts:
                subprocess.run(
                    self.argv(host, "nft", "delete", "table", "inet", "rfloss"), capture_output=True
                )

    @contextlib.contextmanager
    def delay(self, node: Node, one_way_ms: float, log: Path) -> Iterator[None]:
        """Every frame to and from `node` held `one_way_ms` (RTT + 2 x one_way_ms): its
        port is taken off the bridge and a forwarder (its output in `log`) copies frames
        between it and a new veth pair whose other end is on the bridge."""
        inner, outer = f"d-{node.name}", f"b-{node.name}"
        switch_lines = [
            f"link set {node.port} nomaster",
            f"link add {inner} type veth peer name {outer}",
            f"link set {outer} master {SWITCH_BRIDGE} up",
            f"link set {inner} up",
        ]
        _ip("-n", self.switch, "-batch", "-", input="\n".join(switch_lines) + "\n")
        # A veth may send frames whose checksum is still to be computed, up to 64 KB long
        # (checksum and segmentation offload). The forwarder copies frames as they are,
        # so what it reads must be finished, MTU-sized frames: the node's eth0 and the
        # bridge's end of the new pair compute and segment in software meanwhile.
        _run(self.argv(node, "ethtool", "-K", "eth0", *OFFLOAD_OFF))
        _run(self.argv(self.switch, "ethtool", "-K", outer, *OFFLOAD_OFF))
        log.write_text("")
        argv = [sys.executable, str(DELAY_SCRIPT), node.port, inner, str(one_way_ms)]
        proc = self.spawn(self.switch, argv, log=log)
        try:
            _wait_for_line(log, "forwarding", proc)
            yield
        finally:
            proc.terminate()
            proc.wait()
            self.processes.remove(proc)
            switch_lines = [f"link del {inner}", f"link set {node.port} master {SWITCH_BRIDGE}"]
            _ip("-n", self.switch, "-batch", "-", input="\n".join(switch_lines) + "\n")
            _run(self.argv(node, "ethtool", "-K", "eth0", *OFFLOAD_ON))

    def port_down(self, node: Node) -> None:
        """A partition: the host's switch port down, as a pulled cable."""
        _ip("-n", self.switch, "link", "set", node.port, "down")

    def port_up(self, node: Node) -> None:
        _ip("-n", self.switch, "link", "set", node.port, "up")

    @contextlib.contextmanager
    def blackhole(self, address: str) -> Iterator[None]:
        """Packets from the control node to `address` silently dropped (nftables), so a
        connection attempt hears nothing at all, as toward a host that vanished."""
        family = "ip6" if ":" in address else "ip"
        ruleset = (
            "table inet rfblackhole {\n  chain out {\n    type filter hook output priority 0; "
            f"policy accept;\n    {family} daddr {address} counter drop\n  }}\n}}\n"
        )
        _run(self.argv(self.control, "nft", "-f", "-"), input=ruleset)
        try:
            yield
        finally:
            subprocess.run(
                self.argv(self.control, "nft", "delete", "table", "inet", "rfblackhole"),
                capture_output=True,
            )
