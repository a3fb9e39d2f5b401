"""Who we are and how we trust daemons: one `ClientOptions` serves a whole fan-out.

Everything here is read lazily and once per run (the TLS context, known_hosts, the
digest cache): a 1,000-host fan-out must not parse the same files 1,000 times.
"""

from __future__ import annotations

import os
import threading

from radmin import DEFAULT_CONNECT_TIMEOUT
from radmin.errors import TransportError
from radmin.identity import ClientHome, KnownHosts, key_mode_problem

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

    from radmin.hashing import FileDigestCache


class ClientOptions:
    """The client's identity, trust settings and per-run shared state."""

    def __init__(
        self,
        home: ClientHome,
        *,
        strict_host_key: bool = False,
        host_fingerprint: str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        warn: Callable[[str], None] | None = None,
        cancel_fd: int | None = None,
        run_id: str | None = None,
        heartbeat_interval: float | None = None,
        retries: int = 0,
        mux: bool = False,
        mux_idle_timeout: float | None = None,
    ):
        self.home = home
        self.strict_host_key = strict_host_key
        self.host_fingerprint = host_fingerprint
        self.connect_timeout = connect_timeout
        self.warn = warn or (lambda message: None)
        # Readable once the user asked to stop (Ctrl-C); watched by every wait.
        self.cancel_fd = cancel_fd
        # Sent with every request, so one fleet-wide action can be found in every
        # daemon's log (interface.md: "Run id").
        self.run_id = run_id
        # Seconds of our silence before we send a HEARTBEAT; three of the connection's
        # intervals without a byte from the daemon and it counts as dead (exit 255).
        # None: the client config.yaml's heartbeat_interval, else the default.
        self.heartbeat_interval = (
            heartbeat_interval if heartbeat_interval is not None else self._configured_heartbeat()
        )
        # How many more times a fan-out tries a host it could not reach (--retry);
        # radmin.fanout.on_host never retries a request the host may have started.
        self.retries = retries
        # Connect through the client home's helper (`radmin-cli mux`, radmin/mux), which
        # keeps daemon connections open between runs; started with this idle timeout
        # (None: its default) when none runs.
        self.mux = mux
        self.mux_idle_timeout = mux_idle_timeout
        self.known_hosts = KnownHosts(home.known_hosts)
        self._context: ssl.SSLContext | None = None
        self._digests: FileDigestCache | None = None
        self._lock = threading.Lock()

    def _configured_heartbeat(self) -> float:
        from radmin.hosts import configured_heartbeat_interval

        return configured_heartbeat_interval(self.home.config)

    def tls_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._context is None:
                from radmin.tls import client_context

                self.check_identity_files()
                self._context = client_context(self.home.key, self.home.cert)
            return self._context

    def check_identity_files(self) -> None:
        """Both files exist and the key is owner-only, as ssh insists for its own keys:
        a key others can read is as good as theirs. One stat of the key, on every start."""
        try:
            key_mode = os.stat(self.home.key).st_mode
        except (FileNotFoundError, NotADirectoryError):
            key_mode = None
        if key_mode is None or not self.home.cert.exists():
            raise TransportError(
                f"no client identity in {self.home.path}: run 'radmin-cli keygen' first"
            )
        problem = key_mode_problem(self.home.key, key_mode)
        if problem:
            raise TransportError(f"UNPROTECTED PRIVATE KEY FILE! {problem}")

    def digest_cache(self) -> FileDigestCache:
        """SHA-256s of local files by (dev, inode, size, mtime, ctime): a re-upload of an
        unchanged file does not read it again (radmin/hashing.py)."""
        with self._lock:
            if self._digests is None:
                from radmin.hashing import FileDigestCache

                self._digests = FileDigestCache(str(self.home.digests))
            return self._digests

    def own_fingerprint(self) -> str:
        from radmin.identity import cert_file_fingerprint

        return cert_file_fingerprint(self.home.cert)
