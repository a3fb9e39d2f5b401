"""`radmind check --explain` and check's warnings, through the real program.

The explanation uses the daemon's own policy functions; test_attacks.py shows the
daemon enforcing the same verdicts.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from docsupport import console_examples, fenced_blocks
from support import RADMIND, expired_identity, make_client_home

CONFIG = """\
listen: ["127.0.0.1:7420"]
identity: {key: server.key, cert: server.crt}
clients:
  web:
    cert: clients/web.crt
    run_as: nobody
    allow:
      exec: ["systemctl status *", "tail -n 5 /var/log/*", "journalctl -u * **"]
      put: ["/srv/app/**"]
      get: ["/var/log/**"]
      env: [DEPLOY_ENV, PATH]
      cwd: ["/srv/app"]
  ops:
    cert: clients/ops.crt
    allow:
      exec: ["*"]
      put: ["/**"]
"""


@pytest.fixture
def config(tmp_path, server_identity) -> Path:
    folder = tmp_path / "etc"
    (folder / "clients").mkdir(parents=True)
    for name in ("server.key", "server.crt"):
        shutil.copy(server_identity / name, folder / name)
    for client in ("web", "ops"):
        home = make_client_home(tmp_path / client)
        shutil.copy(home.cert, folder / "clients" / f"{client}.crt")
    path = folder / "radmind.yaml"
    path.write_text(CONFIG)
    return path


def check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RADMIND, "check", "-c", str(config), *args], capture_output=True, text=True
    )


def test_explain_client_lists_what_it_may_do(config):
    result = check(config, "--explain", "web")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "client web (SHA256:" in out
    assert "run_as: nobody" in out
    assert "exec: only these, matched on argv and run without a shell:" in out
    assert "  systemctl status *\n" in out
    assert "env (-e): DEPLOY_ENV, PATH; names like PATH, LD_*: refused" in out
    assert "cwd (--cwd): /srv/app" in out
    assert "put: /srv/app/**" in out and "get: /var/log/**" in out
    assert "shell: no" in out


def test_explain_unrestricted_client(config):
    out = check(config, "--explain", "ops").stdout
    assert 'exec: any shell command, as root (the daemon\'s user) ("*")' in out
    assert "env (-e): any name" in out


@pytest.mark.parametrize(
    "command, status, says",
    [
        (["systemctl", "status", "nginx"], 0, "allowed by allow.exec pattern 'systemctl status *'"),
        (["journalctl", "-u", "nginx", "--since", "today"], 1, "refused"),
        (["journalctl", "-u", "nginx", "today"], 0, "'journalctl -u * **'"),
        (["tail", "-n", "5", "/var/log/../../etc/shadow"], 1, "refused: no allow.exec pattern"),
        (["systemctl", "status", "nginx;", "id"], 1, "refused: shell syntax"),
        (["reboot"], 1, "refused"),
    ],
)
def test_explain_a_command(config, command, status, says):
    result = check(config, "--explain", "web", "--", *command)
    assert result.returncode == status, result.stdout + result.stderr
    assert says in result.stdout


def test_explain_a_path_gives_put_get_and_cwd_separately(config):
    result = check(config, "--explain", "web", "--path", "/srv/app/config.yml")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "put: allowed by allow.put pattern '/srv/app/**'",
        "get: refused: /srv/app/config.yml matches no allow.get pattern",
        "cwd: refused: /srv/app/config.yml matches no allow.cwd pattern",
    ]
    result = check(config, "--explain", "web", "--path", "/etc/shadow")
    assert result.returncode == 1
    assert all("refused" in line for line in result.stdout.splitlines())
    result = check(config, "--explain", "web", "--path", "/srv/app/../../etc/shadow")
    assert result.returncode == 1 and "without '..'" in result.stdout


def test_explain_unknown_client_is_an_error(config):
    result = check(config, "--explain", "nobody-here")
    assert result.returncode == 1
    assert "no client named 'nobody-here'" in result.stderr


def test_check_warns_on_stderr_and_still_prints_ok(config, tmp_path):
    text = CONFIG.replace(
        '"journalctl -u * **"]', '"journalctl -u * **", "echo x; true", "ls ** -l"]'
    ).replace('put: ["/srv/app/**"]', 'put: ["/srv/app/**", "/srv/../etc/**", "/srv/[ab]"]')
    text = text.replace("  ops:\n", "  ops:\n    run_as: nobody\n")
    config.write_text(text)
    result = check(config)
    assert result.returncode == 0 and result.stdout == "ok\n"
    warnings = result.stderr
    assert "clients.web.allow.exec: warning: pattern 'echo x; true' can never match" in warnings
    assert "'**' only has a meaning as the last word" in warnings
    assert "'/srv/../etc/**' can never match" in warnings
    assert "[ ] { } are literal characters here" in warnings
    assert "clients.ops.run_as: warning: allow.exec has \"*\"" in warnings
    assert "as powerful as user 'nobody'" in warnings


def test_check_warns_about_a_certificate_past_its_date(config, tmp_path):
    old = expired_identity(tmp_path / "old")
    shutil.copy(old / "identity.crt", config.parent / "clients" / "web.crt")
    result = check(config)
    assert result.returncode == 0 and result.stdout == "ok\n"
    assert "clients.web.cert: warning: certificate expired on" in result.stderr


def test_the_examples_in_docs_policy_md_say_what_radmind_says(config):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "policy.md").read_text()
    example_clients = re.search(r"```yaml\n(clients:.*?)```", doc, flags=re.S)
    assert example_clients, "docs/policy.md lost its example config"
    assert example_clients.group(1) in CONFIG  # the doc shows the config tested here
    examples = [
        (command, output)
        for block in fenced_blocks(doc)
        if block.language == "console"
        for _, command, output in console_examples(block)
    ]
    assert len(examples) >= 5
    for command_line, expected in examples:
        words = shlex.split(command_line)
        assert words[:4] == ["radmind", "check", "-c", "radmind.yaml"], command_line
        result = check(config, *words[4:])
        assert result.stdout == expected, command_line


def test_command_or_path_without_explain_is_an_error(config):
    result = check(config, "--path", "/srv")
    assert result.returncode == 1 and "need --explain" in result.stderr
