"""The daemon's config: every key declared once, validated with file:line:key errors.

`SCHEMA` below is the single declaration of each setting -- its type (a converter), its
default and its description. The same table drives `radmind check`, loading at start
and on SIGHUP, docs/config.md and the commented example that `radmind init` writes
(scripts/gen-config-docs), so they cannot disagree.

Loading composes the YAML into nodes (for line numbers), walks them against the schema
collecting *every* problem, and only then builds the frozen `Config`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pwd
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import yaml

from radmin import folders, policy
from radmin.addresses import format_host_port, parse_host_port
from radmin.errors import ConfigError
from radmin.identity import fingerprint, key_mode_problem, pem_to_der

T = TypeVar("T")
DEFAULT_CONFIG_PATH = "/etc/radmin/radmind.yaml"
CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def config_path(cli_value: str | None) -> Path:
    """-c PATH, else $RADMIN_CONFIG, else /etc/radmin/radmind.yaml."""
    return Path(cli_value or os.environ.get("RADMIN_CONFIG") or DEFAULT_CONFIG_PATH)


# -- converters: YAML value -> typed value, raising ValueError with a plain message ---


@dataclass
class _Context:
    base_dir: Path


Converter = Callable[[Any, _Context], Any]


def _string(value: Any, ctx: _Context) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {_describe(value)}")
    return value


def _path(value: Any, ctx: _Context) -> Path:
    return ctx.base_dir / _string(value, ctx)


def _absolute_path(value: Any, ctx: _Context) -> Path:
    text = _string(value, ctx)
    if not text.startswith("/"):
        raise ValueError(f"{text!r} must be an absolute path")
    return Path(text)


def _key_file(value: Any, ctx: _Context) -> Path:
    """A readable PEM private key that only its owner can access (OpenSSH's rule)."""
    path = _path(value, ctx)
    try:
        data = path.read_bytes()
        key_mode = path.stat().st_mode
    except OSError as exc:
        raise ValueError(f"cannot read key file {path}: {exc.strerror}") from None
    if b"PRIVATE KEY-----" not in data:
        raise ValueError(f"{path} does not hold a PEM private key")
    problem = key_mode_problem(path, key_mode)
    if problem:
        raise ValueError(problem)
    return path


def _cert_file(value: Any, ctx: _Context) -> Path:
    path = _path(value, ctx)
    _load_cert(path.read_bytes() if path.is_file() else None, path)
    return path


def _load_cert(data: bytes | None, origin: Path | str) -> tuple[str, str]:
    """(PEM text, fingerprint) of a certificate, with a clear error if it is unusable."""
    if data is None:
        raise ValueError(f"cannot read certificate {origin}: no such file")
    try:
        der = pem_to_der(data)
        return data.decode("ascii"), fingerprint(der)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed certificate in {origin}: {exc}") from None


def _client_cert(value: Any, ctx: _Context) -> tuple[str, str]:
    text = _string(value, ctx)
    if "-----BEGIN" in text:
        return _load_cert(text.encode(), "the inline PEM")
    path = ctx.base_dir / text
    return _load_cert(path.read_bytes() if path.is_file() else None, path)


def _string_list(value: Any, ctx: _Context) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"expected a list of strings, got {_describe(value)}")
    return tuple(value)


def _exec_patterns(value: Any, ctx: _Context) -> tuple[str, ...]:
    patterns = _string_list(value, ctx)
    for pattern in patterns:
        problem = policy.check_exec_pattern(pattern)
        if problem:
            raise ValueError(problem)
    return patterns


def _path_patterns(value: Any, ctx: _Context) -> tuple[str, ...]:
    patterns = _string_list(value, ctx)
    for pattern in patterns:
        problem = policy.check_path_pattern(pattern)
        if problem:
            raise ValueError(problem)
    return patterns


def _env_names(value: Any, ctx: _Context) -> tuple[str, ...]:
    names = _string_list(value, ctx)
    for name in names:
        if not policy.ENV_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
    return names


def _boolean(value: Any, ctx: _Context) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_describe(value)}")
    return value


class _ItemProblems(ValueError):
    """Problems with several items of one list, each with the item's index, so that
    `check` lists every bad item at its own line instead of stopping at the first."""

    def __init__(self, problems: list[tuple[int, str]]):
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


def _listen_list(value: Any, ctx: _Context) -> tuple[tuple[str, int], ...]:
    items = _string_list(value, ctx)
    if not items:
        raise ValueError("at least one address is needed")
    addresses: list[tuple[str, int]] = []
    problems: list[tuple[int, str]] = []
    for index, item in enumerate(items):
        try:
            addresses.append(_listen_address(item, addresses))
        except ValueError as exc:
            problems.append((index, str(exc)))
    if problems:
        raise _ItemProblems(problems)
    return tuple(addresses)


def _listen_address(item: str, earlier: list[tuple[str, int]]) -> tuple[str, int]:
    """(IP, port) of one `listen` entry; an entry that an earlier one already binds is
    refused here, since `run` would fail on it with "Address already in use"."""
    try:
        host, port = parse_host_port(item, default_port=-1)
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(
            f"bad listen address {item!r}: {exc} (use IP:PORT or [IPv6]:PORT)"
        ) from None
    if port < 0:
        raise ValueError(f"listen address {item!r} needs a port")
    for other in earlier:
        if other == (host, port):
            raise ValueError(f"listen address {item!r} is listed twice")
        if _same_socket(other, (host, port)):
            raise ValueError(
                f"listen address {item!r} overlaps {format_host_port(*other)!r} (the wildcard "
                "address takes the port on every address of its family)"
            )
    return host, port


def _same_socket(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether binding `b` after `a` fails: same port and family, and the same address
    or a wildcard (IPv6 sockets are V6ONLY, so [::] and 0.0.0.0 do not clash)."""
    ip_a, ip_b = ipaddress.ip_address(a[0]), ipaddress.ip_address(b[0])
    if a[1] != b[1] or a[1] == 0 or ip_a.version != ip_b.version:
        return False
    return ip_a == ip_b or ip_a.is_unspecified or ip_b.is_unspecified


def _user(value: Any, ctx: _Context) -> str:
    name = _string(value, ctx)
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"no such user {name!r} on this system") from None
    return name


def _positive(kind: type) -> Converter:
    def convert(value: Any, ctx: _Context) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {_describe(value)}")
        if kind is int and not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value}")
        if value <= 0:
            raise ValueError(f"must be greater than 0, got {value}")
        return kind(value)

    return convert


def _at_least(minimum: float) -> Converter:
    """A number of seconds no smaller than `minimum` (and finite)."""

    def convert(value: Any, ctx: _Context) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {_describe(value)}")
        if not minimum <= value < float("inf"):
            raise ValueError(f"must be at least {minimum:g}, got {value}")
        return float(value)

    return convert


def _startups(value: Any, ctx: _Context) -> tuple[int, int, int]:
    """'start:rate:full' (sshd's MaxStartups), or N for N:100:N."""
    if isinstance(value, int) and not isinstance(value, bool):
        parts = [value, 100, value]
    elif isinstance(value, str) and value.count(":") == 2:
        try:
            parts = [int(part) for part in value.split(":")]
        except ValueError:
            parts = []
    else:
        parts = []
    if len(parts) != 3:
        raise ValueError(
            f"expected 'start:rate:full' (e.g. \"10:30:100\") or a number, got {value!r}"
        )
    start, rate, full = parts
    if not (1 <= start <= full and 1 <= rate <= 100):
        raise ValueError(f"need 1 <= start <= full and a rate of 1-100 (percent), got {value!r}")
    return start, rate, full


def _optional(convert: Converter) -> Converter:
    """`convert`, or None for a null value (a limit that is off)."""

    def optional(value: Any, ctx: _Context) -> Any:
        return None if value is None else convert(value, ctx)

    return optional


def parse_size(value: Any, ctx: _Context | None = None) -> int:
    """Bytes from `1048576`, `512MiB`, `10GiB`, `10G`, `1.5T` (units are powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"expected a size like 512MiB or 10GiB, got {_describe(value)}")
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    size = int(number * _SIZE_UNITS[unit[:1]])
    if size <= 0:
        raise ValueError(f"size must be greater than 0, got {value!r}")
    return size


def _choice(*choices: str) -> Converter:
    def convert(value: Any, ctx: _Context) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {_describe(value)}")
        return value

    return convert


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


# -- the schema -----------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One config key: how to read it, its default, and what it is for."""

    convert: Converter
    default: Any
    doc: str
    example: str  # the YAML value shown in the generated example
    required: bool = False
    commented: bool = False  # shown commented out in the example (an opt-in setting)


class ClientsSection:
    """`clients:` -- a mapping of client names to CLIENT_SCHEMA entries."""

    doc = "Clients allowed to connect, by name; nothing is allowed that is not listed here."


Schema = dict[str, "Setting | Schema | ClientsSection"]

# -- sections declared once: each field is its own setting ----------------------------
# The dataclass is what the code reads (typed, for mypy); its fields' metadata is the
# schema entry, so a key, its type, default and documentation are written in one place.


def setting(
    convert: Converter, default: Any, doc: str, example: str, *, commented: bool = False
) -> Any:
    return field(metadata={"setting": Setting(convert, default, doc, example, commented=commented)})


def subsection(cls: type) -> Any:
    return field(metadata={"section": cls})


def section(cls: type) -> Schema:
    """The schema of a dataclass declared with setting() and subsection() fields."""
    schema: Schema = {}
    for item in dataclasses.fields(cls):
        if "setting" in item.metadata:
            schema[item.name] = item.metadata["setting"]
        else:
            schema[item.name] = section(item.metadata["section"])
    return schema


def build(cls: type[T], values: Mapping[str, Any]) -> T:
    """An instance of a section's dataclass from its validated values."""
    kwargs = {}
    for item in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = values[item.name]
        nested = item.metadata.get("section")
        kwargs[item.name] = build(nested, value) if nested else value
    return cls(**kwargs)


@dataclass(frozen=True)
class PerClientLimits:
    max_connections: int = setting(
        _positive(int),
        128,
        "Connections one client may hold at once (more are refused at hello).",
        "128",
    )
    max_processes: int = setting(
        _positive(int),
        64,
        "Commands one client may have running at once (more: exec exits 126).",
        "64",
    )
    max_uploads: int = setting(
        _positive(int),
        16,
        "Uploads one client may have in progress at once (more: put exits 1).",
        "16",
    )


@dataclass(frozen=True)
class Limits:
    max_connections: int = setting(
        _positive(int), 512, "Connections served at once; more are closed at once.", "512"
    )
    handshake_timeout: float = setting(
        _positive(float), 10.0, "Seconds a client has to finish TLS and hello.", "10"
    )
    idle_timeout: float = setting(
        _positive(float),
        300.0,
        "Seconds the daemon waits for a client's next frame (between requests, in a put).",
        "300",
    )
    frame_timeout: float = setting(
        _positive(float),
        30.0,
        "Seconds a frame has to arrive whole once its first byte is in (a client "
        "dripping bytes is cut off); a 1 MiB upload frame must fit: raise it for "
        "links slower than 35 KB/s.",
        "30",
    )
    exec_timeout: float | None = setting(
        _optional(_positive(float)),
        None,
        "Seconds a command may run without -t, and the most -t may ask for (more is "
        "refused); null or absent: no limit.",
        "3600",
        commented=True,
    )
    max_put_size: int = setting(
        parse_size, 10 * 1024**3, "Largest upload (units KiB, MiB, GiB, TiB).", "10GiB"
    )
    shutdown_grace: float = setting(
        _positive(float),
        30.0,
        "Seconds in-flight requests get to finish after SIGTERM.",
        "30",
    )
    kill_grace: float = setting(
        _positive(float),
        2.0,
        "Seconds a command's process group has between SIGTERM and SIGKILL.",
        "2",
    )
    upload_stall_timeout: float = setting(
        _positive(float),
        60.0,
        "Seconds an upload may send nothing before it is ended and its space released "
        "(heartbeats do not count).",
        "60",
    )
    max_startups: tuple[int, int, int] = setting(
        _startups,
        (64, 30, 256),
        "Connections still in the TLS handshake or hello (not yet authenticated), as "
        "OpenSSH's MaxStartups 'start:rate:full': above start, new ones are dropped with "
        "probability rate% rising to 100% at full; a single number N means N:100:N. They "
        "count against max_connections too.",
        '"64:30:256"',
    )
    max_startups_per_source: int = setting(
        _positive(int),
        32,
        "Unauthenticated connections one source address (an IPv6 /64) may hold at once; "
        "more are closed at accept (OpenSSH's PerSourceMaxStartups). Keep it below "
        "max_startups' start, so that one flooding host cannot trigger drops for others.",
        "32",
    )
    heartbeat_interval: float = setting(
        _at_least(0.1),
        10.0,
        "Seconds without sending after which the daemon sends a heartbeat (a client may "
        "ask for a shorter one); a client silent for three intervals during a request is "
        "dead: its command's process group is killed, its partial upload removed.",
        "10",
    )
    per_client: PerClientLimits = subsection(PerClientLimits)


@dataclass(frozen=True)
class LogSettings:
    level: str = setting(
        _choice("debug", "info", "warning", "error"),
        "info",
        "debug | info | warning | error",
        "info",
    )
    format: str = setting(
        _choice("json", "console"),
        "json",
        "json (one object per line) | console",
        "json",
    )
    file: Path | None = setting(
        _path,
        None,
        "Append logs to this file instead of stderr (needed with run --detach; "
        "reopened on SIGHUP for logrotate; created mode 0640).",
        "/var/log/radmind.log",
        commented=True,
    )


@dataclass(frozen=True)
class ShellSettings:
    record: bool = setting(
        _boolean,
        False,
        "Record every radmin-cli shell session as asciicast v2 (playable by asciinema "
        "play) in state_dir/sessions/RUN_ID-CLIENT-TIMESTAMP.cast, mode 0600; the "
        "daemon logs each file's path with the run id.",
        "false",
    )


CLIENT_SCHEMA: Schema = {
    "cert": Setting(
        _client_cert,
        None,
        "The client's identity.crt: a path (relative to this file) or the PEM inline.",
        "clients/ops.crt",
        required=True,
    ),
    "allow": {
        "exec": Setting(
            _exec_patterns,
            (),
            'Command patterns, matched on argv (docs/policy.md); "*" = any shell command '
            "as run_as; [] = none.",
            '["uptime", "systemctl status *"]',
        ),
        "put": Setting(
            _path_patterns,
            (),
            "Destination path patterns the client may write (glob, ** spans folders).",
            '["/srv/**", "/tmp/**"]',
        ),
        "get": Setting(
            _path_patterns,
            (),
            "Path patterns the client may download (same glob syntax as put).",
            '["/var/log/**"]',
        ),
        "env": Setting(
            _env_names,
            (),
            "-e names a restricted client may set (docs/policy.md); unsafe names need env_unsafe.",
            "[DEPLOY_ENV]",
        ),
        "env_unsafe": Setting(
            _boolean,
            False,
            "Also allow listed names that change how programs run (LD_*, PATH, PYTHON*...).",
            "false",
        ),
        "cwd": Setting(
            _path_patterns,
            (),
            "--cwd places a restricted client may use (glob); [] = none.",
            '["/srv/**"]',
        ),
        "shell": Setting(_boolean, False, "Interactive shell allowed.", "false"),
    },
    "run_as": Setting(
        _user,
        None,
        "User that commands run as and uploaded files belong to (default: the daemon's).",
        "root",
    ),
}

SCHEMA: Schema = {
    "listen": Setting(
        _listen_list,
        (("0.0.0.0", 7420),),
        'Addresses to listen on, "IP:PORT" strings; "[::]:7420" for IPv6.',
        '["0.0.0.0:7420"]',
    ),
    "identity": {
        "key": Setting(
            _key_file,
            Path("server.key"),
            "The daemon's private key; mode 0600 (any access for group or others is an error).",
            "server.key",
        ),
        "cert": Setting(_cert_file, Path("server.crt"), "The daemon's certificate.", "server.crt"),
    },
    "put": {
        "default_dir": Setting(
            _absolute_path,
            Path("/var/tmp/radmin"),
            "Folder for uploads given without a remote path; made (0755) at start if missing.",
            "/var/tmp/radmin",
        ),
    },
    "state_dir": Setting(
        _path,
        Path("/var/lib/radmin"),
        "Daemon state (the journal of in-flight uploads and running commands, the lock "
        "that keeps a second daemon out; recorded shells in sessions/), made at start if missing; "
        "relative to this file if relative.",
        "/var/lib/radmin",
    ),
    "shell": section(ShellSettings),
    "limits": section(Limits),
    "log": section(LogSettings),
    # Last, so that the block `radmin-cli keygen` prints can be appended to the file.
    "clients": ClientsSection(),
}


# -- the typed result -----------------------------------------------------------------


@dataclass(frozen=True)
class ClientPolicy:
    name: str
    fingerprint: str
    cert_pem: str
    allow_exec: tuple[str, ...]
    allow_put: tuple[str, ...]
    run_as: str | None
    allow_get: tuple[str, ...] = ()
    allow_env: tuple[str, ...] = ()
    allow_env_unsafe: bool = False
    allow_cwd: tuple[str, ...] = ()
    allow_shell: bool = False

    @property
    def restricted(self) -> bool:
        """Only what the patterns list, run without a shell (docs/policy.md)."""
        return not policy.is_unrestricted(self.allow_exec)


@dataclass(frozen=True)
class Config:
    path: Path
    listen: tuple[tuple[str, int], ...]
    key: Path
    cert: Path
    put_default_dir: Path
    state_dir: Path
    limits: Limits
    log: LogSettings
    clients: Mapping[str, ClientPolicy] = field(default_factory=dict)  # by fingerprint
    # Problems that do not stop the daemon (`check` prints them on stderr): rules that
    # can never match, a run_as client with "*", certificates past their dates.
    warnings: tuple[str, ...] = ()
    shell: ShellSettings = field(default_factory=ShellSettings)

    def client_named(self, name: str) -> ClientPolicy | None:
        return next((c for c in self.clients.values() if c.name == name), None)

    def client_for(self, client_fingerprint: str) -> ClientPolicy | None:
        return self.clients.get(client_fingerprint)


# -- loading --------------------------------------------------------------------------


def _item_node(node: yaml.Node, index: int) -> yaml.Node:
    """The node of a list's item `index` (for its line), or the list's own node."""
    if isinstance(node, yaml.SequenceNode) and index < len(node.value):
        return node.value[index]
    return node


class _Walker:
    """Walks YAML nodes against a schema, collecting values and every problem."""

    def __init__(self, path: Path, loader: yaml.SafeLoader):
        self.path = path
        self.loader = loader
        self.ctx = _Context(path.parent)
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.lines: dict[str, int] = {}  # dotted key -> line of its value, for later checks
        self.bad_keys: set[str] = set()  # keys already reported: later checks skip them

    def problem(self, node: yaml.Node, key: str, message: str) -> None:
        self.problem_at(node.start_mark.line + 1, key, message)

    def problem_at(self, line: int, key: str, message: str) -> None:
        self.problems.append(f"{self.path}:{line}: {key}: {message}")
        self.bad_keys.add(key)

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{self.path}:{self.lines.get(key, 0)}: {key}: warning: {message}")

    def mapping(self, node: yaml.Node, schema: Schema, prefix: str) -> dict[str, Any]:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, prefix or "(top)", "expected a mapping")
            return self.defaults(schema)
        values: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            dotted = f"{prefix}.{key}" if prefix else key
            if key in values:
                self.problem(key_node, dotted, "duplicate key")
            elif key not in schema:
                known = ", ".join(schema)
                self.problem(key_node, dotted, f"unknown key (known here: {known})")
            else:
                values[key] = self.entry(value_node, schema[key], dotted)
        for key, spec in schema.items():
            if key not in values:
                if isinstance(spec, Setting) and spec.required:
                    self.problem(node, f"{prefix}.{key}" if prefix else key, "missing")
                values[key] = self.default(spec)
        return values

    def entry(self, node: yaml.Node, spec: Any, dotted: str) -> Any:
        self.lines[dotted] = node.start_mark.line + 1
        if isinstance(spec, dict):
            return self.mapping(node, spec, dotted)
        if isinstance(spec, ClientsSection):
            return self.clients(node, dotted)
        try:
            return spec.convert(self.loader.construct_object(node, deep=True), self.ctx)
        except _ItemProblems as exc:
            for index, message in exc.problems:
                self.problem(_item_node(node, index), dotted, message)
        except (ValueError, yaml.YAMLError) as exc:
            self.problem(node, dotted, str(exc))
        return spec.default

    def clients(self, node: yaml.Node, dotted: str) -> dict[str, dict[str, Any]]:
        if isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null"):
            return {}
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, dotted, "expected a mapping of client names")
            return {}
        clients = {}
        for key_node, value_node in node.value:
            name = str(key_node.value)
            if not CLIENT_NAME.match(name):
                self.problem(key_node, f"{dotted}.{name}", "client names use A-Z a-z 0-9 _ . @ -")
            elif name in clients:
                self.problem(key_node, f"{dotted}.{name}", "duplicate client")
            else:
                clients[name] = self.mapping(value_node, CLIENT_SCHEMA, f"{dotted}.{name}")
        return clients

    def default(self, spec: Any) -> Any:
        if isinstance(spec, dict):
            return self.defaults(spec)
        if isinstance(spec, ClientsSection):
            return {}
        if isinstance(spec.default, Path) and not spec.default.is_absolute():
            return self.ctx.base_dir / spec.default
        return spec.default

    def defaults(self, schema: Schema) -> dict[str, Any]:
        return {key: self.default(spec) for key, spec in schema.items()}


def load_config(path: Path) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    path = Path(os.path.abspath(path))
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            [
                f"{path}:0: (file): no such file; create a key, a certificate and a "
                f"commented radmind.yaml with: radmind init --dir {path.parent}"
            ]
        ) from None
    except OSError as exc:
        raise ConfigError([f"{path}:0: (file): cannot read: {exc.strerror}"]) from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        raise ConfigError([f"{path}:{line}: (yaml): {exc}"]) from None
    finally:
        loader.dispose()
    if root is None:
        root = yaml.MappingNode("tag:yaml.org,2002:map", [])
    walker = _Walker(path, loader)
    values = walker.mapping(root, SCHEMA, "")
    clients = _build_clients(values["clients"], walker)
    _check_folders(values, walker)
    if not walker.problems:
        _check_identity_pair(values["identity"]["key"], values["identity"]["cert"], walker)
    if walker.problems:
        raise ConfigError(walker.problems)
    return Config(
        path=path,
        listen=values["listen"],
        key=values["identity"]["key"],
        cert=values["identity"]["cert"],
        put_default_dir=values["put"]["default_dir"],
        state_dir=values["state_dir"],
        limits=build(Limits, values["limits"]),
        log=build(LogSettings, values["log"]),
        clients=MappingProxyType(clients),
        warnings=tuple(walker.warnings),
        shell=build(ShellSettings, values["shell"]),
    )


def _check_folders(values: dict[str, Any], walker: _Walker) -> None:
    """The folders the daemon makes or writes at start (radmin.folders): `check`
    reports one it could not use now, rather than `run` failing later."""
    for key, path, writable in (
        ("state_dir", values["state_dir"], True),
        ("put.default_dir", values["put"]["default_dir"], False),
    ):
        problem = None if key in walker.bad_keys else folders.creation_problem(path, writable)
        if problem:
            walker.problem_at(walker.lines.get(key, 0), key, problem)


def _check_identity_pair(key: Path, cert: Path, walker: _Walker) -> None:
    """Load the pair the way the daemon will, so `check` catches what `run` would hit."""
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = "does not match identity.cert" if "MISMATCH" in str(exc) else "unusable"
        walker.problem_at(
            walker.lines.get("identity.key", 0), "identity.key", f"{key} {reason} ({exc.reason})"
        )


def _build_clients(entries: dict[str, dict[str, Any]], walker: _Walker) -> dict[str, ClientPolicy]:
    by_fingerprint: dict[str, ClientPolicy] = {}
    for name, entry in entries.items():
        if entry["cert"] is None:
            continue
        pem, client_fp = entry["cert"]
        if client_fp in by_fingerprint:
            other = by_fingerprint[client_fp].name
            key = f"clients.{name}.cert"
            walker.problem_at(walker.lines.get(key, 0), key, f"same certificate as {other!r}")
            continue
        _warn_about_client(name, entry, pem, walker)
        by_fingerprint[client_fp] = ClientPolicy(
            name=name,
            fingerprint=client_fp,
            cert_pem=pem,
            allow_exec=entry["allow"]["exec"],
            allow_put=entry["allow"]["put"],
            run_as=entry["run_as"],
            allow_get=entry["allow"]["get"],
            allow_env=entry["allow"]["env"],
            allow_env_unsafe=entry["allow"]["env_unsafe"],
            allow_cwd=entry["allow"]["cwd"],
            allow_shell=entry["allow"]["shell"],
        )
    return by_fingerprint


def _warn_about_client(name: str, entry: dict[str, Any], pem: str, walker: _Walker) -> None:
    """What `check` should point out about a client without refusing the config."""
    prefix = f"clients.{name}"
    allow = entry["allow"]
    for pattern in allow["exec"]:
        for message in policy.exec_pattern_warnings(pattern):
            walker.warn(f"{prefix}.allow.exec", message)
    for key in ("put", "get", "cwd"):
        for pattern in allow[key]:
            for message in policy.path_pattern_warnings(pattern):
                walker.warn(f"{prefix}.allow.{key}", message)
    # run_as: root with "*" is the plain admin; a non-root run_as with "*" is usually
    # meant as a restriction, and it is only as strong as that user's own rights.
    if entry["run_as"] not in (None, "root") and policy.is_unrestricted(allow["exec"]):
        walker.warn(
            f"{prefix}.run_as",
            f'allow.exec has "*": client {name!r} is as powerful as user {entry["run_as"]!r}',
        )
    dates = _outside_validity(pem)
    if dates:
        walker.warn(f"{prefix}.cert", f"{dates} (accepted anyway: trust is the fingerprint)")


def _outside_validity(pem: str) -> str | None:
    """'certificate expired on DATE' / 'not valid before DATE', or None."""
    import datetime

    from radmin.identity import validity

    try:
        not_before, not_after = validity(pem_to_der(pem.encode()))
    except ValueError:
        return None
    now = datetime.datetime.now(datetime.timezone.utc)
    if not_after < now:
        return f"certificate expired on {not_after:%Y-%m-%d}"
    if not_before > now:
        return f"certificate not valid before {not_before:%Y-%m-%d}"
    return None


# -- documentation generated from the schema -----------------------------------------


def _walk_settings(schema: Schema, prefix: str = ""):
    for key, spec in schema.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(spec, dict):
            yield dotted, spec
            yield from _walk_settings(spec, dotted)
        else:
            yield dotted, spec


# Where a client's block goes. `clients:` is the file's last section, so appending the
# block to the file (`radmin-cli fingerprint --paste >> radmind.yaml`) puts it here too.
PASTE_HERE = (
    "Paste below: the block `radmin-cli keygen` (or `radmin-cli fingerprint --paste`) prints."
)


def example_yaml(client_example: bool = True) -> str:
    """The commented example config (config/radmind.yaml, `radmind init`)."""
    lines = [
        "# radmind configuration. Validate with: radmind check -c THIS_FILE",
        "# Relative paths are relative to this file's folder. Reload with SIGHUP.",
    ]

    def emit(schema: Schema, indent: str, prefix: str) -> None:
        for key, spec in schema.items():
            if isinstance(spec, dict):
                lines.append(f"{indent}{key}:")
                emit(spec, indent + "  ", f"{prefix}{key}.")
            elif isinstance(spec, ClientsSection):
                lines.append(f"{indent}# {spec.doc}")
                lines.append(f"{indent}# The last section, so a client's block can be appended.")
                lines.append(f"{indent}clients:")
                lines.append(f"{indent}  # {PASTE_HERE}")
                if client_example:
                    lines.append(f"{indent}  ops:  # the client's name, used in logs and replies")
                    emit(CLIENT_SCHEMA, indent + "    ", "clients.NAME.")
            else:
                mark = "# " if spec.commented else ""
                lines.append(f"{indent}{mark}{key}: {spec.example}  # {spec.doc}")

    emit(SCHEMA, "", "")
    return "\n".join(lines) + "\n"


def reference_markdown() -> str:
    """docs/config.md: one row per key, straight from the schema."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]

    def add(schema: Schema, prefix: str) -> None:
        for dotted, spec in _walk_settings(schema, prefix):
            if isinstance(spec, Setting):
                default = "(required)" if spec.required else _format_default(spec.default)
                doc = spec.doc.replace("|", "\\|")
                rows.append(f"| `{dotted}` | {default} | {doc} |")
            elif isinstance(spec, ClientsSection):
                rows.append(f"| `{dotted}` | (none) | {spec.doc} |")
                add(CLIENT_SCHEMA, f"{dotted}.NAME")

    add(SCHEMA, "")
    return "\n".join(rows) + "\n"


def _format_default(value: Any) -> str:
    if value is None:
        return "(none)"
    if value == ():
        return "`[]`"
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return "`" + ", ".join(f"{h}:{p}" for h, p in value) + "`"
    if isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
        return "`" + ":".join(str(v) for v in value) + "`"  # max_startups
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1024**2:
        return f"`{value // 1024**3}GiB`"
    return f"`{value}`"
