"""`host:port` as radmin writes it everywhere -- known_hosts keys, log fields, listen
addresses -- with IPv6 in brackets, as OpenSSH and URLs do. One formatter, so a host
is spelled the same in a log line, a summary and known_hosts."""

from __future__ import annotations


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
