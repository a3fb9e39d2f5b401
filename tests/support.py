"""Helpers that run the real programs: a real radmind on 127.0.0.1, the real radmin-cli.

`daemon_factory` writes a config into a temporary folder, starts `radmind run` as a
subprocess listening on port 0 (the kernel picks a free port, no race), reads the bound
port from the daemon's JSON log, and stops it afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from radmin.identity import ClientHome, cert_file_fingerprint, create_identity
from radmin.protocol import HEADER, FrameSocket, FrameType
from radmin.tls import client_context

BIN = Path(sys.executable).parent
RADMIND = str(BIN / "radmind")
RADMIN_CLI = str(BIN / "radmin-cli")


@contextlib.contextmanager
def trickled_frames(sent: list[tuple[FrameType, bytes]]) -> Iterator[FrameSocket]:
    """A FrameSocket receiving `sent` one byte per send: every frame split at every byte
    boundary, headers included (the worst a TCP stream may do)."""
    wire = b"".join(HEADER.pack(t, len(p)) + p for t, p in sent)
    left, right = socket.socketpair()
    with left, right:
        sender = threading.Thread(target=lambda: [left.sendall(bytes([b])) for b in wire])
        sender.start()
        try:
            yield FrameSocket(right)
        finally:
            sender.join()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def under_umask(mask: int, argv: list[str]) -> list[str]:
    """`argv` started by sh under this umask, as a careless init script or cron job would;
    sh execs it, so the pid is the program's own."""
    return ["sh", "-c", f'umask {mask:03o} && exec "$@"', "sh", *argv]


def make_client_home(path: Path) -> ClientHome:
    home = ClientHome(path)
    create_identity(home.key, home.cert, "radmin-cli")
    return home


class Daemon:
    """A running radmind subprocess and the files around it."""

    def __init__(
        self,
        folder: Path,
        config: dict[str, Any],
        env: dict[str, str] | None = None,
        umask: int | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ):
        self.folder = folder
        self.config_path = folder / "radmind.yaml"
        self.stderr_path = folder / "radmind.log"  # the daemon's stdout and stderr
        log_file = config.get("log", {}).get("file")
        self.log_path = folder / log_file if log_file else self.stderr_path  # JSON events
        self.config = config
        self.env = env  # None: the test runner's environment
        self.umask = umask  # None: the test runner's umask
        self.preexec_fn = preexec_fn  # runs in the child before exec (e.g. setrlimit)
        self.program = [RADMIND]  # what runs `run -c CONFIG` (a wrapper may add operations)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.ports: list[int] = []

    def write_config(self, config: dict[str, Any] | None = None) -> None:
        if config is not None:
            self.config = config
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def start(self, timeout: float = 10.0) -> Daemon:
        self.write_config()
        self.stderr_path.write_text("")
        argv = [*self.program, "run", "-c", str(self.config_path)]
        if self.umask is not None:
            argv = under_umask(self.umask, argv)
        with open(self.stderr_path, "ab") as output:
            self.proc = subprocess.Popen(
                argv,
                stdout=output,
                stderr=output,
                stdin=subprocess.DEVNULL,
                env=self.env,
                preexec_fn=self.preexec_fn,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("event") == "listening":
                    self.ports = [int(a.rsplit(":", 1)[1]) for a in event["addresses"]]
                    self.port = self.ports[0]
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"radmind exited: {self.stderr_path.read_text()}")
            time.sleep(0.02)
        raise RuntimeError(f"radmind did not start: {self.stderr_path.read_text()}")

    def events(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines parsed (non-JSON lines are kept as 'raw')."""
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"event": "raw", "line": line})
        return out

    def wait_for_event(self, predicate, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if predicate(event):
                    return event
            time.sleep(0.02)
        raise AssertionError(f"no matching log event; log:\n{self.log_path.read_text()}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def prepare_daemon(
    folder: Path,
    server_identity: Path,
    clients: dict[str, Any],
    umask: int | None = None,
    **overrides: Any,
) -> Daemon:
    """A daemon, not started yet, in `folder` (created, with an uploads/ folder) knowing
    `clients`. Not started, so a caller can record it for cleanup before `start()`."""
    folder.mkdir()
    (folder / "uploads").mkdir()
    config = base_config(server_identity, folder, **overrides)
    config["clients"] = clients
    return Daemon(folder, config, umask=umask)


def base_config(server_identity: Path, state_dir: Path, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listen": ["127.0.0.1:0"],
        "identity": {
            "key": str(server_identity / "server.key"),
            "cert": str(server_identity / "server.crt"),
        },
        "clients": {},
        "put": {"default_dir": str(state_dir / "uploads")},
        "state_dir": str(state_dir / "state"),
        "limits": {"handshake_timeout": 2},
        "log": {"level": "debug", "format": "json"},
    }
    config.update(overrides)
    return config


def client_entry(
    home: ClientHome, exec_allow=("*",), put_allow=("/**",), run_as: str | None = None, **allow: Any
) -> dict[str, Any]:
    """A `clients:` entry; extra keywords are further `allow:` keys (env, cwd, get...)."""
    entry: dict[str, Any] = {
        "cert": str(home.cert),
        "allow": {"exec": list(exec_allow), "put": list(put_allow), **allow},
    }
    if run_as is not None:
        entry["run_as"] = run_as
    return entry


def run_cli(
    home: ClientHome | Path | None,
    *args: str,
    input: bytes | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    umask: int | None = None,
    wrapper: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[bytes]:
    """Run the real radmin-cli (under `wrapper`, e.g. prlimit); stdin is empty unless
    `input` is given."""
    argv = [*wrapper, RADMIN_CLI, *args]
    full_env = {k: v for k, v in os.environ.items() if k not in ("RADMIN_HOME", "RADMIN_CONFIG")}
    if home is not None:
        full_env["RADMIN_HOME"] = str(home.path if isinstance(home, ClientHome) else home)
    full_env.update(env or {})
    return subprocess.run(
        argv if umask is None else under_umask(umask, argv),
        input=input if input is not None else b"",
        capture_output=True,
        timeout=timeout,
        env=full_env,
    )


def fingerprint_of(home: ClientHome) -> str:
    return cert_file_fingerprint(home.cert)


def tls_connect(home: ClientHome, port: int, host: str = "127.0.0.1") -> ssl.SSLSocket:
    """A raw mutual-TLS connection as `home`'s identity, for speaking frames by hand."""
    context = client_context(home.key, home.cert)
    raw = socket.create_connection((host, port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return context.wrap_socket(raw)


def frames_after_hello(home: ClientHome, port: int) -> FrameSocket:
    """A FrameSocket that has completed the hello exchange."""
    frames = FrameSocket(tls_connect(home, port))
    frames.send_json(FrameType.HELLO, {"protocols": [1], "software": "test"})
    frame_type, _ = frames.recv_json(FrameType.HELLO)
    assert frame_type is FrameType.HELLO
    return frames


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the peer sends until it closes (raises on timeout)."""
    sock.settimeout(timeout)
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def start_three_address_daemon(folder: Path, server_identity: Path) -> tuple[Daemon, ClientHome]:
    """A daemon in `folder` on 127.0.0.1, .2 and .3 (a port each: three hosts for the
    fan-out tests) knowing a new client home as "ops", allowed everything, and already in
    that home's known_hosts."""
    (folder / "uploads").mkdir()
    home = make_client_home(folder / "client")
    config = base_config(
        server_identity, folder, listen=["127.0.0.1:0", "127.0.0.2:0", "127.0.0.3:0"]
    )
    config["clients"] = {"ops": client_entry(home)}
    return Daemon(folder, config).start(), home


def trust(home: ClientHome, daemon: Daemon) -> list[str]:
    """Record every address the daemon listens on in known_hosts (so stderr carries no
    first-contact warning); return the addresses as `host:port`."""
    listening = next(e for e in daemon.events() if e.get("event") == "listening")
    addresses = [str(a) for a in listening["addresses"]]
    presented = cert_file_fingerprint(Path(daemon.config["identity"]["cert"]))
    with open(home.known_hosts, "a") as f:
        for address in addresses:
            f.write(f"{address} {presented}\n")
    return addresses


# -- radmin-cli processes and the remote processes they start ------------------------------


def cli_env(home) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RADMIN_HOME", "RADMIN_CONFIG")}
    env["RADMIN_HOME"] = str(home.path)
    return env


def start_cli(home, *args: str, stdin=subprocess.DEVNULL, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([RADMIN_CLI, *args], stdin=stdin, env=cli_env(home), **kwargs)


def new_marker() -> str:
    """A `sleep` duration no other process on this machine has in its command line."""
    return f"{random.randint(1000, 1999)}.{random.randint(10**8, 10**9 - 1)}"


def processes_with(marker: str, exclude: tuple[int, ...] = ()) -> list[int]:
    found = subprocess.run(["pgrep", "-f", re.escape(marker)], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split() if int(pid) not in exclude]


def wait_for_processes(
    marker: str, count: int, exclude: tuple[int, ...] = (), timeout: float = 5.0
) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = processes_with(marker, exclude)
        if len(pids) >= count:
            return pids
        time.sleep(0.02)
    raise AssertionError(f"expected {count} processes with {marker}, found {pids}")


def wait_until_gone(marker: str, timeout: float) -> float:
    """Seconds it took for every process with `marker` to disappear."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not processes_with(marker):
            return time.monotonic() - started
        time.sleep(0.02)
    left = processes_with(marker)
    for pid in left:  # do not leave strays behind for the next tests
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"processes {left} with {marker} still alive after {timeout} s")


def refused_port() -> tuple[socket.socket, int]:
    """A port bound but not listening: connecting to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


def request_events(daemon, count: int, timeout: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        events = [e for e in daemon.events() if e.get("event") == "request"]
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.02)


def proc_status(pid: int, field: str) -> int:
    """A numeric field of /proc/PID/status (VmRSS in KiB, Threads...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def restricted_entry(home: ClientHome) -> dict[str, Any]:
    """A low-privilege client: it may run `echo ...` and upload nothing."""
    return client_entry(home, exec_allow=("echo *",), put_allow=())


def send_request(frames: FrameSocket, payload: bytes) -> dict[str, Any]:
    """Send one REQUEST frame holding `payload` as is; return the RESULT it gets."""
    frames.send_frame(FrameType.REQUEST, payload)
    return frames.recv_json(FrameType.RESULT)[1]


def ping_works(frames: FrameSocket) -> bool:
    return send_request(frames, b'{"op":"ping"}').get("ok") is True


def expired_identity(folder: Path) -> Path:
    """A folder with identity.key (0600) and a self-signed Ed25519 identity.crt that
    expired yesterday (radmin's own certificates never expire)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    key = ed25519.Ed25519PrivateKey.generate()
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"expired {os.urandom(8).hex()}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(key, None)
    )
    folder.mkdir(parents=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(folder / "identity.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    (folder / "identity.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return folder


def run_radmind(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real `radmind` to completion (check, init, fingerprint, a failing run);
    $RADMIN_CONFIG is not inherited from the test runner."""
    full_env = {k: v for k, v in os.environ.items() if k != "RADMIN_CONFIG"}
    full_env.update(env or {})
    return subprocess.run(
        [RADMIND, *args], capture_output=True, text=True, cwd=cwd, env=full_env, timeout=timeout
    )


class ConfigFileDaemon(Daemon):
    """A radmind started from a config file exactly as an admin wrote it (comments,
    pasted blocks, relative paths), where `Daemon` writes a dict of the test's."""

    def __init__(self, config_path: Path):
        super().__init__(config_path.parent, yaml.safe_load(config_path.read_text()))
        self.config_path = config_path
        identity = self.config.setdefault("identity", {})
        for name, default in (("key", "server.key"), ("cert", "server.crt")):
            identity[name] = str(config_path.parent / identity.get(name, default))  # trust()

    def write_config(self, config: dict[str, Any] | None = None) -> None:
        """The file is the admin's: it is never rewritten."""
