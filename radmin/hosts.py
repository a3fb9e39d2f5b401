"""Host specifications: `name`, `name:port`, `[v6addr]:port`, aliases and `@group`s,
node sets (`web[1-20]`, radmin/nodeset.py), `-x` and the previous run's `@failed`/`@ok`
(radmin/lastrun.py).

The client's `config.yaml` (in the client home) may define aliases and groups:

    hosts:
      web1: 10.0.0.11            # alias -> address[:port]
      web2: "[2001:db8::12]:7421"
    groups:
      web: [web1, web2, "10.0.0.13:7422"]
      all: ["@web", db1]          # groups may include groups
    heartbeat_interval: 10       # seconds (optional; --heartbeat-interval overrides)
    mux: true                    # through the helper, `radmin-cli mux` (optional; --mux)

Kept free of yaml on the hot path: the config file is only read when a spec names
something that is not an IP address (`radmin-cli exec 10.0.0.5 ...` never parses it;
an alias that looks like an IP address is therefore not consulted).
"""

from __future__ import annotations

import os
import socket
from collections import namedtuple
from pathlib import Path

from radmin.addresses import format_host_port, parse_host_port
from radmin.errors import RadminError
from radmin.lastrun import REFERENCES
from radmin.nodeset import MAX_HOSTS, NodeSetError, expand, has_ranges, split_entries
from radmin.nodeset import fold as nodeset_fold

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
    its heartbeat_interval (None when the file sets none), and where the previous run's
    hosts are recorded (`@failed`, `@ok`)."""

    def __init__(
        self,
        aliases: dict[str, str],
        groups: dict[str, list[str]],
        heartbeat_interval: float | None = None,
        last_run: os.PathLike[str] | str | None = None,
        mux: bool = False,
    ):
        self.aliases = aliases
        self.groups = groups
        self.heartbeat_interval = heartbeat_interval
        self.last_run = last_run
        self.mux = mux

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

    def resolve(self, spec: str, exclude: str | None = None) -> list[Target]:
        """Expand a HOSTS argument into unique targets, in order; `exclude` (HOSTS
        syntax too, as `-x`) removes targets by label. At most MAX_HOSTS."""
        targets = self._resolve(spec)
        if exclude is not None:
            removed = set(self._resolve(exclude))
            targets = {label: t for label, t in targets.items() if label not in removed}
            if not targets:
                raise HostSpecError(f"no hosts left: -x {exclude!r} excludes all of {spec!r}")
        return list(targets.values())

    def _resolve(self, spec: str) -> dict[str, Target]:
        targets: dict[str, Target] = {}
        for entry in split_entries(spec):
            for target in self._expand(entry, ()):
                targets.setdefault(target.label, target)
            if len(targets) > MAX_HOSTS:
                raise HostSpecError(
                    f"{spec!r} names more than {MAX_HOSTS:,} hosts, radmin's limit for one run"
                )
        if not targets:
            raise HostSpecError("no hosts given")
        return targets

    def _expand(self, entry: str, seen_groups: tuple[str, ...]) -> list[Target]:
        if not entry:
            raise HostSpecError("empty entry in the host list")
        if entry in REFERENCES:
            return [t for e in self._previous_run(entry) for t in self._expand(e, seen_groups)]
        if entry.startswith("@"):
            name = entry[1:]
            if name not in self.groups:
                raise HostSpecError(f"unknown group {entry!r} (define it under 'groups:')")
            if name in seen_groups:
                raise HostSpecError(f"group {entry!r} includes itself")
            return [
                t
                for member in self.groups[name]
                for e in split_entries(member)
                for t in self._expand(e, (*seen_groups, name))
            ]
        if "@" in entry:
            raise HostSpecError(_NO_USER.format(entry=entry, host=entry.rpartition("@")[2]))
        try:
            names = expand(entry) if has_ranges(entry) else [entry]
        except NodeSetError as exc:
            raise HostSpecError(str(exc)) from None
        return [self._target(name) for name in names]

    def _target(self, name: str) -> Target:
        address = self.aliases.get(name, name)
        try:
            host, port = parse_host_port(address)
        except ValueError as exc:
            raise HostSpecError(str(exc)) from None
        return Target(name, host, port)

    def _previous_run(self, reference: str) -> list[str]:
        from radmin.lastrun import NoPreviousRun, hosts_of

        if self.last_run is None:
            raise HostSpecError(f"{reference}: no client home to read the previous run from")
        try:
            return hosts_of(Path(self.last_run), reference)
        except NoPreviousRun as exc:
            raise HostSpecError(str(exc)) from None


# radmin has no `user@` in HOSTS: who runs a command is the daemon's decision.
_NO_USER = (
    "{entry!r}: HOSTS names no user: each daemon runs your commands and writes your files "
    "as the run_as user its radmind.yaml sets for this client; write {host!r}"
)
_STR, _INT, _NULL, _BOOL = (f"tag:yaml.org,2002:{kind}" for kind in ("str", "int", "null", "bool"))


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
        mux = False
        for name, key_node, node in self.items(root, "(top)"):
            if name == "hosts":
                aliases = {a: self.address(v, f"hosts.{a}") for a, _, v in self.items(node, name)}
            elif name == "groups":
                groups = {g: self.members(v, f"groups.{g}") for g, _, v in self.items(node, name)}
            elif name == "heartbeat_interval":
                heartbeat = self.seconds(node, name)
            elif name == "mux":
                mux = self.flag(node, name)
            else:
                self.fail(
                    key_node,
                    name,
                    "unknown key (config.yaml has hosts:, groups:, heartbeat_interval: and mux:)",
                )
        return HostBook(aliases, groups, heartbeat, mux=mux)

    def flag(self, node: Any, key: str) -> bool:
        if node.id != "scalar" or node.tag != _BOOL:
            self.fail(node, key, f"expected true or false, got {_shape(node)}")
        return str(node.value).lower() in ("true", "yes", "on")

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


def configured_mux(config_path: os.PathLike[str] | str) -> bool:
    """config.yaml's `mux` (default false). yaml (~40 ms to import) stays off the start-up
    path: a file that mentions it only in comments is not parsed, and one whose only
    mention is a plain top-level `mux: true` or `mux: false` line is read without yaml;
    any other mention is parsed (and checked) whole."""
    try:
        with open(config_path, "rb") as f:
            text = f.read()
    except OSError:
        return False
    if b"mux" not in text:
        return False
    import re

    mentions = [code for line in text.splitlines() if b"mux" in (code := line.split(b"#")[0])]
    if not mentions:
        return False
    plain = re.fullmatch(rb"mux: *(true|false) *", mentions[0])
    if len(mentions) == 1 and plain:
        return plain.group(1) == b"true"
    return HostBook.load(config_path).mux


def resolve_hosts(
    spec: str,
    config_path: os.PathLike[str] | str,
    exclude: str | None = None,
    last_run: os.PathLike[str] | str | None = None,
) -> list[Target]:
    """HOSTS (minus `exclude`, as -x) -> targets, reading the client's config.yaml only
    if some entry needs it (IP addresses and ranges of them never do)."""
    if all(_is_ip_address(entry) for entry in _plain_entries(spec, exclude)):
        return HostBook({}, {}, last_run=last_run).resolve(spec, exclude)
    book = HostBook.load(config_path)
    book.last_run = last_run
    return book.resolve(spec, exclude)


def _plain_entries(spec: str, exclude: str | None) -> list[str]:
    """The entries of HOSTS and -x, a range's first and last name standing for it (they
    are all IP addresses or none is); `@...` is kept as it is (never an address)."""
    entries: list[str] = []
    for entry in split_entries(spec) + (split_entries(exclude) if exclude else []):
        try:
            names = expand(entry) if has_ranges(entry) else [entry]
        except NodeSetError:
            names = [entry]  # HostBook.resolve reports it
        entries += {names[0], names[-1]}
    return entries


def fold(labels: Iterable[str]) -> str:
    """Host labels as one node set (`web[1-3,5]`): radmin/nodeset.py's fold, the way
    radmin prints any set of hosts."""
    return nodeset_fold(labels)
