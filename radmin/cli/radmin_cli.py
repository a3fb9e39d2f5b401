"""`radmin-cli`: argument parsing, printing and exit codes; the work is in radmin.client.

Exit statuses: 0 success; 1 the daemon refused or the operation failed on the host;
255 a host could not be reached, authenticated or spoken to (as with ssh); 2 usage.
Start-up time matters here (`radmin-cli exec` competes with `ssh`): heavy modules are
imported inside the command that needs them.
"""

from __future__ import annotations

import argparse
import sys

from radmin import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TRANSPORT = 0, 1, 2, 255


def _trust_options(sub: argparse.ArgumentParser, hosts: bool = True) -> None:
    sub.add_argument("--home", metavar="DIR", help="client home (identity, known_hosts)")
    if not hosts:
        return
    sub.add_argument(
        "--strict-host-key", action="store_true", help="refuse hosts not in known_hosts"
    )
    sub.add_argument(
        "--host-fingerprint", metavar="SHA256:...", help="accept only this daemon fingerprint"
    )
    sub.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up on a host after this long (default 10)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radmin-cli", description="radmin client: run commands and upload files over mTLS"
    )
    parser.add_argument("--version", action="version", version=f"radmin-cli {__version__}")
    commands = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)

    keygen = commands.add_parser("keygen", help="create this client's identity")
    keygen.add_argument("--force", action="store_true", help="replace an existing identity")
    _trust_options(keygen, hosts=False)
    fingerprint = commands.add_parser("fingerprint", help="print this client's fingerprint")
    fingerprint.add_argument(
        "--paste", action="store_true", help="print keygen's block for the daemon's clients:"
    )
    _trust_options(fingerprint, hosts=False)
    ping = commands.add_parser("ping", help="authenticated round trip to each host")
    ping.add_argument("hosts", metavar="HOSTS", help="host[:port],alias,@group,...")
    ping.add_argument("-p", "--parallel", type=int, default=32, metavar="N")
    _trust_options(ping)

    run = commands.add_parser(
        "exec",
        help="run a shell command on each host",
        usage="radmin-cli exec [OPTIONS] HOSTS COMMAND...",
    )
    run.add_argument(
        "-t",
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="kill the command's process group after this long",
    )
    run.add_argument("--cwd", metavar="DIR", help="working directory (default: the user's home)")
    run.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set an environment variable (repeatable)",
    )
    run.add_argument("--json", action="store_true", help="one JSON object per host per line")
    run.add_argument(
        "-p", "--parallel", type=int, default=32, metavar="N", help="hosts at once (default 32)"
    )
    run.add_argument("-n", dest="no_stdin", action="store_true", help="send no stdin")
    _trust_options(run)
    run.add_argument("hosts", metavar="HOSTS", help="host[:port],alias,@group,...")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")

    put = commands.add_parser(
        "put",
        help="upload a file to each host, atomically and verified",
        usage="radmin-cli put [OPTIONS] FILE HOSTS [REMOTE_PATH]",
    )
    put.add_argument(
        "--mode",
        type=_octal,
        metavar="OCTAL",
        help="file mode (default: the local file's permission bits)",
    )
    put.add_argument("--owner", metavar="USER", help="owner on the host")
    put.add_argument("--group", metavar="GROUP", help="group on the host")
    put.add_argument("--json", action="store_true", help="one JSON object per host per line")
    put.add_argument(
        "-p", "--parallel", type=int, default=32, metavar="N", help="hosts at once (default 32)"
    )
    _trust_options(put)
    put.add_argument("file", metavar="FILE")
    put.add_argument("hosts", metavar="HOSTS", help="host[:port],alias,@group,...")
    put.add_argument(
        "remote_path",
        metavar="REMOTE_PATH",
        nargs="?",
        help="absolute; ending in / = inside that folder; default: the daemon's put.default_dir",
    )
    return parser


def _octal(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 644") from None
    if not 0 <= mode <= 0o7777:
        raise argparse.ArgumentTypeError(f"{text!r} is outside 0000-7777")
    return mode


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from radmin.identity import ClientHome

    home = ClientHome.resolve(args.home)
    handler = {
        "keygen": _keygen,
        "fingerprint": _fingerprint,
        "ping": _ping,
        "exec": _exec,
        "put": _put,
    }[args.subcommand]
    try:
        return handler(args, home)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # our reader went away (| head): quietly, like a shell tool
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13


def _line(stream, text: str) -> None:
    """One write per line (print() makes two), so lines from a fan-out's threads never
    interleave."""
    stream.write(text + "\n")
    stream.flush()


def _error(message: str) -> None:
    _line(sys.stderr, f"radmin-cli: {message}")


# The allow: rules keygen suggests: least privilege, so that pasting them as they are
# grants a few harmless things, never everything. docs/install.md shows the same lines.
ALLOW_EXAMPLE = """\
    allow:
      # Least privilege: list only what this client needs. "*" would allow any shell
      # command, run as run_as (without run_as: as the daemon's user, usually root).
      exec: ["uptime", "systemctl status *"]
      put: ["/var/tmp/radmin/**"]
"""


def _keygen(args: argparse.Namespace, home) -> int:
    from radmin.errors import RadminError
    from radmin.identity import create_identity

    try:
        client_fp = create_identity(home.key, home.cert, "radmin-cli", args.force)
    except RadminError as exc:
        _error(str(exc))
        return EXIT_FAILED
    print(f"Created {home.key} (mode 0600) and {home.cert}")
    print(f"Fingerprint: {client_fp}")
    print()
    print("To authorize this client, paste these lines under clients: in the daemon's")
    print("radmind.yaml (radmind init writes clients: last: appending them to the file works),")
    print("adjust the allow: rules, then reload it (systemctl reload radmind).")
    print("radmin-cli fingerprint --paste prints them again.")
    print()
    print(_paste_block(home), end="")
    print()
    print(f"Or copy {home.cert} to the daemon host and write  cert: clients/{_client_name()}.crt")
    return EXIT_OK


def _client_name() -> str:
    """The name the paste block gives this client: user@host, as ssh keys say it."""
    import getpass
    import socket

    return f"{getpass.getuser()}@{socket.gethostname().split('.')[0]}"


def _paste_block(home) -> str:
    """This client's entry for the daemon's `clients:`: the certificate inline and the
    least-privilege rules; the same text from keygen and from `fingerprint --paste`."""
    pem = home.cert.read_text().strip().replace("\n", "\n        ")
    return f"  {_client_name()}:\n    cert: |\n        {pem}\n{ALLOW_EXAMPLE}"


def _fingerprint(args: argparse.Namespace, home) -> int:
    from radmin.identity import cert_file_fingerprint

    try:
        client_fp = cert_file_fingerprint(home.cert)
    except FileNotFoundError:
        _error(f"no client identity in {home.path}: run 'radmin-cli keygen' first")
        return EXIT_FAILED
    except ValueError as exc:
        _error(f"{home.cert}: {exc}")
        return EXIT_FAILED
    if args.paste:
        sys.stdout.write(_paste_block(home))
    else:
        print(client_fp)
    return EXIT_OK


def _resolve_hosts(spec: str, home):
    from radmin.hosts import HostSpecError, resolve_hosts

    try:
        return resolve_hosts(spec, home.config)
    except HostSpecError as exc:
        _error(str(exc))
        return None


def _options(args: argparse.Namespace, home, cancel_fd: int | None = None):
    from radmin.client import ClientOptions

    return ClientOptions(
        home,
        strict_host_key=args.strict_host_key,
        host_fingerprint=args.host_fingerprint,
        connect_timeout=args.connect_timeout,
        warn=lambda message: _line(sys.stderr, message),
        cancel_fd=cancel_fd,
    )


def _ping(args: argparse.Namespace, home) -> int:
    from radmin.client import RemoteError, connect
    from radmin.errors import TransportError
    from radmin.fanout import run_parallel

    targets = _resolve_hosts(args.hosts, home)
    if targets is None:
        return EXIT_USAGE
    options = _options(args, home)

    def ping_one(target) -> int:
        try:
            with connect(target, options) as conn:
                result = conn.ping()
        except TransportError as exc:
            _error(f"{target.label}: {exc}")
            return EXIT_TRANSPORT
        except RemoteError as exc:
            _error(f"{target.label}: {exc}")
            return EXIT_FAILED
        _line(
            sys.stdout,
            f"{target.label}: radmind {result.version} (protocol {result.protocol}), "
            f'known as "{result.client}", rtt {result.rtt_s * 1000:.2f} ms '
            f"(connect {result.connect_s * 1000:.1f} ms)",
        )
        return EXIT_OK

    statuses = run_parallel(targets, ping_one, max(1, args.parallel))
    return max(statuses)


def _parse_env(pairs: list[str]) -> dict[str, str] | None:
    import re

    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            _error(f"-e {pair!r}: expected NAME=VALUE with NAME made of letters, digits and _")
            return None
        env[name] = value
    return env


def _cancel_on_sigint():
    """First Ctrl-C: make the returned fd readable for good (every wait in the client
    watches it: connecting hosts give up, running commands are cancelled and the daemon
    confirms) and set the returned event (hosts not started yet are skipped).
    Second Ctrl-C: exit at once."""
    import os
    import signal
    import threading

    read_fd, write_fd = os.pipe()
    pressed = threading.Event()

    def on_sigint(signum, frame) -> None:
        if pressed.is_set():
            os._exit(130)
        pressed.set()
        os.write(write_fd, b"x")

    signal.signal(signal.SIGINT, on_sigint)
    return read_fd, pressed


def _exec(args: argparse.Namespace, home) -> int:
    import os

    from radmin.fanout import (
        LinePrefixer,
        SharedOutput,
        combined_status,
        exec_on_host,
        exec_record,
        run_parallel,
        summary_line,
    )
    from radmin.fanout import cancelled as host_cancelled

    command = " ".join(args.command)
    if not command.strip():
        _error("exec: no COMMAND given")
        return EXIT_USAGE
    env = _parse_env(args.env)
    targets = _resolve_hosts(args.hosts, home)
    if env is None or targets is None:
        return EXIT_USAGE
    cancel_fd, cancelled = _cancel_on_sigint()
    options = _options(args, home, cancel_fd)
    several = len(targets) > 1
    stdin: bytes | int | None = None
    if not args.no_stdin and not os.isatty(0):
        stdin = sys.stdin.buffer.read() if several else 0  # several hosts: each gets a copy
    stdout, stderr = SharedOutput(sys.stdout.buffer), SharedOutput(sys.stderr.buffer)
    exec_options = {
        "stdin": stdin,
        "cwd": args.cwd,
        "env": env,
        "timeout": args.timeout,
    }

    def one_host(target):
        if args.json:
            out, err = bytearray(), bytearray()
            outcome = exec_on_host(target, options, command, out.extend, err.extend, **exec_options)
            stdout.write(exec_record(outcome, bytes(out), bytes(err)).encode() + b"\n")
            return outcome
        if not several:
            outcome = exec_on_host(
                target, options, command, stdout.write, stderr.write, **exec_options
            )
        else:
            out, err = LinePrefixer(target.label, stdout), LinePrefixer(target.label, stderr)
            outcome = exec_on_host(target, options, command, out.feed, err.feed, **exec_options)
            out.close()
            err.close()
        if outcome.error:
            _error(f"{target.label}: {outcome.error}")
        elif outcome.result and outcome.result.timed_out:
            _error(f"{target.label}: timed out; the daemon killed the command's process group")
        return outcome

    outcomes = run_parallel(targets, one_host, args.parallel, cancelled, skipped=host_cancelled)
    if several and not args.json:
        print(summary_line(outcomes), file=sys.stderr)
    if cancelled.is_set():
        return 130
    return combined_status(outcomes)


def _human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _progress_bar(total: int, show: bool):
    """A tqdm bar on stderr when it is a terminal; None otherwise (pipes, logs, --json)."""
    import os

    if not show or not os.isatty(2):
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )


def _put(args: argparse.Namespace, home) -> int:
    import os
    import threading

    from radmin.fanout import (
        SUCCESS,
        SharedOutput,
        combined_status,
        put_on_host,
        put_record,
        run_parallel,
        summary_line,
    )
    from radmin.hashing import file_sha256

    if args.remote_path is not None and not args.remote_path.startswith("/"):
        _error(f"REMOTE_PATH must be absolute, got {args.remote_path!r}")
        return EXIT_USAGE
    targets = _resolve_hosts(args.hosts, home)
    if targets is None:
        return EXIT_USAGE
    try:
        size = os.stat(args.file).st_size
        if not os.path.isfile(args.file):
            raise IsADirectoryError(21, "not a regular file")
        # Several hosts: hash once for all. One host: hashed while it is sent.
        options = _options(args, home)
        digest = file_sha256(args.file, options.digest_cache()) if len(targets) > 1 else None
    except OSError as exc:
        _error(f"{args.file}: {exc.strerror}")
        return EXIT_FAILED
    stdout = SharedOutput(sys.stdout.buffer)
    bar = _progress_bar(size * len(targets), show=not args.json)
    bar_lock = threading.Lock()

    def advance(n: int) -> None:
        with bar_lock:
            bar.update(n)

    def one_host(target):
        outcome = put_on_host(
            target,
            options,
            args.file,
            args.remote_path,
            mode=args.mode,
            owner=args.owner,
            group=args.group,
            sha256=digest,
            progress=advance if bar else None,
        )
        if args.json:  # one write per line: threads must not interleave
            stdout.write(put_record(outcome, args.remote_path, digest).encode() + b"\n")
        elif outcome.kind in SUCCESS:
            if bar:
                bar.clear()
            line = (
                f"{target.label}: {outcome.kind} {outcome.result.path} "
                f"({_human_size(size)}, sha256 {outcome.result.sha256[:12]}…)\n"
            )
            stdout.write(line.encode())
        else:
            if bar:
                bar.clear()
            _error(f"{target.label}: {outcome.error}")
        return outcome

    outcomes = run_parallel(targets, one_host, args.parallel)
    if bar:
        bar.close()
    if len(targets) > 1 and not args.json:
        print(summary_line(outcomes), file=sys.stderr)
    return combined_status(outcomes)


if __name__ == "__main__":
    sys.exit(main())
