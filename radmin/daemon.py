"""The daemon's lifecycle: bind, serve, reload on SIGHUP, stop gracefully on SIGTERM.

Signals are queued by tiny handlers and acted on in one loop in the main thread (the
gunicorn arbiter's model), so a reload never races a stop and no lock is taken inside a
signal handler. systemd hears about every step (radmin/sdnotify.py).

Stop: stop accepting (every listener at once), close idle connections, let requests in
flight finish within `limits.shutdown_grace` -- or less: a second SIGTERM/SIGINT ends the
wait at once, as gunicorn's arbiter does -- then end the rest: running commands get
SIGTERM (SIGKILL after `limits.kill_grace`) and their clients a RESULT saying the daemon
ended them; remaining sockets are shut down, which makes a running put delete its
temporary file. Exit 0.

One daemon per state_dir: its lock (flock on STATE_DIR/radmind.lock, taken after
python-daemon has detached, since it closes inherited files) is taken before anything in
it is cleaned up (only missing folders are created before), so a second `radmind run`
with the same config cannot clear the first one's in-flight uploads as leftovers.
"""

from __future__ import annotations

import fcntl
import os
import queue
import resource
import signal
import threading
import time
from typing import Any

from radmin import __version__, folders, journal, running
from radmin.addresses import format_host_port
from radmin.config import Config, load_config
from radmin.errors import ConfigError, StartupError
from radmin.identity import cert_file_fingerprint
from radmin.log import configure as configure_logging
from radmin.log import get_logger
from radmin.sdnotify import Notifier
from radmin.server import DaemonState, RadminServer

_TICK = 1.0
_STATUS_EVERY = 10.0
_ACCEPT_POLL = 0.5  # serve_forever's poll interval: the accept loop's heartbeat period
_FDS_PER_CONNECTION = 5  # the socket, and a running command's three pipes and pidfd


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the (soft, hard) in force.

    Each connection holds a descriptor and each running command four more. The soft
    limit is often 1024 (systemd's default is 1024 soft, 524288 hard): it exists for
    programs that use select(), and radmind only polls.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft, hard
    return target, hard


def _nr_open() -> int:
    """The kernel's ceiling for RLIMIT_NOFILE when the hard limit says "unlimited"."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024 * 1024


def _lock_state_dir(config: Config) -> int:
    """flock STATE_DIR/radmind.lock for the daemon's life, or refuse to start; the
    descriptor is returned to keep the lock (close-on-exec: commands do not hold it)."""
    state_dir = config.state_dir
    try:
        folders.ensure_folder(state_dir)
        fd = os.open(state_dir / "radmind.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StartupError(f"cannot lock state_dir {state_dir}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StartupError(
            f"state_dir {state_dir} is in use by another radmind (pid {holder}); "
            "two daemons must not share a state_dir (give each its own config)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _address_text(address: Any) -> str:
    """A bound socket's address (socketserver types it loosely) as host:port."""
    return format_host_port(str(address[0]), int(address[1]))


def _configure_logging(config: Config) -> None:
    try:
        configure_logging(config.log.level, config.log.format, log_file=config.log.file)
    except OSError as exc:
        raise StartupError(f"cannot open log.file {config.log.file}: {exc.strerror}") from None


def _serving_state(config: Config) -> tuple[DaemonState, str]:
    """The state every connection shares (the TLS context) and our fingerprint."""
    try:
        return DaemonState(config), cert_file_fingerprint(config.cert)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise StartupError(f"cannot load the identity or client certificates: {exc}") from None


class Daemon:
    def __init__(self, config: Config, notifier: Notifier | None = None):
        _configure_logging(config)
        self.log = get_logger()
        self.state, self.fingerprint = _serving_state(config)
        self.notifier = notifier or Notifier()
        self.servers: dict[tuple[str, int], RadminServer] = {}  # by configured address
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._check_fd_limit(config)
        self._prepare_folders(config)  # only creates what is missing
        self._state_lock = _lock_state_dir(config)  # before any cleanup in it
        self._recover_uploads(config)
        self._end_orphans(config)
        self._log_warnings(config)

    def _log_warnings(self, config: Config) -> None:
        """What `radmind check` warns about, in the log too: nobody runs check by hand
        before every start."""
        for warning in config.warnings:
            self.log.warning("config_warning", message=warning)

    def _check_fd_limit(self, config: Config) -> None:
        soft, hard = raise_fd_limit()
        needed = config.limits.max_connections * _FDS_PER_CONNECTION + 64
        if soft < needed:
            self.log.warning(
                "fd_limit_low",
                soft=soft,
                hard=hard,
                needed=needed,
                note="limits.max_connections busy connections may run out of descriptors",
            )
        else:
            self.log.debug("fd_limit", soft=soft, hard=hard)

    def _prepare_folders(self, config: Config) -> None:
        """Create state_dir and put.default_dir (0755) when missing, and the journal's
        folder, so an admin need not; `radmind check` has said whether they can be."""
        for key, path in (
            ("state_dir", config.state_dir),
            ("put.default_dir", config.put_default_dir),
        ):
            try:
                created = folders.ensure_folder(path)
            except OSError as exc:
                raise StartupError(f"cannot create {key} {path}: {exc.strerror or exc}") from None
            if created:
                self.log.info(
                    "created_folder",
                    key=key,
                    path=str(path),
                    created=[str(folder) for folder in created],
                    mode=f"{folders.FOLDER_MODE:04o}",
                )
        try:
            journal.prepare(config.state_dir)
        except OSError as exc:
            inflight = journal.inflight_dir(config.state_dir)
            raise StartupError(f"cannot create state_dir {inflight}: {exc.strerror}") from None

    def _end_orphans(self, config: Config) -> None:
        """Kill the commands a previous run left running (it died: kill -9, a crash)."""
        ended = running.end_orphans(config.state_dir)
        if ended:
            self.log.warning(
                "ended_orphaned_commands",
                process_groups=ended,
                note="left running by a previous radmind that did not stop cleanly",
            )

    def _recover_uploads(self, config: Config) -> None:
        """Delete temporary files of uploads a previous run did not finish (kill -9)."""
        removed = journal.recover(config.state_dir)
        if removed:
            self.log.warning("removed_unfinished_uploads", files=removed)

    # -- listeners ---------------------------------------------------------------------

    def _bind_all(self, addresses) -> dict[tuple[str, int], RadminServer]:
        """Bind every address or none: a half-listening daemon is worse than an error."""
        bound: dict[tuple[str, int], RadminServer] = {}
        try:
            for address in addresses:
                bound[address] = self._bind(address)
        except StartupError:
            for server in bound.values():
                server.server_close()
            raise
        return bound

    def _bind(self, address: tuple[str, int]) -> RadminServer:
        try:
            return RadminServer(address, self.state)
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {_address_text(address)}: {exc.strerror or exc}"
            ) from None

    def _start(self, servers: dict[tuple[str, int], RadminServer]) -> None:
        for server in servers.values():
            threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _ACCEPT_POLL},
                daemon=True,
                name=f"listener {_address_text(server.server_address)}",
            ).start()

    @staticmethod
    def _close(servers) -> None:
        """Stop listeners in parallel: each shutdown() waits for its accept loop's next
        turn (up to _ACCEPT_POLL), which one after another adds up."""
        servers = list(servers)
        stoppers = [threading.Thread(target=server.shutdown) for server in servers]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        for server in servers:
            server.server_close()

    def bind(self) -> None:
        self.servers = self._bind_all(self.state.config.listen)

    def bound_addresses(self) -> list[str]:
        return [_address_text(s.server_address) for s in self.servers.values()]

    def serve(self) -> None:
        self._start(self.servers)
        config = self.state.config
        self.log.info(
            "listening",
            version=__version__,
            addresses=self.bound_addresses(),
            fingerprint=self.fingerprint,
            config=str(config.path),
            clients=sorted(c.name for c in config.clients.values()),
        )
        self.notifier.ready(self._status())
        if self.notifier.watchdog_interval:
            threading.Thread(target=self._watchdog, daemon=True, name="watchdog").start()

    def _status(self) -> str:
        return (
            f"listening on {', '.join(self.bound_addresses())}; "
            f"{self.state.connections} connections, "
            f"{self.state.requests_served} requests served"
        )

    def _watchdog(self) -> None:
        """WATCHDOG=1 only while every accept loop is really turning."""
        interval = self.notifier.watchdog_interval
        while not self.state.stopping.is_set():
            stale = [
                _address_text(s.server_address)
                for s in list(self.servers.values())
                if time.monotonic() - s.last_tick > 4 * _ACCEPT_POLL
            ]
            if stale:
                self.log.error("watchdog_withheld", stuck_listeners=stale)
            else:
                self.notifier.watchdog()
            self.state.stopping.wait(interval)

    # -- the signal loop ---------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda n, _frame: self.signals.put(n))

    def run_until_stopped(self) -> None:
        last_status = ""
        next_status = time.monotonic() + _STATUS_EVERY
        while True:
            try:
                signum = self.signals.get(timeout=_TICK)
            except queue.Empty:
                self.state.throttled.flush()
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + _STATUS_EVERY
                    status = self._status()
                    if status != last_status:
                        self.notifier.status(status)
                        last_status = status
                continue
            if signum == signal.SIGHUP:
                self.reload()
            else:
                self.stop(signal.Signals(signum).name)
                return

    def reload(self) -> None:
        """Validate the whole new file and bind new listeners before changing anything."""
        self.notifier.reloading()
        path = self.state.config.path
        try:
            config = load_config(path)
            self._prepare_folders(config)
            added = self._bind_all(a for a in config.listen if a not in self.servers)
        except ConfigError as exc:
            return self._reload_rejected(path, exc.problems)
        except StartupError as exc:
            return self._reload_rejected(path, [str(exc)])
        except (OSError, ValueError) as exc:
            return self._reload_rejected(path, [f"{type(exc).__name__}: {exc}"])
        try:
            _configure_logging(config)
            self.state.apply(config)
        except StartupError as exc:
            self._close(added.values())
            return self._reload_rejected(path, [str(exc)])
        except (OSError, ValueError) as exc:  # e.g. the key no longer loads
            self._close(added.values())
            return self._reload_rejected(path, [f"{type(exc).__name__}: {exc}"])
        removed = [self.servers.pop(a) for a in list(self.servers) if a not in config.listen]
        self._close(removed)
        self.servers.update(added)
        self._start(added)
        self.log.info(
            "reloaded",
            config=str(path),
            clients=sorted(c.name for c in config.clients.values()),
            addresses=self.bound_addresses(),
        )
        self._log_warnings(config)
        self.notifier.ready(self._status())

    def _reload_rejected(self, path, problems: list[str]) -> None:
        self.log.error(
            "reload_rejected",
            config=str(path),
            problems=problems,
            note="the previous configuration stays in force",
        )
        self.notifier.ready(f"reload rejected, previous configuration in force; {self._status()}")

    def stop(self, reason: str) -> None:
        state = self.state
        grace = state.config.limits.shutdown_grace
        self.notifier.stopping(f"stopping ({reason}); {state.connections} connections")
        self.log.info(
            "stopping", reason=reason, connections=state.connections, shutdown_grace_s=grace
        )
        state.stopping.set()
        self._close(self.servers.values())
        state.close_idle_sessions()
        started = time.monotonic()
        finished = self._wait_for_sessions(grace, hurry=True)
        if not finished:
            self._end_requests(time.monotonic() - started)
        self.log.info("stopped", requests_served=state.requests_served, ended_early=not finished)

    def _end_requests(self, waited: float) -> None:
        """Grace over (or a second signal): commands get SIGTERM and their clients a
        RESULT; what is still open after kill_grace is SIGKILLed, then cut off."""
        state = self.state
        kill_grace = state.config.limits.kill_grace
        commands = state.commands.end_all(running.SHUTTING_DOWN, signal.SIGTERM)
        self.log.warning(
            "ending_requests",
            after_s=round(waited, 3),
            connections=state.connections,
            commands=commands,
            note="running commands get SIGTERM and their clients a RESULT",
        )
        if self._wait_for_commands(kill_grace):
            self._wait_for_sessions(1.0)  # their RESULTs go out
        else:
            state.commands.end_all(running.SHUTTING_DOWN, signal.SIGKILL)
            self._wait_for_commands(1.0)
        state.close_all_sessions()
        self._wait_for_sessions(3.0)

    def _wait_for_commands(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while len(self.state.commands) and time.monotonic() < deadline:
            time.sleep(0.02)
        return not len(self.state.commands)

    def _wait_for_sessions(self, seconds: float, hurry: bool = False) -> bool:
        """True once no connection is left; False after `seconds`, or at once when
        `hurry` and a second SIGTERM/SIGINT came."""
        deadline = time.monotonic() + seconds
        while self.state.connections and time.monotonic() < deadline:
            if hurry and self._stop_repeated():
                return False
            time.sleep(0.05)
        return not self.state.connections

    def _stop_repeated(self) -> bool:
        while True:
            try:
                signum = self.signals.get_nowait()
            except queue.Empty:
                return False
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.log.warning(
                    "stop_hurried",
                    signal=signal.Signals(signum).name,
                    note="second stop signal: requests in flight are ended now",
                )
                return True
