"""Fixtures for the security tests: one daemon per test module whose one client, "low",
is restricted (it may only run `echo ...` and upload nothing), so a request that slipped
through could do no harm."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import Daemon, make_client_home, prepare_daemon, restricted_entry

from radmin.identity import ClientHome


@pytest.fixture(scope="module")
def low_home(tmp_path_factory) -> ClientHome:
    return make_client_home(tmp_path_factory.mktemp("low-client"))


@pytest.fixture(scope="module")
def restricted_daemon(tmp_path_factory, server_identity, low_home) -> Iterator[Daemon]:
    folder = tmp_path_factory.mktemp("restricted") / "daemon"
    daemon = prepare_daemon(folder, server_identity, {"low": restricted_entry(low_home)})
    try:
        yield daemon.start()
    finally:
        daemon.stop()
