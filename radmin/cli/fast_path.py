"""radmin-cli's console script: the plain `exec HOST COMMAND...` and `ping HOST` read
without argparse, everything else handed to the full parser; then a quick exit.

`radmin-cli exec` competes with `ssh` on start-up time, and a cold start is mostly
fixed costs: importing argparse and building its tree of five subcommands (which also
imports shutil, bz2, lzma and gettext's locale look-ups) is about 10 ms, and the
interpreter's orderly shutdown (module teardown, a last garbage collection) another
10 ms. So this module:

  * disables the cyclic garbage collector while modules are imported and the command
    line is read (radmin_cli.main turns it back on before any host is contacted: a
    long fan-out must not grow without bound);
  * reads `exec [-n] [-t SECONDS] [--mux] HOST COMMAND...` and `ping HOST` itself -- nothing
    else. A word it does not know, an option after HOST, `--`, a bad number: the full
    parser takes the whole command line, so its error messages and its rules (options
    after HOSTS, as ssh) stay the only ones. tests/test_cold_start.py checks that both
    readings give the same Namespace, for every form read here;
  * answers `--version` without importing anything;
  * after the command, flushes stdout and stderr and leaves with os._exit. Every file
    radmin-cli writes (known_hosts, digests, identity) is closed by then by its `with`
    block; only the interpreter's teardown is skipped. A traceback or a usage error
    (SystemExit from argparse) still exits the ordinary way.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import SimpleNamespace
    from typing import NoReturn

# The full parser's defaults for what the plain forms leave out: keep them equal to
# radmin/cli/command_line.py (tests/test_cold_start.py compares the two).
_FANOUT_DEFAULTS: dict[str, object] = {
    "parallel": 32,
    "json": False,
    "verbose": False,
    "run_id": None,
    "strict_host_key": False,
    "host_fingerprint": None,
    "connect_timeout": 10.0,  # radmin.DEFAULT_CONNECT_TIMEOUT
    "heartbeat_interval": None,  # config.yaml's, else radmin.protocol.HEARTBEAT_INTERVAL
    "mux": False,  # config.yaml's mux decides (radmin/cli/fanout_commands.py)
    "home": None,
    "exclude": None,
    "retry": 0,
}
_EXEC_DEFAULTS: dict[str, object] = {
    "timeout": None,
    "cwd": None,
    "env": [],
    "no_stdin": False,
    "gather": False,
    "batch": None,
    "max_fail": None,
}


def entry() -> NoReturn:
    """The `radmin-cli` console script."""
    import gc

    gc.disable()  # during start-up; radmin_cli.main enables it again
    argv = sys.argv[1:]
    if argv == ["--version"]:
        from radmin import __version__

        try:
            if sys.stdout is not None:  # started with stdout closed (`>&-`): say nothing
                sys.stdout.write(f"radmin-cli {__version__}\n")
        except BrokenPipeError:
            _exit(141)
        _exit(0)
    from radmin.cli.radmin_cli import main

    _exit(main(argv, parsed=plain_command(argv)))


def plain_command(argv: list[str]) -> SimpleNamespace | None:
    """The parsed command line if it is one of the plain forms, else None."""
    if len(argv) == 2 and argv[0] == "ping" and _operand(argv[1]):
        return _namespace("ping", hosts=argv[1])
    if not argv or argv[0] != "exec":
        return None
    options = dict(_EXEC_DEFAULTS)
    words = argv[1:]
    while words and words[0] in ("-n", "-t", "--mux"):
        if words[0] in ("-n", "--mux"):
            options["no_stdin" if words[0] == "-n" else "mux"] = True
            words = words[1:]
            continue
        if len(words) < 2 or (seconds := _seconds(words[1])) is None:
            return None
        options["timeout"] = seconds
        words = words[2:]
    # HOST, then COMMAND whose first word cannot be an option (they may follow HOSTS).
    if len(words) < 2 or not _operand(words[0]) or not _operand(words[1]):
        return None
    return _namespace("exec", **options, hosts=words[0], command=words[1:])


def _operand(word: str) -> bool:
    return bool(word) and not word.startswith("-")


def _seconds(text: str) -> float | None:
    """As command_line's -t type: a finite number above 0; None: let argparse say why."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 < value < float("inf") else None


def _namespace(subcommand: str, **values: object) -> SimpleNamespace:
    from types import SimpleNamespace  # loaded at start-up already (enum, functools)

    return SimpleNamespace(subcommand=subcommand, **{**_FANOUT_DEFAULTS, **values})


def _exit(status: int) -> NoReturn:
    """Flush what we printed, then leave without the interpreter's teardown. A reader
    that went away (`| head`) makes it 141, as radmin_cli.main does."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except BrokenPipeError:
            status = status or 141
        except OSError:
            status = status or 120  # what the interpreter itself exits with
    os._exit(status)
