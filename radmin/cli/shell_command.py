"""`radmin-cli shell HOST`: the local terminal in raw mode, bytes to and from the remote
PTY, and the shell's exit status as ours.

The terminal is put in raw mode only once the daemon has started the shell (a refusal
or a host key warning prints as normal lines) and is restored whatever happens: the
shell's end, a transport failure, a bug, SIGTERM or SIGHUP (their handlers raise, so
the `finally` runs). In raw mode Ctrl-C, Ctrl-Z and Ctrl-D are plain bytes for the
remote terminal, as with ssh. Not a terminal on stdin: no raw mode, the input is typed
into the remote PTY as it is read, then ^D (like `ssh -tt`, without hanging at the end).

Imported by radmin_cli.main only for this command.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import sys

from radmin.cli.radmin_cli import (
    EXIT_INTERRUPTED,
    EXIT_REFUSED,
    EXIT_TRANSPORT,
    UsageError,
    error,
    stderr_line,
)

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator
    from typing import Any

    from radmin.fanout import HostOutcome
    from radmin.identity import ClientHome

_TERM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")  # what the daemon accepts
_ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwind (restoring the terminal) and exit 128+N."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def shell_command(args: argparse.Namespace, home: ClientHome) -> int:
    from radmin.client import ClientOptions, ShellResult
    from radmin.fanout import CANCELLED, INTERRUPTED, UNREACHABLE, Cancellation, on_host
    from radmin.hosts import HostSpecError, resolve_hosts

    try:
        targets = resolve_hosts(args.hosts, home.config)
    except HostSpecError as exc:
        raise UsageError(str(exc)) from None
    if len(targets) != 1:
        raise UsageError(f"shell takes one host; {args.hosts!r} names {len(targets)}")
    target = targets[0]
    run_id = args.run_id or os.urandom(6).hex()
    if args.verbose:
        stderr_line(f"radmin-cli: run id {run_id}, host {target.label}")
    stop = Cancellation()
    options = ClientOptions(
        home,
        strict_host_key=args.strict_host_key,
        host_fingerprint=args.host_fingerprint,
        connect_timeout=args.connect_timeout,
        warn=stderr_line,
        cancel_fd=stop.fd,
        run_id=run_id,
        heartbeat_interval=args.heartbeat_interval,  # None: config.yaml's, else the default
        mux=args.mux,
    )
    terminal = RawTerminal(sys.stdin.fileno()) if os.isatty(sys.stdin.fileno()) else None
    try:
        with _signals(stop, INTERRUPTED) as resize_fd:
            outcome = on_host(
                target,
                options,
                lambda conn: conn.shell(
                    stdin=sys.stdin.fileno(),
                    on_output=_writer(sys.stdout.fileno()),
                    term=_term(),
                    window_size=window_size,
                    resize_fd=resize_fd,
                    on_start=terminal.enter_raw if terminal else None,
                ),
            )
    except Terminated as exc:
        return 128 + exc.signum  # the connection is closed: the daemon ends the session
    finally:
        if terminal is not None:
            terminal.restore()
    if isinstance(outcome.result, ShellResult):
        return EXIT_INTERRUPTED if outcome.result.cancelled else outcome.result.returncode
    return _failure_status(outcome, target.label, CANCELLED, UNREACHABLE)


def _failure_status(outcome: HostOutcome, label: str, cancelled: str, unreachable: str) -> int:
    """Ctrl-C 130; the daemon refused or could not start the shell 126 (as exec); the
    host could not be reached or spoken to 255."""
    if outcome.kind == cancelled:
        return EXIT_INTERRUPTED
    error(f"{label}: {outcome.error}")
    return EXIT_TRANSPORT if outcome.kind == unreachable else EXIT_REFUSED


class RawTerminal:
    """The local terminal's settings, saved at once; raw mode on demand; restored once."""

    def __init__(self, fd: int):
        import termios

        self.fd = fd
        self.saved = termios.tcgetattr(fd)
        self.raw = False

    def enter_raw(self) -> None:
        import termios
        import tty

        tty.setraw(self.fd, termios.TCSADRAIN)  # TCSADRAIN: keep what was typed ahead
        self.raw = True

    def restore(self) -> None:
        import termios

        if self.raw:
            self.raw = False
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


@contextlib.contextmanager
def _signals(stop: Any, reason: str) -> Iterator[int]:
    """For the session: SIGINT cancels (stdin not a terminal: the remote shell is ended,
    exit 130), SIGWINCH makes the yielded fd readable, SIGTERM and SIGHUP raise
    Terminated. The previous handlers come back afterwards."""
    resize_read, resize_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def on_winch(signum: int, frame: Any) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(resize_write, b"w")

    def on_end(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    handlers = {
        signal.SIGINT: lambda signum, frame: stop.cancel(reason),
        signal.SIGWINCH: on_winch,
        **{signum: on_end for signum in _ENDING_SIGNALS},
    }
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield resize_read
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(resize_read)
        os.close(resize_write)


def window_size() -> tuple[int, int]:
    """(rows, cols) of the terminal on stdin, stdout or stderr; 24x80 without one."""
    for fd in (0, 1, 2):
        try:
            size = os.get_terminal_size(fd)
        except OSError:
            continue
        if size.lines and size.columns:
            return min(size.lines, 65535), min(size.columns, 65535)
    return 24, 80


def _term() -> str:
    """$TERM passed through, when it is a name the daemon accepts; else `dumb`."""
    value = os.environ.get("TERM", "")
    return value if _TERM.fullmatch(value) else "dumb"


def _writer(fd: int) -> Any:
    """The remote terminal's output to `fd`, whole, even if `fd` is non-blocking."""

    from radmin.protocol import wait_ready

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                wait_ready({fd: select.POLLOUT}, None)

    return write
