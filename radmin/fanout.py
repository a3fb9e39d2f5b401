"""Many hosts at once: a bounded pool of threads and one typed outcome per host.

Knows nothing about exit statuses or how outcomes are printed: radmin/cli/ turns
outcomes into both (radmin_cli.exit_status, fanout_commands). Every function here that
works on a host returns a HostOutcome and never raises.

Threads, not asyncio: the work is blocking TLS I/O that releases the GIL, and asyncio
alone costs ~90 ms to import on the client's start-up path.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import threading
from collections import namedtuple
from collections.abc import Callable, Iterator, Sequence

from radmin.client import (
    Cancelled,
    ClientOptions,
    ExecResult,
    GetResult,
    PutResult,
    RemoteError,
    connect,
)
from radmin.errors import (
    ConnectionLost,
    ConnectTimeout,
    DaemonBusy,
    HostKeyChanged,
    HostKeyError,
    LocalFileError,
    NotAuthorizedByDaemon,
    ReplyTimeout,
    TransportError,
    Unreachable,
)
from radmin.hosts import Target, fold

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO, NamedTuple

    from radmin.client import Connection, PingResult

# What happened on a host (HostOutcome.kind), in the order a summary lists them.
OK, CHANGED, UNCHANGED = "ok", "changed", "unchanged"
FAILED = "failed"  # the command exited non-zero or timed out; the upload failed on the host
REFUSED = "refused"  # the daemon refused the request (policy, bad request, a limit)
UNREACHABLE = "unreachable"  # not reached, authenticated or spoken to (or a local error)
CANCELLED = "cancelled"  # stopped while running (Ctrl-C, or our stdout went away)
SKIPPED = "skipped"  # never started, because the run was stopped
CRASHED = "crashed"  # radmin-cli itself failed while working on this host (a bug)
KINDS = (OK, CHANGED, UNCHANGED, FAILED, REFUSED, UNREACHABLE, CANCELLED, SKIPPED, CRASHED)
SUCCESS = frozenset({OK, CHANGED, UNCHANGED})
# What --max-fail counts: the host did not do it (Ctrl-C's cancelled hosts stop the run
# anyway, and skipped ones never started).
FAILURES = frozenset({FAILED, REFUSED, UNREACHABLE, CRASHED})

# Why a run stops early (Cancellation.reason).
INTERRUPTED = "interrupted"  # Ctrl-C
OUTPUT_CLOSED = "output closed"  # the reader of our stdout went away (`| head -1`)

_MAX_PARTIAL_LINE = 64 * 1024

# The daemon's RESULT error codes, as the user reads them.
_REMOTE_PREFIX = {
    "denied": "refused by the daemon's policy",
    "bad_request": "refused",
    "limit": "limit reached",
    "failed": "failed",
}


# The fields, typed for mypy; at run time a collections.namedtuple, as typing.NamedTuple
# would import `typing`. The two must list the same fields with the same defaults.
if TYPE_CHECKING:

    class _Outcome(NamedTuple):
        target: Target
        kind: str
        error: str | None = None
        result: ExecResult | PutResult | GetResult | PingResult | None = None
        brief: str | None = None

else:
    _Outcome = namedtuple(
        "HostOutcome", "target kind error result brief", defaults=(None, None, None)
    )


class HostOutcome(_Outcome):
    """What happened on one host.

    `kind`: one of KINDS. `error`: why, in one line (None on success and for a
    command's own non-zero exit). `result`: the ExecResult, PutResult or PingResult when
    the host answered. `brief`: a short form of a long `error` for summaries.
    """

    __slots__ = ()

    def reason(self) -> str:
        """What a summary says about this host."""
        said = self.brief or self.error
        if said:
            return said
        result = self.result
        if not isinstance(result, ExecResult):
            return self.kind
        if result.timed_out:
            return "timed out"
        if result.ended_by:
            return f"{result.ended_by} (signal {result.signal})"
        if result.exit_code is None:
            return f"killed by signal {result.signal}"
        return f"exit {result.exit_code}"


class Cancellation:
    """Stops a fan-out early, for a `reason` (INTERRUPTED or OUTPUT_CLOSED).

    Hosts not started yet are skipped, and `fd` turns readable for good: every wait in
    radmin.client watches it, so connecting hosts give up and running commands are
    cancelled (the daemon kills their process groups and confirms). No lock: cancel()
    runs in a signal handler too.
    """

    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe()
        self.reason: str | None = None

    def is_set(self) -> bool:
        return self.reason is not None

    def cancel(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            os.write(self._write_fd, b"x")


def run_parallel(
    targets: Sequence[Target],
    work: Callable[[Target], HostOutcome],
    parallel: int,
    stop: Cancellation | None = None,
    report: Callable[[HostOutcome], None] | None = None,
    gate: Callable[[Target], HostOutcome | None] | None = None,
) -> list[HostOutcome]:
    """Run `work` on every target with at most `parallel` at once, and `report` each
    outcome as soon as it is known; never raises.

    A target whose `work` (or `report`) raises gets a CRASHED outcome: the other hosts
    go on, as a bug in one host's path must not lose the others' results. Once `stop` is
    set, targets not started yet are SKIPPED; so is a target for which `gate` gives an
    outcome (--max-fail reached): that one.

    A pool of at most `parallel` threads takes the targets in order: threads, not one
    per host, so 5,000 hosts cost 32 threads at the default -p.
    """

    def one(target: Target) -> HostOutcome:
        held = gate(target) if gate is not None else None
        if stop is not None and stop.is_set():
            outcome = HostOutcome(target, SKIPPED, f"not started ({stop.reason})")
        elif held is not None:
            outcome = held
        else:
            outcome = _guarded(target, work, target)
        if report is not None:
            crashed = _guarded(target, report, outcome)  # None once reported
            return crashed or outcome
        return outcome

    if len(targets) == 1:
        return [one(targets[0])]
    results: list[Any] = [None] * len(targets)
    next_index = iter(range(len(targets)))
    lock = threading.Lock()

    ended = threading.Semaphore(0)

    def worker() -> None:
        try:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                results[index] = one(targets[index])
        finally:
            ended.release()

    workers = min(max(1, parallel), len(targets))
    ensure_fd_room(workers)
    with _few_collections():
        for _ in range(workers):
            # _thread, not threading.Thread: Thread.start() waits until the new thread
            # has run, so starting 1,000 of them one by one took ~1/3 of a 1,000-host
            # run on a loaded machine. These are daemon threads: none outlives ended.
            _thread.start_new_thread(worker, ())
        for _ in range(workers):
            ended.acquire()
    return results


@contextlib.contextmanager
def _few_collections() -> Iterator[None]:
    """The cyclic GC seldom during a fan-out: with 1,000 connections alive each full
    collection walks them all, and it ran often enough to take ~15% of the client's CPU
    (py-spy, 1,000 hosts). Objects from before (imports, the host list) are frozen out
    of collections; the threshold is raised, and restored after."""
    import gc

    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(threshold[0], 50_000), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def share_of(value: tuple[int, bool] | None, hosts: int, at_least: int) -> int | None:
    """`--batch`/`--max-fail` as a number of hosts: N, or N% = ceil(N/100 x hosts)
    (as Ansible's serial rounds), and never below `at_least`. None stays None."""
    if value is None:
        return None
    number, percent = value
    count = -(-number * hosts // 100) if percent else number
    return max(at_least, count)


class FailureLimit:
    """--max-fail: counts the hosts that failed (FAILURES) over the whole run and says,
    once more than `limit` have, why the hosts not started yet are skipped."""

    def __init__(self, limit: int):
        self.limit = limit
        self.failed = 0
        self._lock = threading.Lock()

    def count(self, outcome: HostOutcome) -> None:
        if outcome.kind in FAILURES:
            with self._lock:
                self.failed += 1

    def reached(self, target: Target) -> HostOutcome | None:
        """None while within the limit; else the SKIPPED outcome of `target`, which
        must not start."""
        if self.failed <= self.limit:
            return None
        hosts = "host" if self.limit == 1 else "hosts"
        return HostOutcome(
            target,
            SKIPPED,
            f"not started: more than {self.limit} {hosts} failed (--max-fail {self.limit})",
            brief=f"more than {self.limit} failed",
        )


def run_rolling(
    targets: Sequence[Target],
    work: Callable[[Target], HostOutcome],
    parallel: int,
    stop: Cancellation | None = None,
    report: Callable[[HostOutcome], None] | None = None,
    batch: int | None = None,
    max_fail: int | None = None,
) -> list[HostOutcome]:
    """run_parallel in consecutive batches of `batch` hosts (Ansible's serial), each
    starting when the previous one has ended; once more than `max_fail` hosts have failed
    (default 0 with batches) no new batch starts, and the hosts never started are
    SKIPPED. Without batches, `max_fail` stops starting new hosts. Never raises."""
    if batch is None and max_fail is None:
        return run_parallel(targets, work, parallel, stop, report)
    limit = FailureLimit(0 if max_fail is None else max_fail)

    def counted(outcome: HostOutcome) -> None:
        limit.count(outcome)
        if report is not None:
            report(outcome)

    if batch is None:
        return run_parallel(targets, work, parallel, stop, counted, gate=limit.reached)
    outcomes: list[HostOutcome] = []
    for start in range(0, len(targets), batch):
        hosts = targets[start : start + batch]
        if limit.reached(hosts[0]) is None:
            outcomes += run_parallel(hosts, work, parallel, stop, counted)
            continue
        for target in hosts:
            skipped = limit.reached(target)
            assert skipped is not None
            crashed = _guarded(target, report, skipped) if report is not None else None
            outcomes.append(crashed or skipped)
    return outcomes


def _guarded(target: Target, call: Callable[[Any], Any], arg: Any) -> Any:
    """call(arg), or `target`'s CRASHED outcome if it raised."""
    try:
        return call(arg)
    except Exception as exc:
        return HostOutcome(
            target, CRASHED, f"internal error in radmin-cli: {type(exc).__name__}: {exc}"
        )


FDS_PER_CONNECTION = 4  # the socket, plus a command's stdin pipe and room for files
_FD_RESERVE = 64  # stdio, the known_hosts and digest files, Python's own


def ensure_fd_room(connections: int) -> None:
    """Raise this process's soft open-file limit (up to the hard one) when a fan-out of
    this many connections at once could outgrow it: 1024 is common and `-p 1100` is not."""
    needed = connections * FDS_PER_CONNECTION + _FD_RESERVE
    if needed <= 1024:
        return  # the usual soft limit; not even worth the getrlimit() call
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))


# -- one host -----------------------------------------------------------------------------


def on_host(
    target: Target,
    options: ClientOptions,
    request: Callable[[Connection], Any],
    local_file: str | None = None,
    idempotent: bool = False,
) -> HostOutcome:
    """Connect, run `request`, and classify what happened; never raises.

    The one place a host's failures become outcomes. A local OSError (unreadable
    known_hosts, a read-only home, no file descriptor left for the socket) is this
    host's failure like an unreachable host, except for `local_file` (the file given
    to put): that one fails the upload (FAILED), as a failure on the host would.

    `options.retries` (--retry): a host that could not be reached is tried again, after
    a short pause, that many times at most. Only while nothing may have run there: a
    failure once the request was sent is retried only for an `idempotent` request (an
    upload or download, which lands whole or not at all), never for exec -- a command
    that ran must not run twice.
    """
    attempts = 1 + max(0, options.retries)
    for attempt in range(1, attempts + 1):
        outcome, retryable = _attempt(target, options, request, local_file, idempotent)
        if not retryable or attempt == attempts or not _pause(options, attempt):
            if attempt > 1 and outcome.kind == UNREACHABLE:
                outcome = outcome._replace(error=f"{outcome.error} ({attempt} attempts)")
            return outcome
    raise AssertionError("unreachable")  # the loop always returns


# --retry. Before the request is sent, any transport failure is worth another try
# (refused, no route, timeout, a daemon that closed during TLS at its max_connections)
# except a verdict on identities, which a second try would only repeat. After it, only
# the line going down, and only for requests that may run twice; a daemon at one of its
# limits said so instead of running anything.
_VERDICTS = (HostKeyError, NotAuthorizedByDaemon)
_LINE_DOWN = (Unreachable, ConnectTimeout, ConnectionLost, ReplyTimeout)


def _attempt(
    target: Target,
    options: ClientOptions,
    request: Callable[[Connection], Any],
    local_file: str | None,
    idempotent: bool,
) -> tuple[HostOutcome, bool]:
    """One try at a host: its outcome, and whether a --retry may try again."""
    connected = False
    try:
        with connect(target, options) as conn:
            connected = True
            result = request(conn)
    except TransportError as exc:
        retryable = not isinstance(exc, _VERDICTS) and (
            not connected
            or isinstance(exc, DaemonBusy)
            or (idempotent and isinstance(exc, _LINE_DOWN))
        )
        return HostOutcome(target, UNREACHABLE, str(exc), brief=_brief(exc)), retryable
    except Cancelled:
        return HostOutcome(target, CANCELLED, "cancelled"), False
    except RemoteError as exc:
        kind = FAILED if exc.code == "failed" else REFUSED
        reason = str(exc).removeprefix("not allowed by policy: ")  # the prefix says it
        prefix = _REMOTE_PREFIX.get(exc.code, "failed")
        return HostOutcome(target, kind, f"{prefix}: {reason}"), False
    except LocalFileError as exc:  # put's own FILE: the upload failed
        return HostOutcome(target, FAILED, str(exc)), False
    except OSError as exc:
        message = f"{exc.filename}: {exc.strerror}" if exc.filename else _local_error(exc)
        kind = FAILED if local_file is not None and exc.filename == local_file else UNREACHABLE
        return HostOutcome(target, kind, message), False
    kind = _kind_of(result)
    return HostOutcome(target, kind, "cancelled" if kind == CANCELLED else None, result), False


def _pause(options: ClientOptions, attempt: int) -> bool:
    """Wait before the next try (0.25 s, doubling, at most 2 s); False if Ctrl-C came."""
    import select
    import time

    from radmin.protocol import wait_ready

    delay = min(2.0, 0.25 * 2 ** (attempt - 1))
    if options.cancel_fd is None:
        time.sleep(delay)
        return True
    return not wait_ready({options.cancel_fd: select.POLLIN}, delay)


def _kind_of(result: Any) -> str:
    """A command's own end (ok, failed, timed out or cancelled); an upload's changed or
    unchanged; a ping's ok."""
    if isinstance(result, ExecResult):
        if result.cancelled:
            return CANCELLED
        return OK if result.status == 0 and not result.timed_out else FAILED
    if isinstance(result, PutResult | GetResult):
        return CHANGED if result.status == CHANGED else UNCHANGED
    return OK


def _brief(exc: TransportError) -> str | None:
    """A changed host key's warning is long and loud: shown once in full, then by this
    (each host in a summary)."""
    return "HOST KEY CHANGED" if isinstance(exc, HostKeyChanged) else None


def _local_error(exc: OSError) -> str:
    """An OSError that names no file: from a socket or pipe (EMFILE, ENOBUFS...)."""
    import errno

    hint = " (ulimit -n, or a lower -p)" if exc.errno in (errno.EMFILE, errno.ENFILE) else ""
    return f"local error: {exc.strerror or exc}{hint}"


def exec_on_host(
    target: Target,
    options: ClientOptions,
    command: str,
    on_stdout: Callable[[bytes], None],
    on_stderr: Callable[[bytes], None],
    **exec_options: Any,
) -> HostOutcome:
    """Run one command on one host; never raises."""

    def request(conn: Connection) -> ExecResult:
        return conn.exec(command, on_stdout=on_stdout, on_stderr=on_stderr, **exec_options)

    return on_host(target, options, request)


def put_on_host(
    target: Target,
    options: ClientOptions,
    local_path: str,
    remote_path: str | None,
    **put_options: Any,
) -> HostOutcome:
    """Upload to one host; never raises."""
    return on_host(
        target,
        options,
        lambda conn: conn.put(local_path, remote_path, **put_options),
        local_file=local_path,
        idempotent=True,  # lands whole or not at all, and "unchanged" the second time
    )


def get_on_host(
    target: Target,
    options: ClientOptions,
    remote_path: str,
    local_path: str | None,
    **get_options: Any,
) -> HostOutcome:
    """Download from one host; never raises."""
    return on_host(
        target,
        options,
        lambda conn: conn.get(remote_path, local_path, **get_options),
        idempotent=True,  # lands whole or not at all, like put
    )


def ping_on_host(target: Target, options: ClientOptions) -> HostOutcome:
    """One authenticated round trip; never raises."""
    return on_host(target, options, lambda conn: conn.ping(), idempotent=True)


# -- output -------------------------------------------------------------------------------


class SharedOutput:
    """A binary stream several threads write whole chunks to.

    When its reader goes away (`radmin-cli exec ... | head -1`), the stream is pointed
    at /dev/null (so nothing is reported at exit) and `on_closed` is called once: the
    run stops, quietly, as a shell pipeline's writer would.
    """

    def __init__(self, stream: BinaryIO, on_closed: Callable[[], None] | None = None):
        self.stream = stream
        self.on_closed = on_closed
        self.closed = False
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            if self.closed:
                return
            try:
                self.stream.write(data)
                self.stream.flush()
            except BrokenPipeError:
                self._reader_gone()

    def _reader_gone(self) -> None:
        self.closed = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.stream.fileno())
        os.close(devnull)
        if self.on_closed is not None:
            self.on_closed()


class LinePrefixer:
    """Writes whole lines as `label: line`; a partial last line waits for more or close()."""

    def __init__(self, label: str, out: SharedOutput):
        self.prefix = label.encode() + b": "
        self.out = out
        self.pending = b""

    def feed(self, data: bytes) -> None:
        data = self.pending + data
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) > _MAX_PARTIAL_LINE:  # a huge line: pass it on in pieces
            cut = len(data)
            data += b"\n"
        self.pending = data[cut:]
        if cut:
            lines = data[:cut].splitlines(keepends=True)
            self.out.write(b"".join(self.prefix + line for line in lines))

    def close(self) -> None:
        if self.pending:
            self.out.write(self.prefix + self.pending + b"\n")
            self.pending = b""


def summary_line(outcomes: Sequence[HostOutcome]) -> str:
    """`3 ok, 2 failed (web[4-5]: exit 2), 1 unreachable (web6: connection refused)`:
    hosts with the same reason are folded into one node set."""
    parts = []
    for kind in KINDS:
        group = [o for o in outcomes if o.kind == kind]
        if not group:
            continue
        text = f"{len(group)} {kind}"
        if kind not in SUCCESS:
            by_reason: dict[str, list[str]] = {}
            for outcome in group:
                by_reason.setdefault(outcome.reason(), []).append(outcome.target.label)
            text += " (" + ", ".join(f"{fold(h)}: {r}" for r, h in by_reason.items()) + ")"
        parts.append(text)
    return ", ".join(parts)
