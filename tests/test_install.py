"""A first install as docs/install.md tells it, and what radmind says when it cannot start.

`radmind init` then `radmin-cli keygen`, the block pasted (appended) under `clients:`,
`radmind check`, a daemon and an allowed command; the folders radmind makes itself
(`put.default_dir`, `state_dir`); and `check` catching what `run` would refuse, each
problem named by file, line and key.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
from pathlib import Path

import pytest
import yaml
from support import base_config, run_cli, run_radmind, trust

from radmin.identity import ClientHome


def replace_once(text: str, old: str, new: str) -> str:
    """`text` with `old` replaced; fails if `old` is not there (a silent no-op would
    test something else than intended)."""
    assert text.count(old) == 1, (old, text)
    return text.replace(old, new)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- docs/install.md: init, keygen, paste, check, run ----------------------------------


def test_first_install_as_install_md_tells_it(tmp_path, file_daemon_factory):
    etc = tmp_path / "etc" / "radmin"
    init = run_radmind("init", "--dir", str(etc))
    assert init.returncode == 0, init.stderr
    home = ClientHome(tmp_path / "workstation")
    keygen = run_cli(home, "keygen")
    assert keygen.returncode == 0, keygen.stderr

    # "paste it under clients:": init writes that section last, so appending works.
    config = etc / "radmind.yaml"
    block = run_cli(home, "fingerprint", "--paste").stdout.decode()
    with config.open("a") as f:
        f.write(block)
    check = run_radmind("check", "-c", str(config))
    assert (check.returncode, check.stdout) == (0, "ok\n"), check.stderr + config.read_text()

    # Only for the test: loopback and a kernel-chosen port instead of 0.0.0.0:7420, and
    # the daemon's folders (and the block's upload rule with them) under tmp_path.
    text = replace_once(config.read_text(), '["0.0.0.0:7420"]', '["127.0.0.1:0"]')
    text = replace_once(text, "/var/lib/radmin", str(tmp_path / "state"))
    config.write_text(text.replace("/var/tmp/radmin", str(tmp_path / "uploads")))
    daemon = file_daemon_factory(config)
    trust(home, daemon)

    allowed = run_cli(home, "exec", daemon.address, "uptime")
    assert allowed.returncode == 0, allowed.stderr
    assert b"load average" in allowed.stdout
    refused = run_cli(home, "exec", daemon.address, "id")
    assert refused.returncode == 126, refused.stderr


def test_init_config_ends_with_clients_and_says_where_to_paste(tmp_path):
    assert run_radmind("init", "--dir", str(tmp_path)).returncode == 0
    lines = (tmp_path / "radmind.yaml").read_text().splitlines()
    (at,) = [i for i, line in enumerate(lines) if line.startswith("clients:")]
    assert lines[at] == "clients:"  # not `clients: {}`, under which nothing can go
    assert lines[at + 1].startswith("  # Paste below") and "fingerprint --paste" in lines[at + 1]
    assert all(not line.strip() or line.startswith((" ", "#")) for line in lines[at + 1 :])


def test_fingerprint_paste_prints_keygens_block_again_without_force(tmp_path):
    home = ClientHome(tmp_path / "home")
    keygen = run_cli(home, "keygen")
    assert keygen.returncode == 0, keygen.stderr
    key = home.key.read_bytes()

    paste = run_cli(home, "fingerprint", "--paste")
    assert paste.returncode == 0, paste.stderr
    block = paste.stdout.decode()
    assert block.startswith("  ") and block.endswith("\n")
    assert block in keygen.stdout.decode()
    assert "-----BEGIN CERTIFICATE-----" in block and "    allow:" in block
    assert home.key.read_bytes() == key  # nothing regenerated


def test_fingerprint_paste_without_identity_says_to_run_keygen(tmp_path):
    result = run_cli(ClientHome(tmp_path / "empty"), "fingerprint", "--paste")
    assert result.returncode == 1
    assert b"keygen" in result.stderr and not result.stdout


# -- the folders radmind makes ---------------------------------------------------------


def test_daemon_creates_a_missing_put_default_dir_0755_and_logs_it(
    daemon_factory, client_home, tmp_path
):
    default_dir = tmp_path / "var" / "tmp" / "radmin"
    daemon = daemon_factory(
        {"ops": {"cert": str(client_home.cert), "allow": {"put": ["/**"]}}},
        umask=0o077,
        put={"default_dir": str(default_dir)},
    )
    for folder in (tmp_path / "var", default_dir.parent, default_dir):
        assert mode(folder) == 0o755, folder
        assert folder.stat().st_uid == os.geteuid()
    event = daemon.wait_for_event(
        lambda e: e.get("event") == "created_folder" and e.get("key") == "put.default_dir"
    )
    assert event["path"] == str(default_dir)

    upload = tmp_path / "notes.txt"
    upload.write_text("hello\n")
    trust(client_home, daemon)
    put = run_cli(client_home, "put", str(upload), daemon.address)
    assert put.returncode == 0, put.stderr
    assert (default_dir / "notes.txt").read_text() == "hello\n"


def test_reload_creates_a_new_put_default_dir_or_is_rejected(daemon, client_home, tmp_path):
    trust(client_home, daemon)
    new_dir = tmp_path / "new-uploads"
    daemon.config["put"] = {"default_dir": str(new_dir)}
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_event(lambda e: e.get("event") == "reloaded")
    assert new_dir.is_dir() and mode(new_dir) == 0o755
    assert daemon.wait_for_event(lambda e: e.get("path") == str(new_dir))["event"] == (
        "created_folder"
    )

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    daemon.config["put"] = {"default_dir": str(blocker / "uploads")}
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    rejected = daemon.wait_for_event(lambda e: e.get("event") == "reload_rejected")
    assert any("put.default_dir" in p and str(blocker) in p for p in rejected["problems"])
    assert run_cli(client_home, "ping", daemon.address).returncode == 0


def test_a_put_default_dir_that_cannot_be_made_stops_the_start_with_its_reason(etc, tmpfs):
    """What `check` cannot foresee (a file system out of inodes) still stops `run` with
    a message naming the key, the folder and the reason."""
    full = tmpfs("no-inodes", "size=1m,nr_inodes=1")  # the root folder uses the only one
    path = write_config(etc, f'listen: ["127.0.0.1:0"]\nput:\n  default_dir: {full}/uploads\n')
    assert run_radmind("check", "-c", str(path)).stdout == "ok\n"
    result = run_radmind("run", "-c", str(path), timeout=20)
    assert result.returncode == 1
    assert f"cannot create put.default_dir {full}/uploads: No space left on device" in (
        result.stderr
    )
    assert "certificate" not in result.stderr


# -- check catches what run would refuse -------------------------------------------------


@pytest.fixture
def etc(tmp_path, server_identity) -> Path:
    """A folder with the server identity and a config for it, listening on loopback."""
    folder = tmp_path / "etc"
    folder.mkdir()
    for name in ("server.key", "server.crt"):
        (folder / name).write_bytes((server_identity / name).read_bytes())
        (folder / name).chmod(0o600)
    return folder


def write_config(folder: Path, body: str) -> Path:
    """`body` plus identity lines; folders default to places inside `folder`."""
    text = "identity: {key: server.key, cert: server.crt}\n" + body
    if "state_dir:" not in body:
        text += f"state_dir: {folder / 'state'}\n"
    if "default_dir:" not in body:
        text += f"put:\n  default_dir: {folder / 'uploads'}\n"
    path = folder / "radmind.yaml"
    path.write_text(text)
    return path


def assert_refused_by_check_and_run(path: Path, line: int, key: str, *fragments: str) -> None:
    """`check` and `run` both exit 1 with a problem `PATH:LINE: KEY: ...` holding every
    fragment, and nothing blames the certificates."""
    for command in ("check", "run"):
        result = run_radmind(command, "-c", str(path), timeout=20)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        named = [p for p in result.stderr.splitlines() if p.startswith(f"{path}:{line}: {key}: ")]
        assert named, (command, result.stderr)
        assert all(fragment in named[0] for fragment in fragments), (command, named)
        assert "certificate" not in result.stderr, result.stderr


def test_state_dir_that_cannot_be_created_is_named_by_check_and_run(etc):
    blocker = etc / "not-a-folder"
    blocker.write_text("")
    path = write_config(etc, f'listen: ["127.0.0.1:0"]\nstate_dir: {blocker}/state\n')
    assert_refused_by_check_and_run(path, 3, "state_dir", f"cannot use {blocker}/state", "folder")


@pytest.mark.parametrize("exists", [True, False], ids=["read-only", "under-read-only"])
def test_state_dir_on_a_read_only_mount_is_named_by_check_and_run(etc, tmpfs, exists):
    read_only = tmpfs("ro", "ro,size=1m")
    state = read_only if exists else read_only / "state"
    path = write_config(etc, f'listen: ["127.0.0.1:0"]\nstate_dir: {state}\n')
    assert_refused_by_check_and_run(path, 3, "state_dir", "not writable")


def test_check_lists_every_bad_listen_entry_at_its_line(etc):
    body = (
        "listen:\n"
        '  - "127.0.0.1:0"\n'
        '  - "nonsense"\n'
        '  - "0.0.0.0:7420"\n'
        '  - "127.0.0.1:7420"\n'
        '  - "[::1]:99999"\n'
        '  - "0.0.0.0:7420"\n'
    )
    path = write_config(etc, body)
    result = run_radmind("check", "-c", str(path))
    assert result.returncode == 1
    problems = result.stderr.splitlines()
    assert [p.split(": ")[0] for p in problems] == [f"{path}:{n}" for n in (4, 6, 7, 8)]
    assert all(": listen: " in p for p in problems)
    assert "'nonsense'" in problems[0]
    assert "'127.0.0.1:7420' overlaps '0.0.0.0:7420'" in problems[1]
    assert "99999" in problems[2]
    assert "'0.0.0.0:7420' is listed twice" in problems[3]


def test_run_names_the_address_already_in_use(etc):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(etc, f'listen: ["127.0.0.1:0", "127.0.0.1:{port}"]\n')
        assert run_radmind("check", "-c", str(path)).stdout == "ok\n"  # in use is not static
        result = run_radmind("run", "-c", str(path), timeout=20)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr


@pytest.mark.parametrize("where", ["/nonexistent.yaml", "etc/radmin/radmind.yaml"])
def test_a_missing_config_suggests_radmind_init(tmp_path, where):
    path = Path(where) if where.startswith("/") else tmp_path / where
    for command in ("check", "run", "fingerprint"):
        result = run_radmind(command, "-c", str(path))
        assert result.returncode == 1
        assert f"radmind init --dir {path.parent}" in result.stderr, result.stderr


def test_daemon_creates_state_dir_and_its_journal(file_daemon_factory, server_identity, tmp_path):
    state = tmp_path / "deep" / "state"
    config = {**base_config(server_identity, tmp_path), "state_dir": str(state)}
    path = tmp_path / "radmind.yaml"
    path.write_text(yaml.safe_dump(config))
    daemon = file_daemon_factory(path)
    assert (state / "inflight").is_dir() and mode(state) == 0o755
    assert daemon.wait_for_event(lambda e: e.get("key") == "state_dir")["path"] == str(state)
