"""radmin on a fleet of namespaces: one radmind per host, one client in the control node.

Each host is made as an admin makes a server: `radmind init --dir` (its own key and
certificate), a config of its own (its own state_dir and log), `radmind run` started
inside the host's network namespace with `ip netns exec`. The client home (identity,
known_hosts with every host's fingerprint, config.yaml with `h1`..`hN` and `@fleet`) is
used by radmin-cli run inside the control namespace.

All the hosts share this machine's file system, so a fan-out `put` to one path would
have every daemon write the same file. Each daemon therefore runs in a mount namespace
of its own (the one `ip netns exec` makes) with its host's `files/` folder bound over
the fleet's shared `srv` path: `put FILE @fleet SRV/x` lands in each host's own
`hN/files/x`, as on separate machines, and a test reads each host's copy there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fleet.netns import Fleet, Node
from radmin.identity import cert_file_fingerprint

PORT = 7420
BASE_SIZE = 8  # hosts in @fleet; the 64-host tests grow the same fleet (@fleet64)

# What the fleet tests measured, printed at the end of the run (conftest's terminal
# summary) and recorded by hand in docs/performance.md.
MEASURED: dict[str, str] = {}


@dataclass
class Host:
    """One radmind and its files: `folder` holds init's identity, fleet.yaml, the log,
    state/ and files/ (what it sees at the fleet's srv path)."""

    node: Node
    folder: Path
    proc: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def config(self) -> Path:
        return self.folder / "fleet.yaml"

    @property
    def log(self) -> Path:
        return self.folder / "radmind.log"

    @property
    def files(self) -> Path:
        return self.folder / "files"

    @property
    def fingerprint(self) -> str:
        return cert_file_fingerprint(self.folder / "server.crt")

    def events(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines (other lines are skipped)."""
        out = []
        for line in self.log.read_text().splitlines() if self.log.exists() else []:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


class RadminFleet:
    """A network fleet (fleet.netns.Fleet) with a radmind per host and a client home."""

    def __init__(self, work: Path, bin_dir: Path, tag: str | None = None):
        self.work = work
        self.bin = bin_dir
        self.net = Fleet(tag)
        self.srv = work / "srv"  # the path every host sees as its own files/ folder
        self.home = work / "client"
        self.hosts: list[Host] = []
        self.heartbeat_interval = 1.0  # seconds: a partition is noticed in about 3 s

    # -- up and down -----------------------------------------------------------------------

    def up(self, count: int) -> RadminFleet:
        self.work.mkdir(parents=True, exist_ok=True)
        self.srv.mkdir(exist_ok=True)
        self._keygen()
        self.net.create(count)
        self._start_hosts(self.net.hosts)
        return self

    def grow(self, count: int) -> RadminFleet:
        """More hosts on the same switch (h1..h`count`), each with its radmind."""
        known = len(self.net.hosts)
        self.net.grow(count)
        self._start_hosts(self.net.hosts[known:])
        return self

    def down(self) -> None:
        self.net.destroy()

    def _keygen(self) -> None:
        done = subprocess.run(
            [str(self.bin / "radmin-cli"), "keygen", "--home", str(self.home)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"radmin-cli keygen: {done.stderr}")

    def _start_hosts(self, nodes: Sequence[Node]) -> None:
        """`radmind init` for every new host at once, then every daemon at once, then
        wait until all listen: start-up is CPU-bound, so the two cores stay busy."""
        new = [Host(node, self.work / node.name) for node in nodes]
        inits = [
            subprocess.Popen(
                [str(self.bin / "radmind"), "init", "--dir", str(host.folder)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for host in new
        ]
        for host, init in zip(new, inits, strict=True):
            _, err = init.communicate(timeout=120)
            if init.returncode != 0:
                raise RuntimeError(f"radmind init for {host.name}: {err.decode()}")
        self.hosts.extend(new)
        for host in new:
            (host.folder / "files").mkdir()
            self.write_config(host)
            self.start(host, wait=False)
        for host in new:
            self.wait_listening(host)
        self.write_client_files()

    def write_config(self, host: Host) -> None:
        limits: dict[str, Any] = {"handshake_timeout": 5}
        if self.heartbeat_interval is not None:
            limits["heartbeat_interval"] = self.heartbeat_interval
        config = {
            "listen": [f"0.0.0.0:{PORT}", f"[::]:{PORT}"],
            "identity": {"key": "server.key", "cert": "server.crt"},
            "put": {"default_dir": str(self.srv)},
            "state_dir": "state",
            "limits": limits,
            "log": {"level": "info", "format": "json"},
            "clients": {
                "ops": {
                    "cert": str(self.home / "identity.crt"),
                    "allow": {"exec": ["*"], "put": ["/**"]},
                }
            },
        }
        host.config.write_text(yaml.safe_dump(config, sort_keys=False))

    def write_client_files(self) -> None:
        """config.yaml (h1..hN, @fleet = the first BASE_SIZE, @fleet64 = all when there
        are more) and known_hosts (every host's v4 and v6 address)."""
        names = [host.name for host in self.hosts]
        groups = {"fleet": names[:BASE_SIZE]}
        if len(names) > BASE_SIZE:
            groups[f"fleet{len(names)}"] = names
        config = {"hosts": {host.name: host.node.ipv4 for host in self.hosts}, "groups": groups}
        for host in self.hosts:
            config["hosts"][f"{host.name}-v6"] = f"[{host.node.ipv6}]:{PORT}"
        (self.home / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        lines = []
        for host in self.hosts:
            fingerprint = host.fingerprint
            lines.append(f"{host.node.ipv4}:{PORT} {fingerprint}\n")
            lines.append(f"[{host.node.ipv6}]:{PORT} {fingerprint}\n")
        (self.home / "known_hosts").write_text("".join(lines))

    # -- one host's daemon -----------------------------------------------------------------

    def start(self, host: Host, wait: bool = True) -> None:
        """radmind in the host's namespace, in a mount namespace where the fleet's srv
        path is this host's files/ (sh binds it, then execs radmind: same PID)."""
        script = 'mount --bind "$1" "$2" && cd "$3" && exec "$4" run -c "$5"'
        argv = [
            "sh", "-c", script, "sh", str(host.files), str(self.srv), str(host.folder),
            str(self.bin / "radmind"), str(host.config),
        ]  # fmt: skip
        host.log.write_text("")
        host.proc = self.net.spawn(host.node, argv, log=host.log)
        if wait:
            self.wait_listening(host)

    def wait_listening(self, host: Host, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(event.get("event") == "listening" for event in host.events()):
                return
            if host.proc is not None and host.proc.poll() is not None:
                raise RuntimeError(f"radmind on {host.name} exited: {host.log.read_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"radmind on {host.name} did not listen: {host.log.read_text()}")

    def stop(self, host: Host, sig: int = signal.SIGTERM, timeout: float = 40) -> None:
        if host.proc is not None and host.proc.poll() is None:
            host.proc.send_signal(sig)
            host.proc.wait(timeout=timeout)

    def restart(self, host: Host) -> None:
        self.stop(host)
        self.start(host)

    # -- the client --------------------------------------------------------------------------

    def cli_argv(self, *args: str) -> list[str]:
        """radmin-cli run inside the control namespace with the fleet's client home."""
        command, *rest = args
        return self.net.argv(
            self.net.control, str(self.bin / "radmin-cli"), command, "--home", str(self.home), *rest
        )

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.cli_argv(*args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_client_env(),
        )

    def cli_popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.cli_argv(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_client_env(),
        )

    def host(self, name: str) -> Host:
        return next(host for host in self.hosts if host.name == name)

    def in_control(self, *argv: str) -> subprocess.CompletedProcess[bytes]:
        return self.net.run(self.net.control, *argv)

    # -- the state scripts/fleet keeps between `up` and `down` ---------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "tag": self.net.tag,
            "namespaces": list(self.net.namespaces),
            "pids": [proc.pid for proc in self.net.processes],
            "hosts": [
                {"name": h.name, "ipv4": h.node.ipv4, "ipv6": h.node.ipv6, "netns": h.node.netns}
                for h in self.hosts
            ],
        }


def _client_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RADMIN_")}


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def requests_of_run(hosts: Sequence[Host], run_id: str) -> int:
    """How many `request` events of run `run_id` the hosts' daemons logged."""
    return sum(
        event.get("event") == "request" and event.get("run_id") == run_id
        for host in hosts
        for event in host.events()
    )


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
