"""`radmin-cli`: the entry point and its exit statuses.

The work is elsewhere: radmin/cli/command_line.py reads the command line,
radmin/cli/fanout_commands.py runs ping, exec, put and get over HOSTS (radmin.fanout gives
one typed outcome per host), radmin.client talks to one daemon. Start-up time matters
(`radmin-cli exec` competes with `ssh`): modules are imported by the command that needs
them, and `typing` never at run time.
"""

from __future__ import annotations

import os
import sys

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

    from radmin.fanout import HostOutcome
    from radmin.identity import ClientHome

# -- exit statuses ------------------------------------------------------------------------
# README.md's table "Exit statuses of radmin-cli" is this one. host_status() and
# exit_status() are the only places a status is chosen from what happened on the hosts.

EXIT_OK = 0
EXIT_FAILED = 1  # put/get refused or failed (or a local file); several hosts: some failed
EXIT_USAGE = 2
EXIT_REFUSED = 126  # exec refused or not started on the host: the shell's "cannot execute"
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT
EXIT_OUTPUT_CLOSED = 141  # our stdout's reader went away (`| head`): 128 + SIGPIPE, as bash
EXIT_TIMED_OUT = 143  # exec -t expired: 128 + SIGTERM, however the command then died
EXIT_TRANSPORT = 255  # not reached, authenticated or spoken to; a local error (ssh's 255)


def host_status(op: str, outcome: HostOutcome) -> int:
    """The exit status one host's outcome means (radmin-cli's own with one host)."""
    from radmin.client import ExecResult
    from radmin.fanout import CANCELLED, CRASHED, FAILED, SKIPPED, SUCCESS, UNREACHABLE

    kind, result = outcome.kind, outcome.result
    if kind in SUCCESS:
        return EXIT_OK
    if kind in (UNREACHABLE, CRASHED):
        return EXIT_TRANSPORT
    if kind in (CANCELLED, SKIPPED):
        return EXIT_INTERRUPTED
    if op != "exec":
        return EXIT_FAILED
    if kind == FAILED and isinstance(result, ExecResult):  # the command ran: its status
        return EXIT_TIMED_OUT if result.timed_out else result.status
    return EXIT_REFUSED


def exit_status(op: str, outcomes: Sequence[HostOutcome], stopped: str | None) -> int:
    """radmin-cli's exit status. One host: its own. Several: 0 if every host succeeded,
    255 if any was unreachable, else 1. A run stopped by Ctrl-C is 130, and one whose
    stdout went away 141 (quietly, as a pipeline's writer), whatever the hosts did."""
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


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None, parsed: Any = None) -> int:
    """radmin-cli. `parsed`: the command line already read by radmin/cli/fast_path.py
    (its plain forms), else None: argparse reads `argv`."""
    from radmin.identity import ClientHome

    if parsed is None:
        from radmin.cli.command_line import parse

        parsed = parse(sys.argv[1:] if argv is None else argv)
    args = parsed
    home = ClientHome.resolve(args.home)
    try:
        command = _command(args.subcommand)
        import gc

        gc.enable()  # fast_path.entry() disables it while modules are imported
        return command(args, home)
    except UsageError as exc:
        error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:  # before a fan-out's own Ctrl-C handler is in place
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # our reader went away (| head): quietly, like a shell tool
        silence(sys.stdout)
        return EXIT_OUTPUT_CLOSED
    except OSError as exc:  # a local file or resource: one line naming it, no traceback
        error(os_error(exc))
        return EXIT_TRANSPORT


def _command(name: str) -> Any:
    if name in ("ping", "exec", "put", "get"):
        from radmin.cli import fanout_commands

        return getattr(fanout_commands, f"{name}_command")
    if name == "shell":
        from radmin.cli.shell_command import shell_command

        return shell_command
    if name == "mux":
        from radmin.cli.mux_command import mux_command

        return mux_command
    return {"keygen": _keygen, "fingerprint": _fingerprint}[name]


def os_error(exc: OSError) -> str:
    """`FILE: reason` for an OSError, or the reason alone if it names no file."""
    if exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc.strerror or exc)


def silence(stream: Any) -> None:
    """Point a stream whose reader went away at /dev/null: nothing is reported at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


def stderr_line(text: str) -> None:
    """One line on stderr, in one write (lines from a fan-out's threads never
    interleave); a stderr nobody reads any more is not an error of ours."""
    if sys.stderr is None:  # closed before we started (`2>&-`)
        return
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except BrokenPipeError:
        silence(sys.stderr)


def error(message: str) -> None:
    stderr_line(f"radmin-cli: {message}")


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
    from radmin.errors import RadminError
    from radmin.identity import create_identity

    try:
        client_fp = create_identity(home.key, home.cert, "radmin-cli", args.force)
    except RadminError as exc:
        error(str(exc))
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


def _paste_block(home: ClientHome) -> str:
    """This client's entry for the daemon's `clients:`: the certificate inline and the
    least-privilege rules; the same text from keygen and from `fingerprint --paste`."""
    pem = home.cert.read_text().strip().replace("\n", "\n        ")
    return f"  {_client_name()}:\n    cert: |\n        {pem}\n{ALLOW_EXAMPLE}"


def _fingerprint(args: argparse.Namespace, home: ClientHome) -> int:
    from radmin.identity import cert_file_fingerprint

    try:
        client_fp = cert_file_fingerprint(home.cert)
    except FileNotFoundError:
        error(f"no client identity in {home.path}: run 'radmin-cli keygen' first")
        return EXIT_FAILED
    except ValueError as exc:
        error(f"{home.cert}: {exc}")
        return EXIT_FAILED
    if args.paste:
        sys.stdout.write(_paste_block(home))
    else:
        print(client_fp)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
