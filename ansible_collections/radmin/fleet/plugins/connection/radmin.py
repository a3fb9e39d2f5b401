# radmin.fleet.radmin: Ansible's connection plugin over radmin (mutual TLS 1.3, the daemon's
# allow: policy and audit log) instead of ssh. MIT licensed, as radmin.
"""Ansible drives radmin: one radmin connection per task and host, opened by `_connect`.

The plugin is a thin adapter over radmin's Python API (radmin/client, docs/api.md), as
radmin-cli is: `exec_command` is `Connection.run` (stdin carries the module when
pipelining), `put_file` is radmin's atomic, SHA-256-verified put, `fetch_file` its get.
Errors are mapped once, in `_translated`: a host that cannot be reached, authenticated or
trusted is UNREACHABLE (AnsibleConnectionFailure), a refusal by the daemon's policy is a
task failure carrying radmin's own words.

Ansible forks a worker per host and task, so a connection would not outlive its task by
itself. With the `mux` option (on by default, as ssh's ControlPersist) the worker does
not connect to the daemon at all: it opens a session through the client home's helper,
`radmin-cli mux` (radmin/mux), which keeps the authenticated daemon connections between
tasks and is started detached by the first worker that needs it. If the helper cannot
be started or reached the worker connects directly. docs/ansible.md has the numbers.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import typing as t

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

DOCUMENTATION = r"""
name: radmin
short_description: run Ansible tasks over radmin (mutual TLS 1.3) instead of ssh
description:
  - Runs every module, file transfer and fetch through a radmind on the managed host, over
    mutual TLS 1.3, under the daemon's C(allow:) policy for this client, and recorded in its
    audit log.
  - Uses radmin's Python API; the C(radmin) package must be importable by the Python that
    runs Ansible (install both into the same venv).
  - The client identity, C(known_hosts) and C(config.yaml) aliases are those C(radmin-cli)
    uses (C($RADMIN_HOME), else C($XDG_CONFIG_HOME/radmin), else C(~/.config/radmin)).
  - Commands run as the C(run_as) user the daemon's config gives this client (the remote
    user of Ansible is ignored); C(become) methods without a password (C(su) or C(sudo)
    from root, or C(NOPASSWD) sudo) wrap the command as usual.
author: radmin developers
version_added: "0.1.0"
notes:
  - Pipelining is on by default, unlike ssh's; modules then run from stdin with no
    temporary file. Without it (and for C(copy), C(template)) the client's C(allow.put)
    must cover Ansible's remote temporary folder (C(remote_tmp), C(~/.ansible/tmp)).
  - C(allow.exec) must be C(["*"]) -- Ansible runs C(/bin/sh -c '... python3 ...').
  - Become with a password is not supported (radmin runs commands without a terminal).
options:
  host:
    description:
      - The radmind's address or DNS name, or an alias from the client's C(config.yaml).
    type: string
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
      - name: ansible_radmin_host
      - name: delegated_vars['ansible_host']
  port:
    description:
      - The radmind's port. Unset, radmin's rule applies (the alias's port, else 7420).
    type: integer
    env:
      - name: ANSIBLE_RADMIN_PORT
    ini:
      - section: radmin_connection
        key: port
    vars:
      - name: ansible_port
      - name: ansible_radmin_port
      - name: delegated_vars['ansible_port']
  home:
    description:
      - The client home (identity, known_hosts, config.yaml). Unset, the one C(radmin-cli)
        uses.
    type: path
    env:
      - name: ANSIBLE_RADMIN_HOME
    ini:
      - section: radmin_connection
        key: home
    vars:
      - name: ansible_radmin_home
  strict_host_key:
    description:
      - Refuse a daemon that is not in C(known_hosts) yet (C(radmin-cli --strict-host-key)).
        Off, a new daemon is recorded with a warning (OpenSSH's C(accept-new)). A changed
        key is refused either way.
    type: boolean
    default: false
    env:
      - name: ANSIBLE_RADMIN_STRICT_HOST_KEY
    ini:
      - section: radmin_connection
        key: strict_host_key
    vars:
      - name: ansible_radmin_strict_host_key
  host_fingerprint:
    description:
      - Accept only a daemon presenting this fingerprint (C(SHA256:...)), whatever
        C(known_hosts) says (C(radmin-cli --host-fingerprint)).
    type: string
    vars:
      - name: ansible_radmin_host_fingerprint
  connect_timeout:
    description:
      - Seconds for TCP connect, TLS handshake and hello; also how long a connected daemon
        may stay silent outside a running command.
    type: float
    default: 10
    env:
      - name: ANSIBLE_RADMIN_CONNECT_TIMEOUT
    ini:
      - section: radmin_connection
        key: connect_timeout
    vars:
      - name: ansible_radmin_connect_timeout
  mux:
    description:
      - Connect through the client home's connection helper (C(radmin-cli mux)), which keeps
        daemon connections open between tasks, as ssh's C(ControlPersist); the first task
        that needs it starts it (detached, logging to C(<home>/mux/log)). If it cannot be
        started or reached, the task connects directly.
      - The helper's socket is C(<home>/mux/sock) in a 0700 folder, and it serves only its
        own user (checked with C(SO_PEERCRED)).
    type: boolean
    default: true
    env:
      - name: ANSIBLE_RADMIN_MUX
    ini:
      - section: radmin_connection
        key: mux
    vars:
      - name: ansible_radmin_mux
  mux_idle_timeout:
    description:
      - Seconds a helper started by a task stays with no client before it exits (C(radmin-cli
        mux --idle-timeout)); a helper already running keeps its own.
    type: float
    default: 60
    env:
      - name: ANSIBLE_RADMIN_MUX_IDLE_TIMEOUT
    ini:
      - section: radmin_connection
        key: mux_idle_timeout
    vars:
      - name: ansible_radmin_mux_idle_timeout
  run_id:
    description:
      - The run id sent with every request and written by every daemon in its log, e.g. a
        change ticket (letters, digits, C(.), C(_), C(-); at most 64). Unset, each
        connection gets a random one.
    type: string
    env:
      - name: ANSIBLE_RADMIN_RUN_ID
    vars:
      - name: ansible_radmin_run_id
  pipelining:
    description:
      - Run modules from stdin, with no temporary file on the host.
    type: boolean
    default: true
    env:
      - name: ANSIBLE_RADMIN_PIPELINING
    ini:
      - section: radmin_connection
        key: pipelining
    vars:
      - name: ansible_pipelining
      - name: ansible_radmin_pipelining
  profile:
    description:
      - A file to which each connect, exec, put and fetch appends one JSON line (host,
        phase, seconds, and the daemon's own duration of an exec), to see where a
        playbook's time goes (C(scripts/bench) uses it).
    type: path
    env:
      - name: ANSIBLE_RADMIN_PROFILE
"""

EXAMPLES = r"""
# inventory.ini
# [web]
# web1 ansible_host=10.0.0.11
# web2 ansible_host=10.0.0.12 ansible_port=7421
# [web:vars]
# ansible_connection=radmin.fleet.radmin
# ansible_radmin_strict_host_key=true
"""

_import_started = time.monotonic()
try:
    import radmin.client as radmin_client
    from radmin.errors import LocalFileError, RadminError, RemoteError, TransportError
except ImportError as _exc:  # ansible-doc and a clear message still work without radmin
    radmin_client = None
    _IMPORT_ERROR: ImportError | None = _exc
else:
    _IMPORT_ERROR = None
# What importing radmin cost, and in which process (Ansible may import plugins before it
# forks its workers): the `profile` option reports it with the process's first connect.
_IMPORT_S = time.monotonic() - _import_started
_IMPORT_PID = os.getpid()

display = Display()
_AF_UNIX = 1  # socket.AF_UNIX: a session through the helper
_import_reported: list[bool] = []  # not empty once this process's profile said it

# The daemon's refusal codes as radmin-cli words them (radmin/fanout.py).
_REFUSAL_PREFIX = {
    "denied": "refused by the daemon's policy",
    "bad_request": "refused",
    "limit": "limit reached",
    "not_authorized": "not authorized by the daemon",
    "failed": "failed",
}


def remote_message(exc: RemoteError) -> str:
    """radmin-cli's words for a daemon's refusal: who refused, then the daemon's reason."""
    reason = str(exc).removeprefix("not allowed by policy: ")
    return f"radmin: {_REFUSAL_PREFIX.get(exc.code, 'failed')}: {reason}"


class Connection(ConnectionBase):
    """One radmin connection (or helper session) to one host for the length of one task."""

    transport = "radmin.fleet.radmin"
    has_pipelining = True

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._radmin: t.Any = None  # radmin.client.Connection once _connect has run
        self._label = ""

    # -- connecting ------------------------------------------------------------------------

    def _connect(self) -> Connection:
        if self._connected:
            return self
        if _IMPORT_ERROR is not None:
            raise AnsibleError(
                "the radmin.fleet.radmin connection needs the radmin package in the Python "
                f"that runs Ansible (pip install radmin into the same venv): {_IMPORT_ERROR}"
            )
        target = self._target()
        self._label = target.host_port
        display.vvv(f"ESTABLISH RADMIN CONNECTION TO {self._label}", host=self._label)
        imported_here = os.getpid() == _IMPORT_PID and not _import_reported
        with self._translated("connect") as profile:
            profile["import_s"] = _IMPORT_S if imported_here else 0.0
            _import_reported.append(True)
            self._radmin = radmin_client.connect(target, self._client_options())
            profile["via"] = "mux" if self._radmin.frames.sock.family == _AF_UNIX else "direct"
        self._connected = True
        return self

    def _target(self) -> t.Any:
        """The host as radmin resolves it: `host` alone follows radmin's rules (aliases from
        config.yaml, the default port 7420); an explicit port wins."""
        from radmin.hosts import Target, resolve_hosts

        host = str(self.get_option("host"))
        port = self.get_option("port")
        home = self._home()
        try:
            if port is None:
                targets = resolve_hosts(host, home.config)
                if len(targets) != 1:
                    raise AnsibleError(f"radmin: {host!r} names {len(targets)} hosts, not one")
                return targets[0]
        except RadminError as exc:
            raise AnsibleConnectionFailure(f"radmin: {exc}") from None
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        return Target(host, bare, int(port))

    def _home(self) -> t.Any:
        from radmin.identity import ClientHome

        return ClientHome.resolve(self.get_option("home"))

    def _client_options(self) -> t.Any:
        return radmin_client.ClientOptions(
            self._home(),
            strict_host_key=bool(self.get_option("strict_host_key")),
            host_fingerprint=self.get_option("host_fingerprint") or None,
            connect_timeout=float(self.get_option("connect_timeout")),
            warn=display.warning,
            run_id=self.get_option("run_id") or None,
            mux=bool(self.get_option("mux")),
            mux_idle_timeout=float(self.get_option("mux_idle_timeout")),
        )

    @contextlib.contextmanager
    def _translated(self, phase: str, **profile: t.Any) -> t.Iterator[dict[str, t.Any]]:
        """The one error map: transport and trust failures make the host UNREACHABLE;
        refusals and failures on the host fail the task with radmin's message."""
        started = time.monotonic()
        try:
            yield profile
        except TransportError as exc:
            raise AnsibleConnectionFailure(f"radmin: {self._label}: {exc}") from None
        except RemoteError as exc:
            raise AnsibleError(remote_message(exc)) from None
        except LocalFileError as exc:
            raise AnsibleError(f"radmin: {exc}") from None
        except RadminError as exc:  # anything else radmin raises before a host is reached
            raise AnsibleConnectionFailure(f"radmin: {self._label}: {exc}") from None
        except OSError as exc:  # a local file radmin needs: identity, known_hosts
            where = f"{exc.filename}: " if exc.filename else ""
            raise AnsibleConnectionFailure(f"radmin: {where}{exc.strerror or exc}") from None
        self._profile(phase, time.monotonic() - started, profile)

    def _profile(self, phase: str, seconds: float, extra: dict[str, t.Any]) -> None:
        """One JSON line per operation when the `profile` option names a file (O_APPEND:
        lines written by parallel workers do not interleave)."""
        path = self.get_option("profile")
        if not path:
            return
        line = {"pid": os.getpid(), "host": self._label, "phase": phase, "s": seconds, **extra}
        data = (json.dumps(line) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    # -- operations ------------------------------------------------------------------------

    def exec_command(
        self, cmd: str, in_data: bytes | None = None, sudoable: bool = True
    ) -> tuple[int, bytes, bytes]:
        """Run `cmd` with /bin/sh -c on the host (radmin's exec for a "*" client); with
        pipelining the module arrives as `in_data` on stdin."""
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        if sudoable and self.become and self.become.expect_prompt():
            raise AnsibleError(
                "radmin: become with a password is not supported: radmin runs commands "
                "without a terminal to answer the prompt; use become without a password "
                "(su or sudo from a root run_as, or NOPASSWD sudo)"
            )
        display.vvv(f"EXEC {cmd}", host=self._label)
        with self._translated("exec") as profile:
            result = self._radmin.run(cmd, stdin=in_data)
            profile["remote_s"] = result.duration_s
        return result.returncode, result.stdout, result.stderr

    def put_file(self, in_path: str, out_path: str) -> None:
        """radmin's put: the host keeps its old file or gets the whole verified new one."""
        super().put_file(in_path, out_path)
        display.vvv(f"PUT {in_path} TO {out_path}", host=self._label)
        if not os.path.isfile(in_path):
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}")
        with self._translated("put"):
            self._radmin.put(in_path, out_path)

    def fetch_file(self, in_path: str, out_path: str) -> None:
        """radmin's get: verified, and written to a temporary file renamed into place."""
        super().fetch_file(in_path, out_path)
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self._label)
        with self._translated("fetch"):
            self._radmin.get(in_path, out_path)

    def close(self) -> None:
        if self._radmin is not None:
            with contextlib.suppress(OSError):
                self._radmin.close()
        self._radmin = None
        self._connected = False

    def reset(self) -> None:
        """meta: reset_connection -- the next task connects anew."""
        self.close()
