"""scripts/quickstart after the install: identities, config, port check, then radmind.

Run by scripts/quickstart with the venv's Python. Everything lives in one folder
($RADMIN_QUICKSTART_DIR, default ./quickstart): daemon/ (key, certificate,
radmind.yaml), client/ (the client home), state/ and uploads/ (made by radmind).

radmind.yaml is quickstart's until you edit it: its first line carries a digest of the
rest, so an untouched file is rewritten (for a new RADMIN_PORT, say) and an edited one
is kept, with a note. The lines printed to try are for the address the daemon will
really listen on, which is checked to be free first.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from radmin import DEFAULT_PORT, __version__
from radmin.addresses import format_host_port
from radmin.config import Config, load_config
from radmin.errors import ConfigError
from radmin.identity import cert_file_fingerprint

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

HEADER = "# scripts/quickstart wrote this file (sha256 {digest} of the rest); edited, it is kept\n"
_HEADER = re.compile(r"# scripts/quickstart wrote this file \(sha256 ([0-9a-f]{16}) ")
BODY = """\
# A local daemon for trying radmin out; scripts/quickstart runs it.
listen: ["127.0.0.1:{port}"]
identity:
  key: server.key
  cert: server.crt
put:
  default_dir: {folder}/uploads
state_dir: {folder}/state
log:
  level: info
  format: console
clients:
  quickstart:
    cert: ../client/identity.crt
    allow:
      exec: ["*"]
      put: ["{folder}/uploads/**", "/tmp/**"]
"""


def fail(message: str, status: int = 1) -> None:
    print(f"quickstart: {message}", file=sys.stderr)
    sys.exit(status)


def requested_port() -> int:
    """$RADMIN_PORT, else radmin's default port."""
    text = os.environ.get("RADMIN_PORT", str(DEFAULT_PORT))
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        fail(f"RADMIN_PORT={text!r}: expected a port number from 1 to 65535", status=2)
    return int(text)


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def render(folder: Path, port: int) -> str:
    """The radmind.yaml quickstart writes for this folder and port."""
    body = BODY.format(port=port, folder=folder)
    return HEADER.format(digest=_digest(body)) + body


def untouched(text: str) -> bool:
    """Whether `text` is a radmind.yaml quickstart wrote and nobody edited since."""
    header, _, body = text.partition("\n")
    match = _HEADER.match(header)
    return bool(match) and match.group(1) == _digest(body)


def write_config(path: Path, text: str) -> bool:
    """Write quickstart's config unless the file there was edited: False if it is kept."""
    if path.exists():
        current = path.read_text()
        if current == text:
            return True
        if not untouched(current):
            return False
    path.write_text(text)
    return True


def make_identities(folder: Path) -> None:
    """The daemon's and the client's identities, once (radmind init keeps our config)."""
    steps = [
        (folder / "daemon" / "server.key", ["radmind", "init", "--dir", folder / "daemon"]),
        (folder / "client" / "identity.key", ["radmin-cli", "keygen", "--home", folder / "client"]),
    ]
    for key, (program, *args) in steps:
        if key.exists():
            continue
        done = subprocess.run([BIN / program, *args], capture_output=True, text=True)
        if done.returncode != 0:
            fail(f"{program} {args[0]} failed:\n{done.stderr}")


def listen_problem(address: tuple[str, int]) -> str | None:
    """Why radmind could not listen on `address` right now (as it binds: SO_REUSEADDR,
    so a port in TIME_WAIT is free), or None."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def check_addresses(config: Config, kept: bool) -> None:
    """Stop with a clear message before printing instructions that could not work."""
    for address in config.listen:
        problem = listen_problem(address)
        if problem is None:
            continue
        if kept:
            remedy = f"change listen: in {config.path}"
        else:
            remedy = f"RADMIN_PORT={address[1] + 1} scripts/quickstart uses another port"
        fail(f"cannot listen on {format_host_port(*address)}: {problem}; {remedy}")


def client_target(address: tuple[str, int]) -> str:
    """What to type after `radmin-cli ping` to reach `address` from this machine."""
    host, port = address
    if host in ("0.0.0.0", "::"):
        host = "::1" if ":" in host else "127.0.0.1"
    if port == DEFAULT_PORT:
        return host
    return format_host_port(host, port)


def instructions(config: Config, client_home: Path) -> str:
    addresses = ", ".join(format_host_port(*a) for a in config.listen)
    target = client_target(config.listen[0])
    uploads = f"{config.put_default_dir}/"
    return f"""\
radmind {__version__} on {addresses}, fingerprint {cert_file_fingerprint(config.cert)}
In another terminal:

  export RADMIN_HOME={client_home} PATH={BIN}:$PATH
  radmin-cli ping {target}
  radmin-cli exec {target} 'uname -a; id'
  radmin-cli put README.md {target}            # lands in {uploads}

Ctrl-C stops the daemon.
"""


def main() -> None:
    folder = Path(os.environ.get("RADMIN_QUICKSTART_DIR") or ROOT / "quickstart").absolute()
    path = folder / "daemon" / "radmind.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    ours = write_config(path, render(folder, requested_port()))
    if not ours:
        print(
            f"quickstart: keeping {path}: it was edited (delete it to get quickstart's own"
            + ("; RADMIN_PORT does not change it)" if "RADMIN_PORT" in os.environ else ")"),
            file=sys.stderr,
        )
    make_identities(folder)
    try:
        config = load_config(path)
    except ConfigError as exc:
        fail("\n".join(exc.problems))
    check_addresses(config, kept=not ours)
    print(instructions(config, folder / "client"), end="", flush=True)
    radmind = str(BIN / "radmind")
    os.execv(radmind, [radmind, "run", "-c", str(path)])


if __name__ == "__main__":
    main()
