"""Many hosts at once: a bounded pool of threads, per-host outcomes, prefixes, summaries.

Threads, not asyncio: the work is blocking TLS I/O that releases the GIL, and asyncio
alone costs ~90 ms to import on the client's start-up path.
"""

from __future__ import annotations

import base64
import json
import threading
from collections import namedtuple
from collections.abc import Callable, Sequence

from radmin.client import Cancelled, ClientOptions, ExecResult, PutResult, RemoteError, connect
from radmin.errors import LocalFileError, TransportError
from radmin.hosts import Target

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO, TypeVar

    T = TypeVar("T")
    R = TypeVar("R")

OK, CHANGED, UNCHANGED = "ok", "changed", "unchanged"
FAILED, UNREACHABLE = "failed", "unreachable"
SUCCESS = frozenset({OK, CHANGED, UNCHANGED})
_MAX_PARTIAL_LINE = 64 * 1024


def run_parallel(
    items: Sequence[T],
    work: Callable[[T], R],
    parallel: int,
    stop: threading.Event | None = None,
    skipped: Callable[[T], R] | None = None,
) -> list[R]:
    """Run `work` on every item with at most `parallel` at once; `work` must not raise.

    Once `stop` is set (Ctrl-C), items not yet started get `skipped(item)` instead.
    """

    def one(item: T) -> R:
        if stop is not None and skipped is not None and stop.is_set():
            return skipped(item)
        return work(item)

    if len(items) == 1:
        return [one(items[0])]
    results: list[Any] = [None] * len(items)
    next_index = iter(range(len(items)))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            results[index] = one(items[index])

    workers = min(max(1, parallel), len(items))
    ensure_fd_room(workers)
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


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


class HostOutcome(namedtuple("HostOutcome", "target kind status error result", defaults=(None,))):
    """`kind`: OK, CHANGED, UNCHANGED, FAILED or UNREACHABLE; `status`: what the CLI would
    exit with for this host alone; `error`: why it failed or was unreachable (None for a
    plain non-zero exit); `result`: the ExecResult or PutResult, if any."""

    __slots__ = ()

    def reason(self) -> str:
        if self.error:
            return self.error
        result = self.result
        if not isinstance(result, ExecResult):
            return "failed"
        if result.timed_out:
            return "timed out"
        if result.exit_code is None:
            return f"killed by signal {result.signal}"
        return f"exit {result.exit_code}"


class SharedOutput:
    """A binary stream several threads write whole chunks to."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            self.stream.write(data)
            self.stream.flush()


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


def exec_on_host(
    target: Target,
    options: ClientOptions,
    command: str,
    on_stdout: Callable[[bytes], None],
    on_stderr: Callable[[bytes], None],
    **exec_options: Any,
) -> HostOutcome:
    """Run one command on one host and classify the outcome; never raises."""
    try:
        with connect(target, options) as conn:
            result = conn.exec(command, on_stdout=on_stdout, on_stderr=on_stderr, **exec_options)
    except TransportError as exc:
        return HostOutcome(target, UNREACHABLE, 255, str(exc))
    except Cancelled:
        return cancelled(target)
    except RemoteError as exc:
        return HostOutcome(target, FAILED, REFUSED_STATUS, f"{exc.code}: {exc}")
    kind = OK if result.status == 0 and not result.timed_out else FAILED
    return HostOutcome(target, kind, result.status, None, result)


def cancelled(target: Target) -> HostOutcome:
    """A host whose work was stopped (or never started) because of Ctrl-C."""
    return HostOutcome(target, FAILED, 130, "cancelled")


def put_on_host(
    target: Target,
    options: ClientOptions,
    local_path: str,
    remote_path: str | None,
    **put_options: Any,
) -> HostOutcome:
    """Upload to one host and classify the outcome; never raises."""
    try:
        with connect(target, options) as conn:
            result = conn.put(local_path, remote_path, **put_options)
    except TransportError as exc:
        return HostOutcome(target, UNREACHABLE, 255, str(exc))
    except Cancelled:
        return cancelled(target)
    except RemoteError as exc:
        return HostOutcome(target, FAILED, 1, f"{exc.code}: {exc}")
    except LocalFileError as exc:
        return HostOutcome(target, FAILED, 1, str(exc))
    return HostOutcome(target, CHANGED if result.status == CHANGED else UNCHANGED, 0, None, result)


# exec refused or not startable on the host (policy, bad --cwd, bad -e): the shell's
# "cannot execute" status, distinct from the remote command's own codes and from 255.
REFUSED_STATUS = 126


def summary_line(outcomes: Sequence[HostOutcome]) -> str:
    """`3 ok, 1 failed (web4: exit 2), 1 unreachable (web5: connection refused)`."""
    parts = []
    for kind in (OK, CHANGED, UNCHANGED, FAILED, UNREACHABLE):
        group = [o for o in outcomes if o.kind == kind]
        if not group:
            continue
        text = f"{len(group)} {kind}"
        if kind not in SUCCESS:
            text += " (" + ", ".join(f"{o.target.label}: {o.reason()}" for o in group) + ")"
        parts.append(text)
    return ", ".join(parts)


def combined_status(outcomes: Sequence[HostOutcome]) -> int:
    """One host: its own status. Several: 0 if all ok, 255 if any unreachable, else 1."""
    if len(outcomes) == 1:
        return outcomes[0].status
    if all(o.kind in SUCCESS for o in outcomes):
        return 0
    return 255 if any(o.kind == UNREACHABLE for o in outcomes) else 1


def put_record(outcome: HostOutcome, path: str | None, sha256: str | None) -> str:
    """One host's `put --json` line."""
    result = outcome.result if isinstance(outcome.result, PutResult) else None
    return json.dumps(
        {
            "host": outcome.target.label,
            "status": outcome.kind if outcome.kind in (CHANGED, UNCHANGED) else "error",
            "path": result.path if result else path,
            "bytes": result.bytes if result else 0,
            "sha256": result.sha256 if result else sha256,
            "duration_s": round(result.duration_s, 4) if result else None,
            "error": outcome.error,
        }
    )


def exec_record(outcome: HostOutcome, stdout: bytes, stderr: bytes) -> str:
    """One host's --json line. Output that is not UTF-8 is given with U+FFFD replacements
    in `stdout`/`stderr` and exactly in `stdout_base64`/`stderr_base64`."""
    result = outcome.result
    record: dict[str, Any] = {
        "host": outcome.target.label,
        "exit_code": None if outcome.kind == UNREACHABLE else outcome.status,
        "stdout": stdout.decode("utf-8", "replace"),
        "stderr": stderr.decode("utf-8", "replace"),
        "duration_s": result.duration_s if result else None,
        "error": outcome.error
        if outcome.error
        else ("timed out" if result and result.timed_out else None),
    }
    for name, data in (("stdout", stdout), ("stderr", stderr)):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            record[f"{name}_base64"] = base64.b64encode(data).decode()
    return json.dumps(record)
