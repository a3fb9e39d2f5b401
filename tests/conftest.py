"""pytest fixtures: a server identity, client homes, and real radmind daemons."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import (
    ConfigFileDaemon,
    Daemon,
    client_entry,
    make_client_home,
    prepare_daemon,
)

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

    def make(
        clients: dict[str, Any] | None = None, umask: int | None = None, **overrides: Any
    ) -> Daemon:
        folder = tmp_path / f"daemon{len(started)}"
        daemon = prepare_daemon(folder, server_identity, clients or {}, umask=umask, **overrides)
        started.append(daemon)
        return daemon.start()

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture
def file_daemon_factory() -> Iterator:
    """start(path) -> a radmind running from the config file at `path` as it is."""
    started: list[Daemon] = []

    def start(config_path: Path) -> Daemon:
        daemon = ConfigFileDaemon(config_path)
        started.append(daemon)
        return daemon.start()

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def daemon(daemon_factory, client_home) -> Daemon:
    """A daemon that knows `client_home` as client "ops", allowed everything."""
    return daemon_factory({"ops": client_entry(client_home)})


@pytest.fixture
def tmpfs(tmp_path):
    """mount(name, options) -> a fresh tmpfs under tmp_path, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        mount_point = tmp_path / name
        mount_point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(mount_point)
        return mount_point

    yield mount
    for mount_point in reversed(mounted):
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@pytest.fixture(scope="session")
def big_file(tmp_path_factory) -> Path:
    """100 MiB of random data (incompressible, and long enough to interrupt a put or a
    get); made once for the run."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    with open(path, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(1 << 20))
    return path
