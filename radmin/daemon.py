"""The daemon's lifecycle: bind every listener, serve, reload on SIGHUP, stop on SIGTERM.

Signals are queued by tiny handlers and acted on in one loop in the main thread (the
gunicorn arbiter's model), so a reload never races a stop and no lock is taken inside a
signal handler.
"""

from __future__ import annotations

import queue
import signal
import threading
import time

from radmin import __version__, journal
from radmin.config import Config, load_config
from radmin.errors import ConfigError
from radmin.identity import cert_file_fingerprint
from radmin.log import configure as configure_logging
from radmin.log import get_logger
from radmin.server import DaemonState, RadminServer

_TICK = 1.0


class Daemon:
    def __init__(self, config: Config):
        configure_logging(config.log.level, config.log.format)
        self.log = get_logger()
        self.state = DaemonState(config)
        self.servers: list[RadminServer] = []
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.fingerprint = cert_file_fingerprint(config.cert)
        self._recover_uploads(config)

    def _recover_uploads(self, config: Config) -> None:
        """Delete temporary files of uploads a previous run did not finish (kill -9)."""
        journal.prepare(config.state_dir)
        removed = journal.recover(config.state_dir)
        if removed:
            self.log.warning("removed_unfinished_uploads", files=removed)

    # -- start -------------------------------------------------------------------------

    def bind(self) -> None:
        """Bind every listener before serving any: a half-listening daemon is worse."""
        try:
            for address in self.state.config.listen:
                self.servers.append(RadminServer(address, self.state))
        except OSError:
            for server in self.servers:
                server.server_close()
            raise

    def bound_addresses(self) -> list[str]:
        out = []
        for server in self.servers:
            host, port = server.server_address[:2]
            out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return out

    def serve(self) -> None:
        for server in self.servers:
            threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.5},
                daemon=True,
                name=f"listener {server.server_address[:2]}",
            ).start()
        config = self.state.config
        self.log.info(
            "listening",
            version=__version__,
            addresses=self.bound_addresses(),
            fingerprint=self.fingerprint,
            config=str(config.path),
            clients=sorted(c.name for c in config.clients.values()),
        )

    # -- the signal loop ---------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda n, _frame: self.signals.put(n))

    def run_until_stopped(self) -> None:
        while True:
            try:
                signum = self.signals.get(timeout=_TICK)
            except queue.Empty:
                continue
            if signum == signal.SIGHUP:
                self.reload()
            else:
                self.stop(signal.Signals(signum).name)
                return

    def reload(self) -> None:
        """Validate the whole new file first; on any problem the old config stays."""
        path = self.state.config.path
        self._state_dir = self.state.config.state_dir
        try:
            config = load_config(path)
            self.state.apply(config)
        except ConfigError as exc:
            self.log.error("reload_rejected", config=str(path), problems=exc.problems)
            return
        except (OSError, ValueError) as exc:
            self.log.error("reload_rejected", config=str(path), problems=[str(exc)])
            return
        configure_logging(config.log.level, config.log.format)
        if config.state_dir != self._state_dir:
            journal.prepare(config.state_dir)
        if set(config.listen) != set(self._configured_listen):
            self.log.warning(
                "listen_changed_restart_needed", listen=[f"{h}:{p}" for h, p in config.listen]
            )
        self.log.info(
            "reloaded", config=str(path), clients=sorted(c.name for c in config.clients.values())
        )

    @property
    def _configured_listen(self) -> tuple[tuple[str, int], ...]:
        return tuple((s.server_address[0], s.server_address[1]) for s in self.servers)

    def stop(self, reason: str) -> None:
        self.state.stopping.set()
        self.log.info("stopping", reason=reason, connections=self.state.connections)
        for server in self.servers:
            server.shutdown()
            server.server_close()
        self.state.close_idle_sessions()
        grace_end = time.monotonic() + self.state.config.limits.shutdown_grace
        while self.state.connections and time.monotonic() < grace_end:
            time.sleep(0.05)
        self.log.info("stopped", requests_served=self.state.requests_served)
