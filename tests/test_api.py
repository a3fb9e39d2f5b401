"""The Python API as docs/api.md shows it: one import, one call, typed errors.

Real daemon, real TLS; the "not radmind" peer below is a real TLS server too.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from pathlib import Path

import pytest
from support import client_entry, trust

import radmin.client
from radmin.client import (
    ClientOptions,
    CommandFailed,
    ConnectTimeout,
    HostKeyError,
    NotAuthorizedByDaemon,
    RemoteError,
    RemoteProtocolError,
    TransportError,
    Unreachable,
)
from radmin.hosts import Target
from radmin.identity import ClientHome


@pytest.fixture
def host(daemon, client_home) -> str:
    trust(client_home, daemon)
    return daemon.address


def test_connect_by_host_word_uses_the_home_radmin_cli_would(host, client_home, monkeypatch):
    monkeypatch.setenv("RADMIN_HOME", str(client_home.path))
    with radmin.client.connect(host) as conn:
        result = conn.run("echo api", check=True)
    assert result.stdout == b"api\n"
    assert result.returncode == 0


def test_connect_by_alias_from_config_yaml(daemon, host, client_home):
    (client_home.path / "config.yaml").write_text(f"hosts:\n  box: {host}\n")
    with radmin.client.connect("box", ClientOptions(client_home)) as conn:
        assert conn.ping().client == "ops"


def test_run_check_raises_command_failed_with_the_result(host, client_home):
    with radmin.client.connect(host, ClientOptions(client_home)) as conn:
        with pytest.raises(CommandFailed) as failed:
            conn.run("echo out; echo err >&2; exit 3", check=True)
        assert failed.value.result.returncode == 3
        assert failed.value.result.stdout == b"out\n"
        assert failed.value.result.stderr == b"err\n"
        assert conn.run("exit 4").returncode == 4  # without check: a result, no exception


def test_returncode_of_a_killed_command_is_128_plus_the_signal(host, client_home):
    with radmin.client.connect(host, ClientOptions(client_home)) as conn:
        result = conn.run("kill -9 $$")
    assert result.exit_code is None and result.signal == 9
    assert result.returncode == 137


def test_refusal_is_a_remote_error_with_the_daemons_code(daemon_factory, client_home):
    daemon = daemon_factory({"ops": client_entry(client_home, exec_allow=("uptime",))})
    trust(client_home, daemon)
    with (
        radmin.client.connect(daemon.address, ClientOptions(client_home)) as conn,
        pytest.raises(RemoteError) as refused,
    ):
        conn.run("id")
    assert refused.value.code == "denied"


def test_errors_are_types(tmp_path, client_home, daemon_factory):
    options = ClientOptions(client_home, connect_timeout=1)
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    port = refused.getsockname()[1]
    with pytest.raises(Unreachable):
        radmin.client.connect(Target("x", "127.0.0.1", port), options)
    refused.listen(0)  # accepts TCP (the backlog), never speaks TLS
    with pytest.raises(ConnectTimeout) as silent:
        radmin.client.connect(Target("x", "127.0.0.1", port), options)
    assert "accepts TCP but does not answer TLS" in str(silent.value)
    refused.close()
    stranger = daemon_factory({})  # does not list this client
    with pytest.raises(NotAuthorizedByDaemon):
        radmin.client.connect(stranger.address, options).ping()
    with pytest.raises(HostKeyError):
        radmin.client.connect(
            stranger.address, ClientOptions(client_home, host_fingerprint="SHA256:" + "A" * 43)
        )
    assert issubclass(NotAuthorizedByDaemon, TransportError)


def _not_radmind(server_identity) -> tuple[socket.socket, threading.Thread]:
    """A TLS 1.3 server that answers anything with an HTTP response."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_identity / "server.crt", server_identity / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        raw, _ = listener.accept()
        with context.wrap_socket(raw, server_side=True) as tls:
            tls.recv(4096)
            tls.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            tls.recv(4096)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_a_tls_endpoint_that_is_not_radmind_is_not_recorded_in_known_hosts(
    client_home: ClientHome, server_identity
):
    listener, thread = _not_radmind(server_identity)
    port = listener.getsockname()[1]
    options = ClientOptions(client_home)
    with (
        pytest.raises(RemoteProtocolError),
        radmin.client.connect(Target("web", "127.0.0.1", port), options) as conn,
    ):
        conn.ping()
    thread.join(5)
    listener.close()
    known = client_home.known_hosts.read_text() if client_home.known_hosts.exists() else ""
    assert f"127.0.0.1:{port}" not in known


def test_a_new_daemon_is_recorded_after_its_hello(daemon, client_home):
    warnings: list[str] = []
    options = ClientOptions(client_home, warn=warnings.append)
    with radmin.client.connect(daemon.address, options) as conn:
        assert not client_home.known_hosts.exists()  # TLS alone proves nothing yet
        conn.ping()
    assert daemon.address in client_home.known_hosts.read_text()
    assert warnings and "permanently added" in warnings[0]


def test_the_example_in_docs_api_md_runs(
    daemon_factory, client_home, tmp_path, monkeypatch, capsys
):
    daemon = daemon_factory({"ops": client_entry(client_home, get=["/var/tmp/radmin/**"])})
    doc = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    example = re.search(r"```python\n(.*?)```", doc, flags=re.S)
    assert example, "docs/api.md lost its example"
    monkeypatch.chdir(tmp_path)  # where the example's get lands
    trust(client_home, daemon)
    (client_home.path / "config.yaml").write_text(f"hosts:\n  web1: {daemon.address}\n")
    monkeypatch.setenv("RADMIN_HOME", str(client_home.path))
    Path("/var/tmp/radmin").mkdir(exist_ok=True)
    exec(compile(example.group(1), "docs/api.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("0 ")  # returncode and uname -r
    assert printed[2] == "exit 1"
    assert printed[3].split()[0] in ("changed", "unchanged")
    assert Path("/var/tmp/radmin/hostname-copy").read_text() == Path("/etc/hostname").read_text()
    assert printed[4].split()[:2] in (["changed", "hostname.web1"], ["unchanged", "hostname.web1"])
    assert (tmp_path / "hostname.web1").read_text() == Path("/etc/hostname").read_text()
