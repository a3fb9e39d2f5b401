"""Host specifications: `name`, `name:port`, `[v6addr]:port`, aliases and `@group`s.

The client's `config.yaml` (in the client home) may define aliases and groups:

    hosts:
      web1: 10.0.0.11            # alias -> address[:port]
      web2: "[2001:db8::12]:7421"
    groups:
      web: [web1, web2, "10.0.0.13:7422"]
      all: ["@web", db1]          # groups may include groups

Kept free of yaml on the hot path: the config file is only read when a spec names
something that is not an IP address (`radmin-cli exec 10.0.0.5 ...` never parses it;
an alias that looks like an IP address is therefore not consulted).
"""

from __future__ import annotations

import os
import socket
from collections import namedtuple

from radmin import DEFAULT_PORT
from radmin.errors import RadminError


class HostSpecError(RadminError):
    """A HOSTS argument, alias or group that cannot be resolved."""


class Target(namedtuple("Target", "label host port")):
    """One host to talk to: `label` as typed or the alias (output prefixes), `host` the
    address or DNS name without brackets, `port`.

    A collections.namedtuple: typing.NamedTuple would import `typing` (~4 ms) on
    radmin-cli's start-up path.
    """

    __slots__ = ()

    @property
    def host_port(self) -> str:
        """The known_hosts key: `host:port`, IPv6 in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_host_port(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """`name`, `name:port`, `[v6]:port`, `[v6]` or a bare IPv6 address -> (host, port)."""
    text = text.strip()
    if not text:
        raise ValueError("empty host")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{text!r}: missing ']' after the IPv6 address")
        host, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':port' after ']'")
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:  # a bare IPv6 address
        host, port_text = text, ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"{text!r}: empty host name")
    if port_text == "":
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: port must be a number from 0 to 65535")
    return host, int(port_text)


class HostBook:
    """Aliases and groups from the client's config.yaml (empty if there is none)."""

    def __init__(self, aliases: dict[str, str], groups: dict[str, list[str]]):
        self.aliases = aliases
        self.groups = groups

    @classmethod
    def load(cls, path: os.PathLike[str] | str) -> HostBook:
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
            data = yaml.load(text, Loader=loader) or {}
        except yaml.YAMLError as exc:
            raise HostSpecError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict) or set(data) - {"hosts", "groups"}:
            raise HostSpecError(f"{path}: expected a mapping with 'hosts' and/or 'groups'")
        aliases = data.get("hosts") or {}
        groups = data.get("groups") or {}
        if not isinstance(aliases, dict) or not all(
            isinstance(v, str | int) for v in aliases.values()
        ):
            raise HostSpecError(f"{path}: 'hosts' must map alias names to 'address[:port]'")
        if not isinstance(groups, dict) or not all(isinstance(v, list) for v in groups.values()):
            raise HostSpecError(f"{path}: 'groups' must map group names to lists of hosts")
        return cls(
            {str(k): str(v) for k, v in aliases.items()},
            {str(k): [str(e) for e in v] for k, v in groups.items()},
        )

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
        address = self.aliases.get(entry, entry)
        try:
            host, port = parse_host_port(address)
        except ValueError as exc:
            raise HostSpecError(str(exc)) from None
        return [Target(entry, host, port)]


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


def resolve_hosts(spec: str, config_path: os.PathLike[str] | str) -> list[Target]:
    """HOSTS -> targets, reading the client's config.yaml only if some entry needs it."""
    if all(_is_ip_address(entry) for entry in spec.split(",")):
        return HostBook({}, {}).resolve(spec)
    return HostBook.load(config_path).resolve(spec)
