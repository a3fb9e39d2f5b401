"""ping, exec, put and get: one run over HOSTS, each host's outcome printed as soon as it is
known (a line, or a --json object), a summary, and the exit status radmin_cli chooses.

Imported by radmin_cli.main only for these commands.
"""

from __future__ import annotations

import os
import posixpath
import sys
import threading

from radmin.cli.radmin_cli import (
    EXIT_INTERRUPTED,
    UsageError,
    error,
    exit_status,
    host_status,
    os_error,
    stderr_line,
)
from radmin.client import Cancelled, ClientOptions, ExecResult, GetResult, PingResult, PutResult
from radmin.errors import TransportError
from radmin.fanout import (
    CANCELLED,
    CRASHED,
    FAILED,
    INTERRUPTED,
    OK,
    OUTPUT_CLOSED,
    REFUSED,
    SKIPPED,
    SUCCESS,
    UNREACHABLE,
    Cancellation,
    HostOutcome,
    LinePrefixer,
    SharedOutput,
    exec_on_host,
    get_on_host,
    ping_on_host,
    put_on_host,
    run_rolling,
    share_of,
    summary_line,
)
from radmin.hosts import HostSpecError, fold, resolve_hosts
from radmin.lastrun import REFERENCES
from radmin.nodeset import split_entries

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

    from radmin.hosts import Target
    from radmin.identity import ClientHome


class Run:
    """One invocation of ping, exec, put or get: its hosts, run id, client options, stdout,
    and what stops it early (Ctrl-C, or our stdout's reader going away)."""

    def __init__(self, args: argparse.Namespace, home: ClientHome):
        self.args = args
        try:
            self.targets = resolve_hosts(
                args.hosts, home.config, getattr(args, "exclude", None), home.last_run
            )
        except HostSpecError as exc:
            raise UsageError(str(exc)) from None
        self.home = home
        self.several = len(self.targets) > 1
        # A run over several hosts, or one that reran @failed/@ok, is remembered for the
        # next @failed/@ok (a single `exec web3 journalctl` to investigate is not).
        self.recorded = self.several or any(e in REFERENCES for e in split_entries(args.hosts))
        # interface.md "Run id": sent with every request, in every daemon's log.
        self.run_id = args.run_id or os.urandom(6).hex()
        self.stop = Cancellation()
        _stop_on_sigint(self.stop)
        self.out = SharedOutput(_binary(sys.stdout), lambda: self.stop.cancel(OUTPUT_CLOSED))
        heartbeat = args.heartbeat_interval
        if heartbeat is None:
            from radmin.hosts import configured_heartbeat_interval

            try:
                heartbeat = configured_heartbeat_interval(home.config)
            except HostSpecError as exc:
                raise UsageError(str(exc)) from None
        self.options = ClientOptions(
            home,
            strict_host_key=args.strict_host_key,
            host_fingerprint=args.host_fingerprint,
            connect_timeout=args.connect_timeout,
            warn=stderr_line,
            cancel_fd=self.stop.fd,
            run_id=self.run_id,
            heartbeat_interval=heartbeat,
            retries=getattr(args, "retry", 0),
            mux=args.mux or self._configured_mux(),
        )
        self._warned_host_key = False  # the full warning is given once
        self._lock = threading.Lock()
        if args.verbose:
            count = len(self.targets)
            hosts = fold(target.label for target in self.targets)
            error(f"run id {self.run_id}, {count} host{'s' * (count > 1)}: {hosts}")

    def _configured_mux(self) -> bool:
        from radmin.hosts import configured_mux

        try:
            return configured_mux(self.home.config)
        except HostSpecError as exc:
            raise UsageError(str(exc)) from None

    @property
    def quiet(self) -> bool:
        """Once our stdout is gone, say nothing more: a pipeline's writer just ends."""
        return self.stop.reason == OUTPUT_CLOSED

    def fan_out(
        self,
        op: str,
        work: Callable[[Target], HostOutcome],
        report: Callable[[HostOutcome], None],
        before: tuple[str, str] | None = None,
        after: Callable[[list[HostOutcome]], None] | None = None,
    ) -> int:
        """Run `work` on every host (in --batch batches, within --max-fail), `report`
        each outcome as it comes, call `after` with them all (exec -b prints its report),
        print the summary, remember the run for @failed/@ok, and return the exit status.
        `before`: a failure found before any host was contacted (an unreadable FILE), as
        (kind, error); every host gets it, and it is said once."""
        before = before or self._identity_problem()
        if before is None:
            count = len(self.targets)
            outcomes = run_rolling(
                self.targets,
                work,
                self.args.parallel,
                self.stop,
                report,
                batch=share_of(getattr(self.args, "batch", None), count, 1),
                max_fail=share_of(getattr(self.args, "max_fail", None), count, 0),
            )
            if after is not None:
                after(outcomes)
            if self.recorded:
                self._remember(op, outcomes)
        else:
            kind, message = before
            outcomes = [HostOutcome(target, kind, message) for target in self.targets]
            if self.args.json:
                for outcome in outcomes:
                    report(outcome)
            else:
                error(message)
        if self.several and before is None and not self.args.json and not self.quiet:
            stderr_line(summary_line(outcomes))
        return exit_status(op, outcomes, self.stop.reason)

    def _remember(self, op: str, outcomes: list[HostOutcome]) -> None:
        """last-run.json in the client home, for the next @failed / @ok / @skipped. A
        home we cannot write to costs the record, not the run: one warning."""
        from radmin import lastrun

        hosts: dict[str, list[str]] = {"ok": [], "failed": [], "skipped": []}
        for outcome in outcomes:
            kind = outcome.kind
            name = "ok" if kind in SUCCESS else "skipped" if kind == SKIPPED else "failed"
            hosts[name].append(outcome.target.label)
        try:
            lastrun.save(self.home.last_run, self.run_id, op, hosts)
        except OSError as exc:
            if not self.quiet:
                error(f"warning: cannot record this run for @failed/@ok: {os_error(exc)}")

    def _identity_problem(self) -> tuple[str, str] | None:
        """This client's identity, loaded once before any host: a missing or unreadable
        key is one line, not one per host. (kind, error), as fan_out's `before`.
        Through the helper the key is not loaded here (that is the helper's saving): its
        files are only looked at, and the helper reports what else is wrong."""
        try:
            if self.options.mux:
                self.options.check_identity_files()
            else:
                self.options.tls_context()
        except TransportError as exc:
            return UNREACHABLE, str(exc)
        except OSError as exc:
            home = self.options.home
            why = _unreadable(home.key, home.cert, exc)
            return UNREACHABLE, f"cannot load the client identity: {why}"
        return None

    def report_failure(self, outcome: HostOutcome) -> None:
        """One line on stderr for a host that did not succeed; a changed host key's loud
        warning in full once, then briefly. Hosts stopped or skipped by Ctrl-C are left
        to the summary: the user knows why."""
        if self.quiet or outcome.error is None or outcome.kind in (CANCELLED, SKIPPED):
            return
        message = outcome.error
        if outcome.brief is not None:
            with self._lock:
                warned, self._warned_host_key = self._warned_host_key, True
            if warned:
                message = f"{outcome.brief} (see the warning above)"
        error(f"{outcome.target.label}: {message}")

    def json_line(self, record: dict[str, Any]) -> None:
        import json

        self.out.write(json.dumps({**record, "run_id": self.run_id}).encode() + b"\n")


def _binary(stream: Any) -> Any:
    """A standard stream's bytes; /dev/null for one closed before we started (`>&-`)."""
    return stream.buffer if stream is not None else open(os.devnull, "wb")


def _unreadable(key: Any, cert: Any, exc: OSError) -> str:
    """Which identity file failed to load (OpenSSL does not say), and why."""
    for path in (key, cert):
        try:
            with open(path, "rb"):
                pass
        except OSError as file_exc:
            return os_error(file_exc)
    return f"{key}, {cert}: {getattr(exc, 'reason', None) or exc.strerror or exc}"


def _stop_on_sigint(stop: Cancellation) -> None:
    """First Ctrl-C stops the run (radmin.fanout.Cancellation: hosts not started are
    skipped, running commands cancelled, and the daemons confirm); a second one exits
    at once."""
    import signal

    pressed = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        if pressed.is_set():
            os._exit(EXIT_INTERRUPTED)
        pressed.set()
        stop.cancel(INTERRUPTED)

    signal.signal(signal.SIGINT, on_sigint)


def _json_status(kind: str) -> str:
    """interface.md's --json `status` of exec (and ping): ok / failed / refused /
    unreachable / skipped. A cancelled or crashed host failed."""
    return FAILED if kind in (CANCELLED, CRASHED) else kind


# -- ping ---------------------------------------------------------------------------------


def ping_command(args: argparse.Namespace, home: ClientHome) -> int:
    run = Run(args, home)

    def report(outcome: HostOutcome) -> None:
        result = outcome.result if outcome.kind in SUCCESS else None
        assert result is None or isinstance(result, PingResult)
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


# -- exec ---------------------------------------------------------------------------------

TIMED_OUT_MESSAGE = "timed out; the daemon killed the command's process group"


def exec_command(args: argparse.Namespace, home: ClientHome) -> int:
    command = " ".join(args.command)
    if not command.strip():
        raise UsageError("exec: no COMMAND given")
    env = _parse_env(args.env)
    if args.gather and args.json:
        raise UsageError("-b/--gather and --json are two ways to print the outputs: choose one")
    run = Run(args, home)
    if args.gather:
        return _exec_gathered(run, command, _exec_options(args, run, env))
    err = SharedOutput(_binary(sys.stderr))
    exec_options = _exec_options(args, run, env)
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
        out_lines, err_lines = LinePrefixer(target.label, run.out), LinePrefixer(target.label, err)
        try:
            return exec_on_host(
                target, run.options, command, out_lines.feed, err_lines.feed, **exec_options
            )
        finally:
            out_lines.close()
            err_lines.close()

    def report(outcome: HostOutcome) -> None:
        if args.json:
            output = captured.get(outcome.target.label, (b"", b""))
            run.json_line(_exec_record(outcome, *output))
        elif isinstance(outcome.result, ExecResult) and outcome.result.timed_out and not run.quiet:
            error(f"{outcome.target.label}: {TIMED_OUT_MESSAGE}")
        elif isinstance(outcome.result, ExecResult) and outcome.result.ended_by and not run.quiet:
            error(f"{outcome.target.label}: {outcome.result.ended_by}: it ended the command")
        else:
            run.report_failure(outcome)

    return run.fan_out("exec", on_host, report)


def _exec_options(args: argparse.Namespace, run: Run, env: dict[str, str]) -> dict[str, Any]:
    return {
        "stdin": _exec_stdin(args.no_stdin, run.several),
        "cwd": args.cwd,
        "env": env,
        "timeout": args.timeout,
    }


def _exec_gathered(run: Run, command: str, exec_options: dict[str, Any]) -> int:
    """exec -b: stdout kept per host and printed grouped once every host has ended (or
    Ctrl-C stopped the run: what was gathered is printed); stderr live and prefixed,
    under a done/total counter when stderr is a terminal (radmin/cli/gather.py)."""
    from radmin.cli.gather import Gathered, Progress

    gathered = Gathered()
    progress = Progress(_binary(sys.stderr), len(run.targets))
    outputs: dict[str, bytes] = {}

    def on_host(target: Target) -> HostOutcome:
        out = bytearray()
        err_lines = LinePrefixer(target.label, progress)  # type: ignore[arg-type]
        try:
            return exec_on_host(
                target, run.options, command, out.extend, err_lines.feed, **exec_options
            )
        finally:
            err_lines.close()
            outputs[target.label] = bytes(out)

    def report(outcome: HostOutcome) -> None:
        gathered.add(outcome, outputs.pop(outcome.target.label, b""))
        progress.tick()

    def after(outcomes: list[HostOutcome]) -> None:
        progress.clear()
        if not run.quiet:
            run.out.write(gathered.render())

    return run.fan_out("exec", on_host, report, after=after)


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


def _exec_stdin(no_stdin: bool, several: bool) -> bytes | int | None:
    """Our stdin for the command: none with -n, from a terminal (as ssh) or when closed;
    streamed from fd 0 to one host; read once and copied to each of several hosts."""
    if no_stdin or sys.stdin is None or os.isatty(0):
        return None
    return sys.stdin.buffer.read() if several else 0


def _exec_record(outcome: HostOutcome, stdout: bytes, stderr: bytes) -> dict[str, Any]:
    """One host's `exec --json` object. Output that is not UTF-8 is given with U+FFFD
    replacements in `stdout`/`stderr` and exactly in `stdout_base64`/`stderr_base64`."""
    result = outcome.result
    assert result is None or isinstance(result, ExecResult)
    timed_out = result is not None and result.timed_out
    ran = outcome.kind in (OK, FAILED, REFUSED)  # a status to give: the command's or 126
    record: dict[str, Any] = {
        "host": outcome.target.label,
        "status": _json_status(outcome.kind),
        "exit_code": host_status("exec", outcome) if ran else None,
        "stdout": stdout.decode("utf-8", "replace"),
        "stderr": stderr.decode("utf-8", "replace"),
        "duration_s": result.duration_s if result else None,
        "error": outcome.error
        or ("timed out" if timed_out else None)
        or (result.ended_by if result is not None else None),
    }
    for name, data in (("stdout", stdout), ("stderr", stderr)):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            import base64

            record[f"{name}_base64"] = base64.b64encode(data).decode()
    return record


# -- put ----------------------------------------------------------------------------------


def put_command(args: argparse.Namespace, home: ClientHome) -> int:
    if args.remote_path is not None and not args.remote_path.startswith("/"):
        raise UsageError(f"REMOTE_PATH must be absolute, got {args.remote_path!r}")
    run = Run(args, home)
    try:
        size, digest = _local_file(args.file, run)
        before = None
    except OSError as exc:  # the local FILE: exit 1, as a failed upload
        size, digest = 0, None
        before = FAILED, os_error(exc)
    bar = TransferBar(run, size * len(run.targets), show=not args.json)

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
            progress=bar.progress,
        )

    def report(outcome: HostOutcome) -> None:
        bar.clear()
        _report_transfer(run, outcome, lambda: _put_record(outcome, args.remote_path, digest), size)

    try:
        return run.fan_out("put", on_host, report, before)
    finally:
        bar.close()


def _report_transfer(
    run: Run, outcome: HostOutcome, record: Callable[[], dict[str, Any]], size: int | None
) -> None:
    """One host's put or get, as it ends: its --json object, or the human line
    (`web1: changed /etc/motd (1.2 KiB, sha256 ab12…)`; `size` None: the result's), or
    its failure on stderr."""
    if run.args.json:
        run.json_line(record())
    elif outcome.kind in SUCCESS:
        result = outcome.result
        assert isinstance(result, PutResult | GetResult)
        if size is None:
            assert isinstance(result, GetResult)
            size = result.size
        run.out.write(
            f"{outcome.target.label}: {outcome.kind} {result.path} "
            f"({_human_size(size)}, sha256 {result.sha256[:12]}…)\n".encode()
        )
    else:
        run.report_failure(outcome)


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
    """One host's `put --json` object: `status` changed / unchanged / skipped / error."""
    result = outcome.result if outcome.kind in SUCCESS else None
    assert result is None or isinstance(result, PutResult)
    status = outcome.kind if outcome.kind in SUCCESS or outcome.kind == SKIPPED else "error"
    return {
        "host": outcome.target.label,
        "status": status,
        "path": result.path if result else path,
        "bytes": result.bytes if result else 0,
        "sha256": result.sha256 if result else sha256,
        "duration_s": round(result.duration_s, 4) if result else None,
        "error": outcome.error,
        "metadata_only": bool(result and result.metadata_only),  # changed: only mode/owner
    }


# -- get ----------------------------------------------------------------------------------


def get_command(args: argparse.Namespace, home: ClientHome) -> int:
    from radmin.client.get import local_target

    remote = args.remote_path
    if not remote.startswith("/"):
        raise UsageError(f"REMOTE_PATH must be absolute, got {remote!r}")
    try:
        local_target(remote, None)
    except ValueError:
        raise UsageError(f"REMOTE_PATH must name a file, got {remote!r}") from None
    run = Run(args, home)
    destinations = _get_destinations(run, remote, args.local_path)
    bar = TransferBar(run, 0, show=not args.json)  # grows as each host tells its size

    def on_host(target: Target) -> HostOutcome:
        local = destinations[target.label]
        if run.several:
            try:  # LOCAL_PATH/HOST/ is made as pslurp and Ansible's fetch make it
                os.makedirs(os.path.dirname(local), exist_ok=True)
            except OSError as exc:
                return HostOutcome(target, FAILED, os_error(exc))
        return get_on_host(
            target, run.options, remote, local, progress=bar.progress, on_size=bar.grow
        )

    def report(outcome: HostOutcome) -> None:
        bar.clear()
        local = destinations[outcome.target.label] or local_target(remote, None)
        _report_transfer(run, outcome, lambda: _get_record(outcome, remote, local), None)

    try:
        return run.fan_out("get", on_host, report)
    finally:
        bar.close()


def host_folder(label: str) -> str:
    """The folder a host's file lands in with several hosts: its --json `host` value
    (the alias or address as typed), brackets dropped and `:` made `_` (`web1`,
    `web2_7421`, `2001_db8__5_7420`); never `.`/`..` or a `/`."""
    name = label.replace("[", "").replace("]", "").replace(":", "_").replace("/", "_")
    return name if name.strip(".") else f"_{name}"


def _get_destinations(run: Run, remote: str, local_path: str | None) -> dict[str, Any]:
    """Each host's local file: LOCAL_PATH as given with one host (None: the default,
    chosen by the API); LOCAL_PATH/HOST/BASENAME with several."""
    if not run.several:
        return {run.targets[0].label: local_path}
    base = local_path or "."
    name = posixpath.basename(remote)
    destinations: dict[str, Any] = {}
    folders: dict[str, str] = {}
    for target in run.targets:
        folder = host_folder(target.label)
        if folder in folders:
            raise UsageError(
                f"{folders[folder]} and {target.label} would both land in {base}/{folder}/"
            )
        folders[folder] = target.label
        destinations[target.label] = os.path.join(base, folder, name)
    return destinations


def _get_record(outcome: HostOutcome, remote_path: str, local: str) -> dict[str, Any]:
    """One host's `get --json` object: put's fields (`path` is the local file) and
    `remote_path`."""
    result = outcome.result if outcome.kind in SUCCESS else None
    assert result is None or isinstance(result, GetResult)
    status = outcome.kind if outcome.kind in SUCCESS or outcome.kind == SKIPPED else "error"
    return {
        "host": outcome.target.label,
        "status": status,
        "path": result.path if result else local,
        "remote_path": result.remote_path if result else remote_path,
        "bytes": result.bytes if result else 0,
        "sha256": result.sha256 if result else None,
        "duration_s": round(result.duration_s, 4) if result else None,
        "error": outcome.error,
        "metadata_only": bool(result and result.metadata_only),
    }


def _human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


class TransferBar:
    """The progress bar of one put or get over all its hosts, shared by their threads;
    each update is also where Ctrl-C stops a transfer mid-file."""

    def __init__(self, run: Run, total: int, show: bool):
        self.run = run
        self.bar = _progress_bar(total, show)
        self.lock = threading.Lock()

    def progress(self, n: int) -> None:
        """After each frame sent or received."""
        if self.run.stop.is_set():
            raise Cancelled("cancelled")
        if self.bar is not None:
            with self.lock:
                self.bar.update(n)

    def grow(self, size: int) -> None:
        """A host announced its file (get): the total grows by it."""
        if self.bar is not None:
            with self.lock:
                self.bar.total = (self.bar.total or 0) + size
                self.bar.refresh()

    def clear(self) -> None:
        """Before a host's line is printed."""
        if self.bar is not None:
            with self.lock:
                self.bar.clear()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
