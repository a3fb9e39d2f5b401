"""The Python API: connect to a radmind, check its key, then ping / exec / run / put / get.

    import radmin.client

    with radmin.client.connect("web1") as conn:          # home, trust: as radmin-cli
        print(conn.run("uptime", check=True).stdout)

`connect(HOST)` resolves the host as radmin-cli would (aliases from config.yaml, the
default port) with the client home radmin-cli would use; `connect(Target, options)`
is the explicit form a fan-out uses, with one `ClientOptions` for all hosts. Failures
are types (radmin/errors.py): `TransportError` and its kinds (exit status 255 in the
CLI), `RemoteError` with the daemon's code, `Cancelled`, `LocalFileError`,
`CommandFailed`. docs/api.md has the whole surface.

The modules: `options` (identity, trust, per-run caches), `connection` (TCP, TLS,
host key, hello, frames, the one error map), `exec`, `put`, `get` and `shell` (one per
operation; `landing` is where a download lands).
"""

from __future__ import annotations

from radmin.client.connection import Connection, PingResult, transport_error
from radmin.client.connection import connect as _connect
from radmin.client.exec import ExecResult
from radmin.client.get import GetResult
from radmin.client.options import ClientOptions
from radmin.client.put import PutResult
from radmin.client.shell import ShellResult
from radmin.errors import (
    Cancelled,
    CommandFailed,
    ConnectionLost,
    ConnectTimeout,
    DaemonBusy,
    HostKeyError,
    LocalFileError,
    NotAuthorizedByDaemon,
    RemoteError,
    RemoteProtocolError,
    ReplyTimeout,
    TransportError,
    TrustError,
    Unreachable,
)

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from radmin.hosts import Target

__all__ = [
    "Cancelled",
    "ClientOptions",
    "CommandFailed",
    "ConnectTimeout",
    "Connection",
    "ConnectionLost",
    "DaemonBusy",
    "ExecResult",
    "GetResult",
    "HostKeyError",
    "LocalFileError",
    "NotAuthorizedByDaemon",
    "PingResult",
    "PutResult",
    "RemoteError",
    "RemoteProtocolError",
    "ReplyTimeout",
    "ShellResult",
    "TransportError",
    "TrustError",
    "Unreachable",
    "connect",
    "transport_error",
]


def connect(
    target: Target | str, options: ClientOptions | None = None, **option_values: object
) -> Connection:
    """An open, authenticated Connection to one host.

    `target`: a Target, or one HOSTS word as radmin-cli takes it (`web1`, `10.0.0.5:7421`,
    an alias). `options`: a ClientOptions, or None for the client home radmin-cli would
    use ($RADMIN_HOME...) with `option_values` (strict_host_key, host_fingerprint,
    connect_timeout, run_id...).
    """
    if options is None:
        from radmin.identity import ClientHome

        options = ClientOptions(ClientHome.resolve(None), **option_values)  # type: ignore[arg-type]
    elif option_values:
        raise TypeError("give either options or option values, not both")
    if isinstance(target, str):
        target = _one_target(target, options)
    return _connect(target, options)


def _one_target(spec: str, options: ClientOptions) -> Target:
    from radmin.errors import RadminError
    from radmin.hosts import resolve_hosts

    targets = resolve_hosts(spec, options.home.config)
    if len(targets) != 1:
        raise RadminError(f"{spec!r} names {len(targets)} hosts; connect() takes one")
    return targets[0]
