"""`radmind`: argument parsing and exit codes for the daemon's commands, nothing else."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from radmin import __version__
from radmin.config import config_path, example_yaml, load_config
from radmin.errors import ConfigError, RadminError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radmind", description="radmin daemon: remote administration over mutual TLS 1.3"
    )
    parser.add_argument("--version", action="version", version=f"radmind {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "-c",
            "--config",
            metavar="PATH",
            help="config file (default: $RADMIN_CONFIG or /etc/radmin/radmind.yaml)",
        )
        return sub

    run = with_config(commands.add_parser("run", help="run the daemon (the default)"))
    run.add_argument("--detach", action="store_true", help="detach as a classic daemon")
    run.add_argument("--pidfile", metavar="PATH", help="pidfile to write when detached")
    check = with_config(commands.add_parser("check", help="validate the config and exit"))
    check.add_argument(
        "--explain",
        metavar="CLIENT",
        help="say what CLIENT may do; with -- COMMAND... or --path PATH, whether it may",
    )
    check.add_argument("--path", metavar="PATH", help="with --explain: put/get/cwd verdicts")
    check.add_argument("words", nargs="*", metavar="COMMAND", help=argparse.SUPPRESS)
    init = commands.add_parser("init", help="create the server key, certificate and config")
    init.add_argument("--dir", required=True, metavar="DIR", help="folder to create them in")
    init.add_argument("--force", action="store_true", help="replace an existing key")
    with_config(commands.add_parser("fingerprint", help="print the server's fingerprint"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    try:
        if command == "init":
            return _init(Path(args.dir), args.force)
        path = config_path(getattr(args, "config", None))
        if command == "check":
            return _check(path, args)
        if command == "fingerprint":
            from radmin.identity import cert_file_fingerprint

            print(cert_file_fingerprint(load_config(path).cert))
            return 0
        return _run(path, getattr(args, "detach", False), getattr(args, "pidfile", None))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except RadminError as exc:
        print(f"radmind: {exc}", file=sys.stderr)
        return 1


def _check(path: Path, args: argparse.Namespace) -> int:
    """`ok` on stdout (warnings on stderr), or the verdicts of --explain."""
    config = load_config(path)
    for warning in config.warnings:
        print(warning, file=sys.stderr)
    if args.explain is None:
        if args.words or args.path:
            raise RadminError("COMMAND and --path need --explain CLIENT")
        print("ok")
        return 0
    from radmin import explain

    client = config.client_named(args.explain)
    if client is None:
        raise RadminError(f"no client named {args.explain!r} in {config.path}")
    if args.words and args.path:
        raise RadminError("give either -- COMMAND... or --path PATH, not both")
    if args.words:
        allowed, line = explain.explain_command(client, args.words)
        print(line)
        return 0 if allowed else 1
    if args.path:
        allowed, lines = explain.explain_path(client, args.path)
        print("\n".join(lines))
        return 0 if allowed else 1
    print("\n".join(explain.describe(client)))
    return 0


# What `init` creates, whatever the umask: a folder others may enter but not change (like
# /etc/ssh), and a config others may not read (it names clients and what they may do).
# The key is 0600 (radmin.identity).
INIT_DIR_MODE = 0o755
CONFIG_FILE_MODE = 0o640


def _init(folder: Path, force: bool) -> int:
    from radmin.identity import create_identity

    folder.mkdir(mode=INIT_DIR_MODE, parents=True, exist_ok=True)
    server_fp = create_identity(folder / "server.key", folder / "server.crt", "radmind", force)
    config = folder / "radmind.yaml"
    if _create_file(config, example_yaml(client_example=False), CONFIG_FILE_MODE):
        print(f"wrote {config}")
    print(f"wrote {folder / 'server.key'} and {folder / 'server.crt'}")
    print(f"server fingerprint: {server_fp}")
    return 0


def _create_file(path: Path, text: str, mode: int) -> bool:
    """Create `path` with at most `mode`; False if it exists (an admin's file is never
    overwritten, and O_EXCL leaves no window between checking and creating)."""
    import os

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return True


def _run(path: Path, detach: bool, pidfile: str | None) -> int:
    config = load_config(path)
    if not detach:
        _start(config)()
        return 0
    from radmin.daemonize import run_detached

    if not pidfile:
        raise RadminError("--detach needs --pidfile PATH")
    if config.log.file is None:
        raise RadminError(
            f"--detach needs log.file in {config.path}: a detached daemon has no terminal"
        )
    return run_detached(Path(pidfile).absolute(), lambda: _start(config))


def _start(config) -> Callable[[], None]:
    """Load identities, make folders, bind every listener, start serving; return the
    signal loop. A step that fails raises StartupError (a RadminError) naming what
    failed: `cannot listen on 127.0.0.1:7420: Address already in use`."""
    from radmin.daemon import Daemon

    daemon = Daemon(config)
    daemon.bind()
    daemon.install_signal_handlers()
    daemon.serve()
    return daemon.run_until_stopped


if __name__ == "__main__":
    sys.exit(main())
