"""radmin: remote administration over mutual TLS 1.3.

Kept import-free on purpose: `radmin-cli` competes with `ssh` on start-up time, so
nothing here may pull in a heavy module.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
DEFAULT_PORT = 7420
# A run id (interface.md): what the client sends, the daemon logs, both check.
RUN_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds for TCP + TLS + hello, per host (--connect-timeout)
