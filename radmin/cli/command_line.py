"""radmin-cli's command line: the parser, and options that may follow HOSTS as with ssh.

Kept apart from what the commands do, so the rule for which word is an option and
which starts COMMAND can be read (and tested) in one place.
"""

from __future__ import annotations

import argparse

from radmin import DEFAULT_CONNECT_TIMEOUT, RUN_ID_PATTERN, __version__

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (`-t 0` would kill at once, `-t -1` is a typo)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def _heartbeat(text: str) -> float:
    """Seconds between heartbeats: at least the protocol's shortest interval."""
    from radmin.protocol import MIN_HEARTBEAT_INTERVAL

    value = _seconds(text)
    if value < MIN_HEARTBEAT_INTERVAL:
        raise argparse.ArgumentTypeError(
            f"expected at least {MIN_HEARTBEAT_INTERVAL:g} seconds, got {text!r}"
        )
    return value


def _fingerprint_arg(text: str) -> str:
    """`SHA256:` and 43 characters of unpadded base64, as `radmind fingerprint` prints."""
    import re

    if not re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a fingerprint: expected SHA256: and 43 base64 characters, "
            "as 'radmind fingerprint' prints it"
        )
    return text


def _run_id_arg(text: str) -> str:
    import re

    if not re.fullmatch(RUN_ID_PATTERN, text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a run id is 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return text


def _octal(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 644") from None
    if not 0 <= mode <= 0o7777:
        raise argparse.ArgumentTypeError(f"{text!r} is outside 0000-7777")
    return mode


def _share(minimum: int) -> Any:
    """A `N` or `N%` option value (--batch, --max-fail) as (N, is_percent); the count
    it means is known once the hosts are (radmin.fanout.share_of)."""

    def parse(text: str) -> tuple[int, bool]:
        number, percent = (text[:-1], True) if text.endswith("%") else (text, False)
        if not number.isdigit() or int(number) < minimum or (percent and int(number) > 100):
            limit = f"{minimum}-100%" if minimum else "0-100%"
            raise argparse.ArgumentTypeError(
                f"expected a whole number of at least {minimum}, or a percentage "
                f"({limit}), got {text!r}"
            )
        return int(number), percent

    return parse


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number (0 or more), got {text!r}")
    return int(text)


def _home_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--home", metavar="DIR", help="client home (identity, known_hosts)")


def _fanout_options(sub: argparse.ArgumentParser, rolling: bool = True) -> None:
    """The options of every command that talks to HOSTS; `rolling`: also those of the
    fan-out commands that change hosts (exec, put, get): --batch, --max-fail, --retry.
    interface.md, "Options of every fan-out command"."""
    sub.add_argument(
        "-x",
        "--exclude",
        metavar="HOSTS",
        help="leave these hosts out (same syntax as HOSTS, e.g. web[3-4],@db)",
    )
    if rolling:
        sub.add_argument(
            "--batch",
            type=_share(1),
            metavar="N|N%",
            help="run the hosts in consecutive batches of N (or N%% of them), as "
            "Ansible's serial; the next batch starts when the previous one has ended",
        )
        sub.add_argument(
            "--max-fail",
            type=_share(0),
            metavar="N|N%",
            help="once more hosts than this have failed, start no more (default 0 with "
            "--batch); the hosts never started are reported as skipped",
        )
    sub.add_argument(
        "--retry",
        type=_count,
        default=0,
        metavar="N",
        help="retry a host up to N times when it cannot be reached "
        "(never a request the host may have started)",
    )
    sub.add_argument(
        "-p",
        "--parallel",
        type=_positive_int,
        default=32,
        metavar="N",
        help="hosts at once (default 32)",
    )
    sub.add_argument("--json", action="store_true", help="one JSON object per host per line")
    sub.add_argument(
        "-v", "--verbose", action="store_true", help="print the run id and the hosts on stderr"
    )
    sub.add_argument(
        "--run-id",
        type=_run_id_arg,
        metavar="ID",
        help="this run's id in every daemon's log (default: 12 random hex characters)",
    )
    _connection_options(sub)


def _connection_options(sub: argparse.ArgumentParser) -> None:
    """How to reach and trust a host: every command that connects (fan-out or shell)."""
    sub.add_argument(
        "--strict-host-key", action="store_true", help="refuse hosts not in known_hosts"
    )
    sub.add_argument(
        "--host-fingerprint",
        type=_fingerprint_arg,
        metavar="SHA256:...",
        help="accept only this daemon fingerprint",
    )
    sub.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up on a host after this long (default {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    sub.add_argument(
        "--heartbeat-interval",
        type=_heartbeat,
        metavar="SECONDS",
        help="send a heartbeat after this long without sending; a host silent for three "
        "intervals is dead (default: config.yaml's heartbeat_interval, else 10)",
    )
    sub.add_argument(
        "--mux",
        action="store_true",
        help="connect through this home's helper (radmin-cli mux), starting it if none "
        "runs (default: config.yaml's mux, else a direct connection)",
    )
    _home_option(sub)


HOSTS_HELP = "host[:port],alias,@group,..."


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="radmin-cli",
        description="radmin client: run commands, upload and download files over mTLS",
    )
    parser.add_argument("--version", action="version", version=f"radmin-cli {__version__}")
    commands = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)

    keygen = commands.add_parser("keygen", help="create this client's identity")
    keygen.add_argument("--force", action="store_true", help="replace an existing identity")
    _home_option(keygen)
    fingerprint = commands.add_parser("fingerprint", help="print this client's fingerprint")
    fingerprint.add_argument(
        "--paste", action="store_true", help="print keygen's block for the daemon's clients:"
    )
    _home_option(fingerprint)

    ping = _subcommand(
        commands, "ping", "authenticated round trip to each host", "radmin-cli ping [OPTIONS] HOSTS"
    )
    _fanout_options(ping, rolling=False)
    ping.add_argument("hosts", metavar="HOSTS", help=HOSTS_HELP)

    run = commands.add_parser(
        "exec",
        help="run a shell command on each host",
        usage="radmin-cli exec [OPTIONS] HOSTS [OPTIONS] COMMAND...",
        epilog="Options may also follow HOSTS, as with ssh: the first word after HOSTS "
        "that is not one of these options (or everything after --) starts COMMAND.",
        allow_abbrev=False,
    )
    run.add_argument(
        "-t",
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="kill the command's process group after this long (exit 143)",
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
    run.add_argument("-n", dest="no_stdin", action="store_true", help="send no stdin")
    run.add_argument(
        "-b",
        "--gather",
        action="store_true",
        help="wait for every host, then print each distinct output once under the hosts "
        "that produced it (clush -b, dshbak -c)",
    )
    _fanout_options(run)
    run.add_argument("hosts", metavar="HOSTS", help=HOSTS_HELP)
    run.add_argument("command", nargs="*", metavar="COMMAND", help="run with /bin/sh -c")

    put = _subcommand(
        commands,
        "put",
        "upload a file to each host, atomically and verified",
        "radmin-cli put [OPTIONS] FILE HOSTS [REMOTE_PATH]",
    )
    put.add_argument(
        "--mode",
        type=_octal,
        metavar="OCTAL",
        help="file mode (default: an existing file keeps its own; a new one gets the "
        "local file's bits)",
    )
    put.add_argument("--owner", metavar="USER", help="owner on the host")
    put.add_argument("--group", metavar="GROUP", help="group on the host")
    _fanout_options(put)
    put.add_argument("file", metavar="FILE")
    put.add_argument("hosts", metavar="HOSTS", help=HOSTS_HELP)
    put.add_argument(
        "remote_path",
        metavar="REMOTE_PATH",
        nargs="?",
        help="absolute; ending in / = inside that folder; default: the daemon's put.default_dir",
    )
    get = _get_parser(commands)
    shell = _shell_parser(commands)
    _mux_parser(commands)  # no operands: argparse alone reads it
    return parser, {"ping": ping, "exec": run, "put": put, "get": get, "shell": shell}


def _get_parser(commands: Any) -> argparse.ArgumentParser:
    get = _subcommand(
        commands,
        "get",
        "download a file from each host, atomically and verified",
        "radmin-cli get [OPTIONS] HOSTS REMOTE_PATH [LOCAL_PATH]",
    )
    _fanout_options(get)
    get.add_argument("hosts", metavar="HOSTS", help=HOSTS_HELP)
    get.add_argument("remote_path", metavar="REMOTE_PATH", help="absolute path of the file")
    get.add_argument(
        "local_path",
        metavar="LOCAL_PATH",
        nargs="?",
        help="one host: the local file, or a folder to land in (default: the base name "
        "here); several hosts: the folder holding HOST/BASENAME (default: .)",
    )
    return get


def _subcommand(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str, usage: str
) -> argparse.ArgumentParser:
    """A command that talks to daemons: its own usage line, and no abbreviated options
    (a prefix that is unique today would silently change meaning when an option is added)."""
    return commands.add_parser(name, help=help, usage=usage, allow_abbrev=False)


def _shell_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """`shell [OPTIONS] HOST`: one host, so none of the fan-out's -p, --json."""
    shell = _subcommand(
        commands,
        "shell",
        "interactive login shell on one host, on a real PTY (like ssh -t)",
        "radmin-cli shell [OPTIONS] HOST",
    )
    shell.add_argument(
        "-v", "--verbose", action="store_true", help="print the run id and the host on stderr"
    )
    shell.add_argument(
        "--run-id", type=_run_id_arg, metavar="ID", help="this session's id in the daemon's log"
    )
    _connection_options(shell)
    shell.add_argument("hosts", metavar="HOST", help="host[:port] or alias")
    return shell


def _mux_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """`mux`: the client home's connection helper (radmin/mux), ssh's ControlPersist."""
    mux = _subcommand(
        commands,
        "mux",
        "keep daemon connections open between runs, in the foreground (ControlPersist)",
        "radmin-cli mux [--idle-timeout SECONDS | --stop | --status] [--home DIR]",
    )
    mux.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=60.0,  # radmin.mux.DEFAULT_IDLE_TIMEOUT
        metavar="SECONDS",
        help="exit after this long with no client (default 60, as ControlPersist=60s)",
    )
    which = mux.add_mutually_exclusive_group()
    which.add_argument("--stop", action="store_true", help="end this home's running helper")
    which.add_argument(
        "--status", action="store_true", help="say whether a helper runs (exit 0) or not (1)"
    )
    _home_option(mux)
    return mux


# Commands whose options may come after their operands; exec's COMMAND starts after HOSTS.
_OPERANDS_BEFORE_COMMAND = {"exec": 1, "put": None, "ping": None, "get": None, "shell": None}


def parse(argv: list[str]) -> argparse.Namespace:
    """argparse, after sorting a fan-out command's words into options and operands.

    As with ssh, radmin's options may follow HOSTS: `exec @web -p 50 systemctl
    is-active nginx`. For exec, the first word after HOSTS that is not one of its
    options starts COMMAND, and COMMAND's words are never parsed (`exec web1 ls -l`);
    `--` ends the options anywhere.
    """
    parser, subcommands = _parser()
    if not argv or argv[0] not in subcommands:
        return parser.parse_args(argv)
    name = argv[0]
    options, operands, command = _sort_words(
        subcommands[name], argv[1:], _OPERANDS_BEFORE_COMMAND[name]
    )
    args = parser.parse_args([name, *options, "--", *operands])
    if name == "exec":
        args.command = command
    return args


def _sort_words(
    sub: argparse.ArgumentParser, words: list[str], operands_before_command: int | None
) -> tuple[list[str], list[str], list[str]]:
    """(option words, operands, command words) of a subcommand's arguments.

    An option is a word `sub` knows, with its value if it takes one; before the command,
    a word that only looks like an option counts as one too (argparse then reports it).
    """
    options: list[str] = []
    operands: list[str] = []
    rest = list(words)
    while rest:
        word = rest.pop(0)
        if word == "--":
            operands += rest
            break
        values = _option_words(sub, word)
        if values is None:
            if operands_before_command is not None and len(operands) >= operands_before_command:
                operands += [word, *rest]  # the command: this word and all after it
                break
            if not word.startswith("-") or word == "-":
                operands.append(word)
                continue
        taken = values or 0
        options += [word, *rest[:taken]]
        del rest[:taken]
    split = len(operands) if operands_before_command is None else operands_before_command
    return options, operands[:split], operands[split:]


def _option_words(sub: argparse.ArgumentParser, word: str) -> int | None:
    """None if `word` is not one of `sub`'s options, else how many words follow it
    as its value (0 or 1): `--json`, `--timeout 5`, `--timeout=5`, `-t5`, `-nv`."""
    actions = sub._option_string_actions
    if word.startswith("--"):
        name, has_value, _ = word.partition("=")
        action = actions.get(name)
        if action is None:
            return None
        return 0 if has_value or action.nargs == 0 else 1
    if not word.startswith("-") or len(word) < 2:
        return None
    for position, letter in enumerate(word[1:], 2):  # -nv: flags; -t5: a value attached
        action = actions.get("-" + letter)
        if action is None:
            return None
        if action.nargs != 0:
            return 0 if position < len(word) else 1
    return 0
