"""radmin-cli's cold start stays small: which modules the real console script imports
(not wall time, which a busy machine makes meaningless), and the fast path's reading
of the plain forms is exactly the full parser's.

radmin-cli exec competes with ssh on start-up time (docs/performance.md); each module
named below costs milliseconds on every run, so one creeping back onto the start-up path
fails here rather than in the benchmark.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from support import RADMIN_CLI, cli_env

from radmin.cli.command_line import parse
from radmin.cli.fast_path import plain_command

# Never on the path of a plain exec: each is milliseconds, some tens of them.
HEAVY = {
    "argparse",  # and building its parser tree: the fast path reads the plain forms
    "asyncio",
    "concurrent",
    "cryptography",
    "dataclasses",
    "gettext",
    "hashlib",  # builds every algorithm's constructor at import; _hashlib is enough
    "inspect",
    "logging",
    "shutil",
    "stringprep",  # the idna codec, for a host name passed to getaddrinfo as str
    "structlog",
    "subprocess",
    "tempfile",
    "typing",
    "yaml",
}
# `--version` needs none of the network either.
NETWORK = {"ssl", "socket", "json", "select", "radmin.client", "radmin.protocol"}


def imported_by(argv: list[str], env: dict[str, str] | None = None) -> set[str]:
    """Modules the real radmin-cli script imports for `argv`, beyond the interpreter's
    own start-up (python -X importtime lists each module once, when first imported)."""

    def modules(args: list[str]) -> set[str]:
        done = subprocess.run(
            [sys.executable, "-X", "importtime", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \| *(\S+)$", done.stderr, re.M))

    return modules([RADMIN_CLI, *argv]) - modules(["-c", "pass"])


def test_version_imports_no_network_and_nothing_heavy():
    found = imported_by(["--version"])
    assert not found & (HEAVY | NETWORK), sorted(found & (HEAVY | NETWORK))


def test_plain_exec_imports_nothing_heavy(daemon, client_home):
    found = imported_by(["exec", daemon.address, "true"], env=cli_env(client_home))
    assert "radmin.client" in found  # it really ran
    assert not found & HEAVY, sorted(found & HEAVY)


def test_plain_ping_imports_nothing_heavy(daemon, client_home):
    found = imported_by(["ping", daemon.address], env=cli_env(client_home))
    assert not found & HEAVY, sorted(found & HEAVY)


@pytest.mark.parametrize(
    "argv",
    [
        ["exec", "web1", "true"],
        ["exec", "127.0.0.1:7420", "ls", "-l", "/tmp"],
        ["exec", "@web,db[1-3]", "systemctl", "is-active", "nginx"],
        ["exec", "-n", "web1", "uptime"],
        ["exec", "-t", "5", "web1", "sleep", "1"],
        ["exec", "-t", "0.5", "-n", "web1", "true"],
        ["exec", "-n", "-t", "1e3", "web1", "true"],
        ["exec", "--mux", "web1", "true"],
        ["exec", "-n", "--mux", "-t", "2", "web1", "true"],
        ["exec", "web1", "git", "log", "--", "README.md"],
        ["exec", "web1", "sh", "-c", "exit 3"],
        ["ping", "web1"],
        ["ping", "web[1-3],db"],
    ],
)
def test_plain_forms_read_as_the_full_parser_reads_them(argv):
    """The fast path's defaults are the parser's: an option added to command_line.py
    must be added to fast_path's defaults too, or this fails."""
    fast = plain_command(argv)
    assert fast is not None
    assert vars(fast) == vars(parse(argv))


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--version"],
        ["--help"],
        ["put", "f", "web1"],
        ["keygen"],
        ["exec"],
        ["exec", "web1"],  # no COMMAND: the full parser's error
        ["exec", "web1", "-t", "5", "true"],  # an option after HOSTS
        ["exec", "web1", "--", "true"],
        ["exec", "--json", "web1", "true"],
        ["exec", "-t", "0", "web1", "true"],  # argparse says why
        ["exec", "-t", "inf", "web1", "true"],
        ["exec", "-t", "soon", "web1", "true"],
        ["exec", "-t"],
        ["exec", "-t5", "web1", "true"],
        ["exec", "", "true"],
        ["ping"],
        ["ping", "web1", "--json"],
        ["ping", "-v", "web1"],
    ],
)
def test_other_forms_go_to_the_full_parser(argv):
    assert plain_command(argv) is None


def test_exit_status_and_output_survive_the_quick_exit(daemon, client_home):
    done = subprocess.run(
        [RADMIN_CLI, "exec", daemon.address, "echo out; echo err >&2; exit 7"],
        capture_output=True,
        env=cli_env(client_home),
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (7, b"out\n")
    assert done.stderr.endswith(b"err\n")


def test_version_through_the_console_script():
    done = subprocess.run([RADMIN_CLI, "--version"], capture_output=True, timeout=60)
    assert done.returncode == 0
    assert re.fullmatch(rb"radmin-cli \d+\.\d+\.\d+\n", done.stdout)
