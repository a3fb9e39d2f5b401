"""`radmin-cli`: argument parsing, printing and exit statuses; the work is in radmin.client
(one host) and radmin.fanout (many hosts, one typed outcome each).

Start-up time matters here (`radmin-cli exec` competes with `ssh`): heavy modules are
imported inside the command that needs them, and `typing` never at run time.
"""

from __future__ import annotations

import argparse
import os
import sys

from radmin import __version__

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from radmin.client import ClientOptions
    from radmin.fanout import Cancellation, HostOutcome, SharedOutput
    from radmin.hosts import Target
    from radmin.identity import ClientHome

# -- exit statuses ------------------------------------------------------------------------
# The README's table "Exit statuses of radmin-cli" is this one; exit_status() below is
# the only place a status is chosen from what happened on the hosts.

EXIT_OK = 0
EXIT_FAILED = 1  # put refused or failed (or its local FILE); several hosts: some failed
EXIT_USAGE = 2
EXIT_REFUSED = 126  # exec refused or could not start on the host: the shell's "cannot execute"
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT
EXIT_OUTPUT_CLOSED = 141  # our stdout's reader went away (`| head`): 128 + SIGPIPE, as bash says
EXIT_TIMED_OUT = 143  # exec -t expired: 128 + SIGTERM, however the command then died
EXIT_TRANSPORT = 255  # a host not reached, authenticated or spoken to (ssh's 255)


def host_status(op: str, outcome: HostOutcome) -> int:
    """The exit status one host's outcome means (radmin-cli's own with one host)."""
    from radmin.fanout import CANCELLED, CRASHED, FAILED, SKIPPED, SUCCESS, UNREACHABLE

    kind, result = outcome.kind, outcome.result
    if kind in SUCCESS:
        return EXIT_OK
    if kind in (UNREACHABLE, CRASHED):
        return EXIT_TRANSPORT
    if kind in (CANCELLED, SKIPPED):
        return EXIT_INTERRUPTED
    if kind == FAILED and result is not None and op == "exec":
        return EXIT_TIMED_OUT if result.timed_out else result.status
    return EXIT_REFUSED if op == "exec" else EXIT_FAILED


def exit_status(op: str, outcomes: Sequence[HostOutcome], stopped: str | None) -> int:
    """radmin-cli's exit status. One host: its own. Several: 0 if every host succeeded,
    255 if any was unreachable, else 1. A run stopped by Ctrl-C is 130, one whose stdout
    went away 141, whatever the hosts did."""
    from radmin.fanout import INTERRUPTED, OUTPUT_CLOSED

    if stopped == INTERRUPTED:
        return EXIT_INTERRUPTED
    if stopped == OUTPUT_CLOSED:
        return EXIT_OUTPUT_CLOSED
    statuses = [host_status(op, outcome) for outcome in outcomes]
    if len(statuses) == 1:
        return statuses[0]
    if all(status == EXIT_OK for status in statuses):
        return EXIT_OK
    return EXIT_TRANSPORT if EXIT_TRANSPORT in statuses else EXIT_FAILED


class UsageError(Exception):
    """A command line radmin-cli cannot act on (exit 2), found after argparse's checks."""


# -- the command line ---------------------------------------------------------------------


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

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", text):
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


def _home_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--home", metavar="DIR", help="client home (identity, known_hosts)")


def _fanout_options(sub: argparse.ArgumentParser) -> None:
    """The options of every command that talks to HOSTS."""
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
        default=10.0,
        metavar="SECONDS",
        help="give up on a host after this long (default 10)",
    )
    _home_option(sub)


HOSTS_HELP = "host[:port],alias,@group,..."


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="radmin-cli", description="radmin client: run commands and upload files over mTLS"
    )
    parser.add_argument("--version", action="version", version=f"radmin-cli {__version__}")
    commands = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)

    keygen = commands.add_parser("keygen", help="create this client's identity")
    keygen.add_argument("--force", action="store_true", help="replace an existing identity")
    _home_option(keygen)
    _home_option(commands.add_parser("fingerprint", help="print this client's fingerprint"))

    ping = commands.add_parser(
        "ping",
        help="authenticated round trip to each host",
        usage="radmin-cli ping [OPTIONS] HOSTS",
        allow_abbrev=False,
    )
    _fanout_options(ping)
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
    _fanout_options(run)
    run.add_argument("hosts", metavar="HOSTS", help=HOSTS_HELP)
    run.add_argument("command", nargs="*", metavar="COMMAND", help="run with /bin/sh -c")

    put = commands.add_parser(
        "put",
        help="upload a file to each host, atomically and verified",
        usage="radmin-cli put [OPTIONS] FILE HOSTS [REMOTE_PATH]",
        allow_abbrev=False,
    )
    put.add_argument(
        "--mode",
        type=_octal,
        metavar="OCTAL",
        help="file mode (default: the local file's permission bits)",
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
    return parser, {"ping": ping, "exec": run, "put": put}


# Commands whose options may come after their operands; exec's COMMAND starts after HOSTS.
_OPERANDS_BEFORE_COMMAND = {"exec": 1, "put": None, "ping": None}


def _parse(argv: list[str]) -> argparse.Namespace:
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
    """(option words, operands, command words) of a subcommand's arguments."""
    options: list[str] = []
    operands: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            operands += words[index + 1 :]
            break
        taken = _option_words(sub, word)
        in_command = operands_before_command is not None and len(operands) >= (
            operands_before_command
        )
        if taken is None and (in_command or not word.startswith("-") or word == "-"):
            if in_command:
                operands += words[index:]
                break
            operands.append(word)
            index += 1
            continue
        taken = 1 + (taken or 0)  # an unknown option: argparse reports it
        options += words[index : index + taken]
        index += taken
    if operands_before_command is None:
        return options, operands, []
    return options, operands[:operands_before_command], operands[operands_before_command:]


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


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
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
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:  # before a fan-out's own handler is in place
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # our reader went away (| head): quietly, like a shell tool
        _silence(sys.stdout)
        return EXIT_OUTPUT_CLOSED
    except OSError as exc:  # a local file: one line naming it, never a traceback
        _error(_os_error(exc))
        return EXIT_TRANSPORT


def _os_error(exc: OSError) -> str:
    if exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc.strerror or exc)


def _silence(stream: Any) -> None:
    """Point a stream whose reader went away at /dev/null: nothing is reported at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


def _error(message: str) -> None:
    """`radmin-cli: message` on stderr, in one write (threads' lines never interleave);
    a stderr nobody reads any more is not an error of ours."""
    try:
        sys.stderr.write(f"radmin-cli: {message}\n")
        sys.stderr.flush()
    except BrokenPipeError:
        _silence(sys.stderr)


# -- keygen and fingerprint ---------------------------------------------------------------

# The allow: rules keygen suggests: least privilege, so that pasting them as they are
# grants a few harmless things, never everything. docs/install.md shows the same lines.
ALLOW_EXAMPLE = """\
    allow:
      # Least privilege: list only what this client needs. "*" would allow any shell
      # command, run as run_as (without run_as: as the daemon's user, usually root).
      exec: ["uptime", "systemctl status *"]
      put: ["/var/tmp/radmin/**"]
"""


def _keygen(args: argparse.Namespace, home: ClientHome) -> int:
    import getpass
    import socket

    from radmin.errors import RadminError
    from radmin.identity import create_identity

    try:
        client_fp = create_identity(home.key, home.cert, "radmin-cli", args.force)
    except RadminError as exc:
        _error(str(exc))
        return EXIT_FAILED
    name = f"{getpass.getuser()}@{socket.gethostname().split('.')[0]}"
    pem = home.cert.read_text().strip().replace("\n", "\n        ")
    print(f"Created {home.key} (mode 0600) and {home.cert}")
    print(f"Fingerprint: {client_fp}")
    print()
    print("To authorize this client, add these lines under clients: in the daemon's radmind.yaml")
    print("(adjust the allow: rules), then reload it (systemctl reload radmind):")
    print()
    print(f"  {name}:")
    print("    cert: |")
    print(f"        {pem}")
    print(ALLOW_EXAMPLE, end="")
    print()
    print(f"Or copy {home.cert} to the daemon host and write  cert: clients/{name}.crt")
    return EXIT_OK


def _fingerprint(args: argparse.Namespace, home: ClientHome) -> int:
    from radmin.identity import cert_file_fingerprint

    try:
        print(cert_file_fingerprint(home.cert))
    except FileNotFoundError:
        _error(f"no client identity in {home.path}: run 'radmin-cli keygen' first")
        return EXIT_FAILED
    except ValueError as exc:
        _error(f"{home.cert}: {exc}")
        return EXIT_FAILED
    return EXIT_OK


# -- fan-out commands ---------------------------------------------------------------------


class Run:
    """One invocation of ping, exec or put: its hosts, run id, client options, output
    streams and what stops it (Ctrl-C, or our stdout's reader going away)."""

    def __init__(self, args: argparse.Namespace, home: ClientHome):
        import threading

        from radmin.client import ClientOptions
        from radmin.fanout import Cancellation, SharedOutput

        self.args = args
        self.targets = _resolve_hosts(args.hosts, home)
        self.several = len(self.targets) > 1
        self.run_id = args.run_id or os.urandom(6).hex()
        self.stop: Cancellation = Cancellation()
        _stop_on_sigint(self.stop)
        self.out: SharedOutput = SharedOutput(sys.stdout.buffer, self._output_closed)
        self.options: ClientOptions = ClientOptions(
            home,
            strict_host_key=args.strict_host_key,
            host_fingerprint=args.host_fingerprint,
            connect_timeout=args.connect_timeout,
            warn=_error_line,
            cancel_fd=self.stop.fd,
            run_id=self.run_id,
        )
        self.warned_host_key = threading.Event()
        if args.verbose:
            self.tell_run_id()

    def _output_closed(self) -> None:
        from radmin.fanout import OUTPUT_CLOSED

        self.stop.cancel(OUTPUT_CLOSED)

    def tell_run_id(self) -> None:
        from radmin.hosts import fold

        count = len(self.targets)
        hosts = f"{count} host{'s' if count > 1 else ''}"
        _error(f"run id {self.run_id}, {hosts}: {fold(t.label for t in self.targets)}")

    @property
    def quiet(self) -> bool:
        """Once our stdout is gone, say nothing more: a pipeline's writer just ends."""
        from radmin.fanout import OUTPUT_CLOSED

        return self.stop.reason == OUTPUT_CLOSED

    def identity_problem(self) -> str | None:
        """Load this client's identity once, before any host: a missing or unreadable
        key is one line, not one per host."""
        from radmin.errors import TransportError

        try:
            self.options.tls_context()
        except TransportError as exc:
            return str(exc)
        except OSError as exc:
            home = self.options.home
            return f"cannot load the client identity: {_unreadable(home.key, home.cert, exc)}"
        return None

    def report_failure(self, outcome: HostOutcome) -> None:
        """One line on stderr for a host that did not succeed; a changed host key's loud
        warning in full once, then briefly."""
        if self.quiet or outcome.error is None:
            return
        message = outcome.error
        if outcome.brief is not None:
            if self.warned_host_key.is_set():
                message = f"{outcome.brief} (see the warning above)"
            self.warned_host_key.set()
        _error(f"{outcome.target.label}: {message}")

    def fan_out(
        self,
        op: str,
        work: Callable[[Target], HostOutcome],
        report: Callable[[HostOutcome], None],
        before: HostOutcome | None = None,
    ) -> int:
        """Run `work` on every host, `report` each outcome as it comes, print the summary
        and choose the exit status. `before`: a failure found before any host was
        contacted (no identity, an unreadable FILE): every host gets it, said once."""
        from radmin.fanout import run_parallel

        if before is None:
            problem = self.identity_problem()
            if problem is not None:
                from radmin.fanout import UNREACHABLE, HostOutcome

                before = HostOutcome(None, UNREACHABLE, problem)
        if before is not None:
            outcomes = [before._replace(target=target) for target in self.targets]
            if self.args.json:
                for outcome in outcomes:
                    report(outcome)
            else:
                _error(before.error)
        else:
            outcomes = run_parallel(
                self.targets, work, self.args.parallel, self.stop, report=report
            )
        if self.several and not self.args.json and not self.quiet and before is None:
            from radmin.fanout import summary_line

            _stderr_line(summary_line(outcomes))
        return exit_status(op, outcomes, self.stop.reason)

    def json_line(self, record: dict[str, Any]) -> None:
        import json

        self.out.write(json.dumps({**record, "run_id": self.run_id}).encode() + b"\n")


def _unreadable(key: Any, cert: Any, exc: OSError) -> str:
    """Which identity file failed to load (OpenSSL does not say), and why."""
    for path in (key, cert):
        try:
            with open(path, "rb"):
                pass
        except OSError as file_exc:
            return f"{path}: {file_exc.strerror}"
    return f"{key}, {cert}: {getattr(exc, 'reason', None) or exc.strerror or exc}"


def _error_line(message: str) -> None:
    """A warning from radmin.client (a host added to known_hosts)."""
    _stderr_line(message)


def _stderr_line(text: str) -> None:
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except BrokenPipeError:
        _silence(sys.stderr)


def _resolve_hosts(spec: str, home: ClientHome) -> list[Target]:
    from radmin.hosts import HostSpecError, resolve_hosts

    try:
        return resolve_hosts(spec, home.config)
    except HostSpecError as exc:
        raise UsageError(str(exc)) from None


def _stop_on_sigint(stop: Cancellation) -> None:
    """First Ctrl-C stops the run (radmin.fanout.Cancellation: hosts not started are
    skipped, running commands cancelled, the daemons confirm); a second one exits at once."""
    import signal

    from radmin.fanout import INTERRUPTED

    pressed = []

    def on_sigint(signum: int, frame: Any) -> None:
        if pressed:
            os._exit(EXIT_INTERRUPTED)
        pressed.append(True)
        stop.cancel(INTERRUPTED)

    signal.signal(signal.SIGINT, on_sigint)


# The --json `status` of each outcome kind (interface.md: ok / failed / refused /
# unreachable / skipped); put says changed / unchanged / error instead.
def _json_status(kind: str) -> str:
    from radmin.fanout import CANCELLED, CRASHED

    return "failed" if kind in (CANCELLED, CRASHED) else kind


def _ping(args: argparse.Namespace, home: ClientHome) -> int:
    from radmin.fanout import SUCCESS, ping_on_host

    run = Run(args, home)

    def report(outcome: HostOutcome) -> None:
        result = outcome.result if outcome.kind in SUCCESS else None
        if args.json:
            run.json_line(
                {
                    "host": outcome.target.label,
                    "status": _json_status(outcome.kind),
                    "version": result.version if result else None,
                    "client": result.client if result else None,
                    "rtt_ms": round(result.rtt_s * 1000, 3) if result else None,
                    "error": outcome.error,
                }
            )
        elif result is not None:
            run.out.write(
                f"{outcome.target.label}: radmind {result.version} (protocol {result.protocol}), "
                f'known as "{result.client}", rtt {result.rtt_s * 1000:.2f} ms '
                f"(connect {result.connect_s * 1000:.1f} ms)\n".encode()
            )
        else:
            run.report_failure(outcome)

    return run.fan_out("ping", lambda target: ping_on_host(target, run.options), report)


def _parse_env(pairs: list[str]) -> dict[str, str]:
    import re

    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UsageError(
                f"-e {pair!r}: expected NAME=VALUE with NAME made of letters, digits and _"
            )
        env[name] = value
    return env


def _exec(args: argparse.Namespace, home: ClientHome) -> int:
    from radmin.fanout import LinePrefixer, SharedOutput, exec_on_host

    command = " ".join(args.command)
    if not command.strip():
        raise UsageError("exec: no COMMAND given")
    env = _parse_env(args.env)
    run = Run(args, home)
    err = SharedOutput(sys.stderr.buffer)
    exec_options = {
        "stdin": _exec_stdin(args.no_stdin, run.several),
        "cwd": args.cwd,
        "env": env,
        "timeout": args.timeout,
    }

    captured: dict[str, tuple[bytes, bytes]] = {}  # --json: each host's output

    def on_host(target: Target) -> HostOutcome:
        if args.json:
            out, errors = bytearray(), bytearray()
            try:
                return exec_on_host(
                    target, run.options, command, out.extend, errors.extend, **exec_options
                )
            finally:
                captured[target.label] = (bytes(out), bytes(errors))
        if not run.several:
            return exec_on_host(
                target, run.options, command, run.out.write, err.write, **exec_options
            )
        out, errors = LinePrefixer(target.label, run.out), LinePrefixer(target.label, err)
        try:
            return exec_on_host(target, run.options, command, out.feed, errors.feed, **exec_options)
        finally:
            out.close()
            errors.close()

    def report(outcome: HostOutcome) -> None:
        if args.json:
            run.json_line(_exec_record(outcome, *captured.get(outcome.target.label, (b"", b""))))
        elif outcome.result is not None and outcome.result.timed_out and not run.quiet:
            _error(f"{outcome.target.label}: {TIMED_OUT_MESSAGE}")
        else:
            run.report_failure(outcome)

    return run.fan_out("exec", on_host, report)


TIMED_OUT_MESSAGE = "timed out; the daemon killed the command's process group"


def _exec_stdin(no_stdin: bool, several: bool) -> bytes | int | None:
    """Our stdin for the command: none with -n or from a terminal (as ssh); streamed
    from fd 0 to one host; read once and copied to each of several hosts."""
    if no_stdin or sys.stdin is None or os.isatty(0):
        return None
    return sys.stdin.buffer.read() if several else 0


def _exec_record(outcome: HostOutcome, stdout: bytes, stderr: bytes) -> dict[str, Any]:
    """One host's `exec --json` object. Output that is not UTF-8 is given with U+FFFD
    replacements in `stdout`/`stderr` and exactly in `stdout_base64`/`stderr_base64`."""
    from radmin.fanout import FAILED, OK, REFUSED

    result = outcome.result
    timed_out = result is not None and result.timed_out
    record: dict[str, Any] = {
        "host": outcome.target.label,
        "status": _json_status(outcome.kind),
        "exit_code": host_status("exec", outcome)
        if outcome.kind in (OK, FAILED, REFUSED)
        else None,
        "stdout": stdout.decode("utf-8", "replace"),
        "stderr": stderr.decode("utf-8", "replace"),
        "duration_s": result.duration_s if result else None,
        "error": outcome.error or ("timed out" if timed_out else None),
    }
    for name, data in (("stdout", stdout), ("stderr", stderr)):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            import base64

            record[f"{name}_base64"] = base64.b64encode(data).decode()
    return record


def _human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _progress_bar(total: int, show: bool) -> Any:
    """A tqdm bar on stderr when it is a terminal; None otherwise (pipes, logs, --json)."""
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


def _put(args: argparse.Namespace, home: ClientHome) -> int:
    import threading

    from radmin.client import Cancelled
    from radmin.fanout import FAILED, SUCCESS, HostOutcome, put_on_host

    if args.remote_path is not None and not args.remote_path.startswith("/"):
        raise UsageError(f"REMOTE_PATH must be absolute, got {args.remote_path!r}")
    run = Run(args, home)
    try:
        size, digest = _local_file(args.file, run)
        before = None
    except OSError as exc:
        size, digest = 0, None
        before = HostOutcome(None, FAILED, _os_error(exc))
    bar = _progress_bar(size * len(run.targets), show=not args.json)
    bar_lock = threading.Lock()

    def progress(n: int) -> None:
        """After each frame sent: the bar, and Ctrl-C stops an upload mid-file."""
        if run.stop.is_set():
            raise Cancelled("cancelled")
        if bar is not None:
            with bar_lock:
                bar.update(n)

    def on_host(target: Target) -> HostOutcome:
        return put_on_host(
            target,
            run.options,
            args.file,
            args.remote_path,
            mode=args.mode,
            owner=args.owner,
            group=args.group,
            sha256=digest,
            progress=progress,
        )

    def report(outcome: HostOutcome) -> None:
        if bar is not None:
            with bar_lock:
                bar.clear()
        if args.json:
            run.json_line(_put_record(outcome, args.remote_path, digest))
        elif outcome.kind in SUCCESS:
            result = outcome.result
            run.out.write(
                f"{outcome.target.label}: {outcome.kind} {result.path} "
                f"({_human_size(size)}, sha256 {result.sha256[:12]}…)\n".encode()
            )
        else:
            run.report_failure(outcome)

    try:
        return run.fan_out("put", on_host, report, before)
    finally:
        if bar is not None:
            bar.close()


def _local_file(path: str, run: Run) -> tuple[int, str | None]:
    """FILE's size, and with several hosts its SHA-256 (hashed once for all; one host's
    is hashed while it is sent). Raises OSError naming FILE if it cannot be sent."""
    import errno
    import stat

    from radmin.hashing import file_sha256

    # Opened, not only stat()ed: an unreadable FILE fails here, once, naming it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", path)
    if not run.several:
        return info.st_size, None
    return info.st_size, file_sha256(path, run.options.digest_cache())


def _put_record(outcome: HostOutcome, path: str | None, sha256: str | None) -> dict[str, Any]:
    """One host's `put --json` object."""
    from radmin.fanout import SKIPPED, SUCCESS

    result = outcome.result if outcome.kind in SUCCESS else None
    status = outcome.kind if outcome.kind in SUCCESS or outcome.kind == SKIPPED else "error"
    return {
        "host": outcome.target.label,
        "status": status,
        "path": result.path if result else path,
        "bytes": result.bytes if result else 0,
        "sha256": result.sha256 if result else sha256,
        "duration_s": round(result.duration_s, 4) if result else None,
        "error": outcome.error,
    }


if __name__ == "__main__":
    sys.exit(main())
