"""Host specifications: `name`, `name:port`, `[v6addr]:port`, aliases and `@group`s.

The client's `config.yaml` (in the client home) may define aliases and groups:

    hosts:
      web1: 10.0.0.11            # alias -> address[:port]
      web2: "[2001:db8::12]:7421"
    groups:
      web: [web1, web2, "10.0.0.13:7422"]
      all: ["@web", db1]          # groups may include groups
    heartbeat_interval: 10       # seconds (optional; --heartbeat-interval overrides)

Kept free of yaml on the hot path: the config file is only read when a spec names
something that is not an IP address (`radmin-cli exec 10.0.0.5 ...` never parses it;
an alias that looks like an IP address is therefore not consulted).
"""

from __future__ import annotations

import os
import socket
from collections import namedtuple

from radmin.addresses import format_host_port, parse_host_port
from radmin.errors import RadminError

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any, NamedTuple, NoReturn


class HostSpecError(RadminError):
    """A HOSTS argument, alias or group that cannot be resolved."""


# The fields, typed for mypy; at run time a collections.namedtuple: typing.NamedTuple
# would import `typing` (~4 ms) on radmin-cli's start-up path.
if TYPE_CHECKING:

    class _Target(NamedTuple):
        label: str
        host: str
        port: int

else:
    _Target = namedtuple("Target", "label host port")


class Target(_Target):
    """One host to talk to: `label` as typed or the alias (output prefixes), `host` the
    address or DNS name without brackets, `port`."""

    __slots__ = ()

    @property
    def host_port(self) -> str:
        """The known_hosts key: `host:port`, IPv6 in brackets."""
        return format_host_port(self.host, self.port)


class HostBook:
    """Aliases and groups from the client's config.yaml (empty if there is none), and
    its heartbeat_interval (None when the file sets none)."""

    def __init__(
        self,
        aliases: dict[str, str],
        groups: dict[str, list[str]],
        heartbeat_interval: float | None = None,
    ):
        self.aliases = aliases
        self.groups = groups
        self.heartbeat_interval = heartbeat_interval

    @classmethod
    def load(cls, path: os.PathLike[str] | str) -> HostBook:
        """Read and check the whole file, as `radmind check` does its own: a problem is
        reported as `FILE:LINE: KEY: what is wrong`, wherever it is."""
        try:
            with open(path, "rb") as f:
                text = f.read()
        except FileNotFoundError:
            return cls({}, {})
        except OSError as exc:
            raise HostSpecError(f"{path}: cannot read: {exc.strerror}") from None
        import yaml

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present
        try:
            root = yaml.compose(text, Loader=loader)  # nodes, for their line numbers
        except yaml.YAMLError as exc:
            raise HostSpecError(f"{path}: not valid YAML: {exc}") from None
        return _BookReader(str(path)).read(root)

    def resolve(self, spec: str) -> list[Target]:
        """Expand a comma-separated HOSTS argument into unique targets, in order."""
        targets: dict[str, Target] = {}
        for entry in spec.split(","):
            for target in self._expand(entry.strip(), ()):
                targets.setdefault(target.label, target)
        if not targets:
            raise HostSpecError("no hosts given")
        return list(targets.values())

    def _expand(self, entry: str, seen_groups: tuple[str, ...]) -> list[Target]:
        if not entry:
            raise HostSpecError("empty entry in the host list")
        if entry.startswith("@"):
            name = entry[1:]
            if name not in self.groups:
                raise HostSpecError(f"unknown group {entry!r} (define it under 'groups:')")
            if name in seen_groups:
                raise HostSpecError(f"group {entry!r} includes itself")
            return [t for e in self.groups[name] for t in self._expand(e, (*seen_groups, name))]
        if "@" in entry:
            raise HostSpecError(_NO_USER.format(entry=entry, host=entry.rpartition("@")[2]))
        address = self.aliases.get(entry, entry)
        try:
            host, port = parse_host_port(address)
        except ValueError as exc:
            raise HostSpecError(str(exc)) from None
        return [Target(entry, host, port)]


# radmin has no `user@` in HOSTS: who runs a command is the daemon's decision.
_NO_USER = (
    "{entry!r}: HOSTS names no user: each daemon runs your commands and writes your files "
    "as the run_as user its radmind.yaml sets for this client; write {host!r}"
)
_STR, _INT, _NULL = (f"tag:yaml.org,2002:{kind}" for kind in ("str", "int", "null"))


class _BookReader:
    """config.yaml's YAML nodes -> a HostBook, or a HostSpecError naming FILE:LINE: KEY.

    Works on nodes (yaml.compose) rather than loaded values so every problem has its
    line, and on `node.id` so that yaml stays imported only by HostBook.load.
    """

    def __init__(self, path: str):
        self.path = path

    def fail(self, node: Any, key: str, message: str) -> NoReturn:
        raise HostSpecError(f"{self.path}:{node.start_mark.line + 1}: {key}: {message}")

    def read(self, root: Any) -> HostBook:
        aliases: dict[str, str] = {}
        groups: dict[str, list[str]] = {}
        heartbeat: float | None = None
        for name, key_node, node in self.items(root, "(top)"):
            if name == "hosts":
                aliases = {a: self.address(v, f"hosts.{a}") for a, _, v in self.items(node, name)}
            elif name == "groups":
                groups = {g: self.members(v, f"groups.{g}") for g, _, v in self.items(node, name)}
            elif name == "heartbeat_interval":
                heartbeat = self.seconds(node, name)
            else:
                self.fail(
                    key_node,
                    name,
                    "unknown key (config.yaml has hosts:, groups: and heartbeat_interval:)",
                )
        return HostBook(aliases, groups, heartbeat)

    def seconds(self, node: Any, key: str) -> float:
        """A number of seconds, at least the protocol's shortest heartbeat interval."""
        from radmin.protocol import MIN_HEARTBEAT_INTERVAL

        try:
            value = float(node.value) if node.id == "scalar" and node.tag != _STR else None
        except ValueError:
            value = None
        if value is None or not MIN_HEARTBEAT_INTERVAL <= value < float("inf"):
            self.fail(
                node,
                key,
                f"expected a number of seconds of at least {MIN_HEARTBEAT_INTERVAL:g}, "
                f"got {_shape(node)}",
            )
        return value

    def items(self, node: Any, key: str) -> list[tuple[str, Any, Any]]:
        """(name, key node, value node) of a mapping; nothing for an empty value."""
        if node is None or (node.id == "scalar" and node.tag == _NULL):
            return []
        if node.id != "mapping":
            self.fail(node, key, f"expected a mapping, got {_shape(node)}")
        return [(str(k.value), k, v) for k, v in node.value]

    def address(self, node: Any, key: str) -> str:
        """An alias's `address[:port]`: a string that parses, and not a bare port."""
        if node.id != "scalar" or node.tag == _NULL:
            self.fail(node, key, f"expected 'address[:port]', got {_shape(node)}")
        if node.value.isdigit():
            self.fail(
                node,
                key,
                f"{node.value} is a bare port number; an alias needs an address, "
                f"as in '10.0.0.11:{node.value}'",
            )
        if node.tag != _STR:
            self.fail(node, key, f"expected 'address[:port]', got {node.value} (quote it)")
        try:
            parse_host_port(node.value)
        except ValueError as exc:
            self.fail(node, key, str(exc))
        return node.value

    def members(self, node: Any, key: str) -> list[str]:
        """A group: a list of aliases, addresses and @groups."""
        if node.id != "sequence":
            self.fail(node, key, f"expected a list of hosts, got {_shape(node)}")
        for member in node.value:
            if member.id != "scalar" or member.tag != _STR or not member.value:
                self.fail(member, key, f"expected a host, alias or @group, got {_shape(member)}")
        return [member.value for member in node.value]


def _shape(node: Any) -> str:
    if node.id == "scalar":
        return "nothing" if node.tag == _NULL else repr(node.value)
    return "a list" if node.id == "sequence" else "a mapping"


def _is_ip_address(entry: str) -> bool:
    """An IP literal, with or without a port: used as it is, never an alias."""
    try:
        host, _ = parse_host_port(entry)
    except ValueError:
        return False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            pass
    return False


def configured_heartbeat_interval(config_path: os.PathLike[str] | str) -> float:
    """config.yaml's heartbeat_interval, else the default. The file is parsed only when
    it mentions the key: yaml stays off radmin-cli's start-up path otherwise."""
    from radmin.protocol import HEARTBEAT_INTERVAL

    try:
        with open(config_path, "rb") as f:
            mentioned = b"heartbeat_interval" in f.read()
    except OSError:
        mentioned = False  # a missing file; an unreadable one is reported if HOSTS needs it
    if not mentioned:
        return HEARTBEAT_INTERVAL
    configured = HostBook.load(config_path).heartbeat_interval
    return HEARTBEAT_INTERVAL if configured is None else configured


def resolve_hosts(spec: str, config_path: os.PathLike[str] | str) -> list[Target]:
    """HOSTS -> targets, reading the client's config.yaml only if some entry needs it."""
    if all(_is_ip_address(entry) for entry in spec.split(",")):
        return HostBook({}, {}).resolve(spec)
    return HostBook.load(config_path).resolve(spec)


def fold(labels: Iterable[str]) -> str:
    """`web1,web2,web3,web5` -> `web[1-3,5]`, as ClusterShell writes node sets, for
    whatever radmin prints about a set of hosts.

    Labels that differ in one number fold together (the last number that differs:
    `10.0.0.[1-2]:7420`); zero padding is kept (`web[01-03]`; `web9` is not `web09`).
    Labels without a number, and IPv6 literals (their brackets are not ranges), are
    listed as they are. Parts come in the order of their first label.
    """
    import re

    digits = re.compile(r"(\d+)")
    skeletons: dict[tuple[str, ...], list[list[str]]] = {}  # labels by their text tokens
    for label in dict.fromkeys(labels):
        tokens = [label] if "[" in label else digits.split(label)
        skeletons.setdefault(tuple(tokens[0::2]), []).append(tokens)
    parts: dict[tuple[str, str, int], list[int]] = {}  # (before, after, width) -> numbers
    for labels_alike in skeletons.values():
        for key, number in _fold_keys(labels_alike):
            parts.setdefault(key, []).append(number)
    return ",".join(_render(*key, numbers) for key, numbers in parts.items())


def _fold_keys(alike: list[list[str]]) -> list[tuple[tuple[str, str, int], int]]:
    """For labels of one skeleton: (text before, text after, zero-padded width) and the
    number, folding on the last number that differs; width -1 for a label with none."""
    at = next(
        (i for i in range(len(alike[0]) - 2, 0, -2) if len({t[i] for t in alike}) > 1),
        len(alike[0]) - 2,
    )
    if at < 1:
        return [(("".join(t), "", -1), 0) for t in alike]
    padded = {len(t[at]) for t in alike if t[at].startswith("0") and len(t[at]) > 1}
    return [
        (
            ("".join(t[:at]), "".join(t[at + 1 :]), len(t[at]) if len(t[at]) in padded else 0),
            int(t[at]),
        )
        for t in alike
    ]


def _render(before: str, after: str, width: int, numbers: list[int]) -> str:
    """`web[1-3,5]`; a lone number or a label without one as it is."""
    if width < 0:
        return before
    values = sorted(set(numbers))
    if len(values) == 1:
        return f"{before}{str(values[0]).zfill(width)}{after}"
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    text = ",".join(
        "-".join(str(n).zfill(width) for n in dict.fromkeys((run[0], run[-1]))) for run in runs
    )
    return f"{before}[{text}]{after}"
