"""pytest fixtures: a server identity, client homes, and real radmind daemons."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Daemon, client_entry, make_client_home, prepare_daemon

from radmin.identity import ClientHome, create_identity


@pytest.fixture(scope="session")
def server_identity(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("server-identity")
    create_identity(folder / "server.key", folder / "server.crt", "radmind")
    return folder


@pytest.fixture
def client_home(tmp_path) -> ClientHome:
    return make_client_home(tmp_path / "client")


@pytest.fixture
def daemon_factory(tmp_path, server_identity) -> Iterator:
    started: list[Daemon] = []

    def make(clients: dict[str, Any] | None = None, **overrides: Any) -> Daemon:
        folder = tmp_path / f"daemon{len(started)}"
        daemon = prepare_daemon(folder, server_identity, clients or {}, **overrides)
        started.append(daemon)
        return daemon.start()

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture
def daemon(daemon_factory, client_home) -> Daemon:
    """A daemon that knows `client_home` as client "ops", allowed everything."""
    return daemon_factory({"ops": client_entry(client_home)})
