"""`host:port` as radmin reads and writes it everywhere -- HOSTS, `listen:`,
known_hosts keys, log fields -- with IPv6 in brackets, as OpenSSH and URLs do. One
parser and one formatter, shared by the client and the daemon's config (which must not
import the client's host book)."""

from __future__ import annotations

from radmin import DEFAULT_PORT


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
