"""`radmind check`: a good config says `ok`; every bad one says FILE:LINE: KEY: what.

Everything here runs the real `radmind` program on real files, except the checks that
the documentation generated from the schema (example config, key reference) is complete.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from support import RADMIND, base_config, make_client_home

from radmin.config import (
    CLIENT_SCHEMA,
    SCHEMA,
    ClientsSection,
    example_yaml,
    load_config,
    reference_markdown,
)

REPO = Path(__file__).resolve().parent.parent

# Every key the user-facing contract (interface.md) documents for radmind.yaml.
CONTRACT_KEYS = [
    "listen",
    "identity.key",
    "identity.cert",
    "clients",
    "clients.NAME.cert",
    "clients.NAME.allow.exec",
    "clients.NAME.allow.put",
    "clients.NAME.run_as",
    "put.default_dir",
    "shell.record",
    "limits.max_connections",
    "limits.handshake_timeout",
    "limits.exec_timeout",
    "limits.max_put_size",
    "log.level",
    "log.format",
]


# -- helpers --------------------------------------------------------------------------


def check(
    config: Path | None, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real `radmind check [-c config]`."""
    full_env = {k: v for k, v in os.environ.items() if k != "RADMIN_CONFIG"}
    full_env.update(env or {})
    args = [RADMIND, "check"] + (["-c", str(config)] if config is not None else [])
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=full_env, timeout=60)


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based number of the line holding the n-th occurrence of `needle`."""
    seen = 0
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} (occurrence {occurrence}) not in:\n{text}")


def problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_reports(
    result: subprocess.CompletedProcess[str],
    path: Path,
    line: int | tuple[int, ...],
    key: str,
    *fragments: str,
) -> str:
    """The run failed with exit 1 and reported `path:line: key: ...` (with `fragments`).

    `line` may be a tuple of acceptable lines (e.g. a client's name or its first key).
    """
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "ok" not in result.stdout.split()
    lines = line if isinstance(line, tuple) else (line,)
    prefixes = tuple(f"{path.resolve()}:{n}: {key}: " for n in lines)
    matching = [p for p in problems(result) if p.startswith(prefixes)]
    assert matching, f"no problem starting with {prefixes!r} in:\n{result.stderr}"
    for fragment in fragments:
        assert any(fragment in p for p in matching), (fragment, matching)
    return matching[0]


@pytest.fixture
def folder(tmp_path, server_identity) -> Path:
    """A daemon folder: server.key, server.crt and clients/ops.crt beside the config."""
    folder = tmp_path / "etc-radmin"
    (folder / "clients").mkdir(parents=True)
    shutil.copy(server_identity / "server.key", folder / "server.key")
    shutil.copy(server_identity / "server.crt", folder / "server.crt")
    ops = make_client_home(tmp_path / "ops-home")
    shutil.copy(ops.cert, folder / "clients" / "ops.crt")
    return folder


GOOD = """\
listen: ["127.0.0.1:7420", "[::1]:7420"]
identity:
  key: server.key
  cert: server.crt
clients:
  ops:
    cert: clients/ops.crt
    allow:
      exec: ["*"]
      put: ["/srv/**", "/tmp/**"]
    run_as: root
put:
  default_dir: /var/tmp/radmin
limits:
  max_connections: 512
  handshake_timeout: 10
  exec_timeout: 3600
  max_put_size: 10GiB
log:
  level: info
  format: json
"""


def write(folder: Path, text: str, name: str = "radmind.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


# -- the good case --------------------------------------------------------------------


def test_check_prints_ok_and_exits_0_for_a_good_config(folder):
    result = check(write(folder, GOOD))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    assert result.stderr == ""


def test_check_accepts_the_config_the_test_suite_uses(tmp_path, server_identity):
    path = tmp_path / "radmind.yaml"
    path.write_text(yaml.safe_dump(base_config(server_identity, tmp_path)))
    result = check(path)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


def test_check_accepts_the_client_cert_as_inline_pem(folder):
    pem = (folder / "clients" / "ops.crt").read_text().strip().replace("\n", "\n      ")
    text = GOOD.replace("cert: clients/ops.crt", f"cert: |\n      {pem}")
    result = check(write(folder, text))
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


# -- each kind of mistake: exit 1 and FILE:LINE: KEY ------------------------------------


def test_check_names_file_line_and_key_for_unknown_top_level_key(folder):
    text = GOOD + "listen_adress: 1\n"
    path = write(folder, text)
    assert_reports(check(path), path, line_of(text, "listen_adress"), "listen_adress", "unknown")


def test_check_names_file_line_and_key_for_unknown_nested_key(folder):
    text = GOOD.replace("  max_connections: 512", "  max_conection: 512")
    path = write(folder, text)
    message = assert_reports(
        check(path), path, line_of(text, "max_conection"), "limits.max_conection", "unknown"
    )
    assert "max_connections" in message  # the known keys are listed, so the typo is obvious


LISTEN = 'listen: ["127.0.0.1:7420", "[::1]:7420"]'
# (replace this, with that) in GOOD; the line holding `marker`; the key; words the message has
BAD_VALUES = {
    "unknown_key_inside_a_client": (
        ("    run_as: root", "    runas: root"),
        "runas",
        "clients.ops.runas",
        ("unknown",),
    ),
    "wrong_type": (
        ("max_connections: 512", 'max_connections: "many"'),
        "max_connections",
        "limits.max_connections",
        ("many",),
    ),
    "a_mapping_where_a_list_belongs": (
        ('exec: ["*"]', "exec: {any: true}"),
        "exec:",
        "clients.ops.allow.exec",
        (),
    ),
    "nonsense_listen_address": (
        (LISTEN, 'listen: ["nonsense"]'),
        "listen:",
        "listen",
        ("nonsense",),
    ),
    "listen_address_without_port": (
        (LISTEN, 'listen: ["1.2.3.4"]'),
        "listen:",
        "listen",
        ("1.2.3.4", "port"),
    ),
    "listen_port_out_of_range": (
        (LISTEN, 'listen: ["1.2.3.4:70000"]'),
        "listen:",
        "listen",
        ("70000",),
    ),
    "missing_identity_cert_file": (
        ("cert: server.crt", "cert: no-such-server.crt"),
        "no-such-server.crt",
        "identity.cert",
        ("no-such-server.crt",),
    ),
    "missing_identity_key_file": (
        ("key: server.key", "key: no-such-server.key"),
        "no-such-server.key",
        "identity.key",
        ("no-such-server.key",),
    ),
    "bad_size_string": (
        ("max_put_size: 10GiB", "max_put_size: 10 bananas"),
        "bananas",
        "limits.max_put_size",
        ("10 bananas",),
    ),
    "bad_log_level": (("level: info", "level: verbose"), "verbose", "log.level", ("verbose",)),
    "bad_log_format": (("format: json", "format: xml"), "format: xml", "log.format", ("xml",)),
    "zero_timeout": (
        ("handshake_timeout: 10", "handshake_timeout: 0"),
        "handshake_timeout",
        "limits.handshake_timeout",
        (),
    ),
    "zero_exec_timeout": (
        ("exec_timeout: 3600", "exec_timeout: 0"),
        "exec_timeout",
        "limits.exec_timeout",
        ("greater than 0",),
    ),
    "exec_timeout_not_a_number": (
        ("exec_timeout: 3600", "exec_timeout: forever"),
        "exec_timeout",
        "limits.exec_timeout",
        ("forever",),
    ),
    "bad_client_name": (("  ops:", "  'bad name!':"), "bad name!", "clients.bad name!", ()),
    "run_as_unknown_user": (
        ("run_as: root", "run_as: no-such-user-radmin-test"),
        "run_as",
        "clients.ops.run_as",
        ("no-such-user-radmin-test",),
    ),
    "relative_put_default_dir": (
        ("default_dir: /var/tmp/radmin", "default_dir: var/tmp/radmin"),
        "default_dir",
        "put.default_dir",
        ("var/tmp/radmin",),
    ),
    "relative_put_pattern": (
        ('put: ["/srv/**", "/tmp/**"]', 'put: ["srv/**"]'),
        "srv/**",
        "clients.ops.allow.put",
        ("absolute",),
    ),
    "relative_program_path": (
        ('exec: ["*"]', 'exec: ["./deploy.sh"]'),
        "deploy.sh",
        "clients.ops.allow.exec",
        ("bare name or an absolute path",),
    ),
    "wildcard_program": (
        ('exec: ["*"]', 'exec: ["system* status"]'),
        "system*",
        "clients.ops.allow.exec",
        ("literal",),
    ),
    "env_name_with_newline": (
        ('put: ["/srv/**", "/tmp/**"]', 'put: []\n      env: ["FOO\\n"]'),
        "env:",
        "clients.ops.allow.env",
        ("not a valid environment variable name",),
    ),
    "env_unsafe_not_a_boolean": (
        ('put: ["/srv/**", "/tmp/**"]', 'put: []\n      env_unsafe: "yes"'),
        "env_unsafe",
        "clients.ops.allow.env_unsafe",
        ("true or false",),
    ),
    "shell_not_a_boolean": (
        ('put: ["/srv/**", "/tmp/**"]', 'put: []\n      shell: 1'),
        "shell:",
        "clients.ops.allow.shell",
        ("true or false",),
    ),
    "shell_record_not_a_boolean": (
        ("log:\n", "shell:\n  record: sometimes\nlog:\n"),
        "record:",
        "shell.record",
        ("true or false",),
    ),
    "a_duplicate_key": (
        ("  level: info\n", "  level: info\n  level: debug\n"),
        "level: debug",
        "log.level",
        ("duplicate",),
    ),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_check_names_file_line_and_key_for_a_bad_value(folder, case):
    """Each case changes one line of a good config: check names the file, that line and
    the key, and says what is wrong."""
    (old, new), marker, key, words = BAD_VALUES[case]
    text = GOOD.replace(old, new)
    assert text != GOOD, f"{case}: the replacement did not apply"
    path = write(folder, text)
    assert_reports(check(path), path, line_of(text, marker), key, *words)


def test_check_names_file_line_and_key_for_a_client_cert_file_with_garbage(folder):
    (folder / "clients" / "ops.crt").write_text("this is not a certificate\n")
    path = write(folder, GOOD)
    assert_reports(
        check(path), path, line_of(GOOD, "clients/ops.crt"), "clients.ops.cert", "ops.crt"
    )


def test_check_names_file_line_and_key_for_a_pem_whose_content_is_not_a_certificate(folder):
    garbage = "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n"
    (folder / "clients" / "ops.crt").write_text(garbage)
    path = write(folder, GOOD)
    assert_reports(check(path), path, line_of(GOOD, "clients/ops.crt"), "clients.ops.cert")


def test_check_names_file_line_and_key_for_a_private_key_given_as_client_cert(folder):
    shutil.copy(folder / "server.key", folder / "clients" / "ops.crt")
    path = write(folder, GOOD)
    assert_reports(check(path), path, line_of(GOOD, "clients/ops.crt"), "clients.ops.cert")


def test_check_names_file_line_and_key_for_a_missing_client_cert_file(folder):
    (folder / "clients" / "ops.crt").unlink()
    path = write(folder, GOOD)
    assert_reports(
        check(path), path, line_of(GOOD, "clients/ops.crt"), "clients.ops.cert", "ops.crt"
    )


def test_check_names_client_without_cert(folder):
    text = GOOD.replace("    cert: clients/ops.crt\n", "")
    path = write(folder, text)
    # The entry `ops:` has no cert: the problem points at the entry (its name or first key).
    entry = (line_of(text, "  ops:"), line_of(text, "allow:"))
    message = assert_reports(check(path), path, entry, "clients.ops.cert")
    assert "missing" in message


TWO_CLIENTS_SAME_CERT = """\
listen: ["127.0.0.1:7420"]
identity:
  key: server.key
  cert: server.crt
clients:
  ops:
    cert: clients/ops.crt
  backup:
    allow:
      exec: ["*"]
    cert: clients/ops.crt
"""


def test_check_rejects_two_clients_with_the_same_cert(folder):
    path = write(folder, TWO_CLIENTS_SAME_CERT)
    result = check(path)
    assert result.returncode == 1, result.stdout
    (message,) = [p for p in problems(result) if ": clients.backup.cert: " in p]
    assert message.startswith(f"{path}:")
    assert "ops" in message  # names the client that already has this certificate


def test_check_points_at_the_cert_line_of_the_second_client_with_the_same_cert(folder):
    path = write(folder, TWO_CLIENTS_SAME_CERT)
    line = line_of(TWO_CLIENTS_SAME_CERT, "cert: clients/ops.crt", occurrence=2)
    assert_reports(check(path), path, line, "clients.backup.cert", "ops")


def test_check_names_file_and_line_for_a_yaml_syntax_error(folder):
    text = GOOD.replace('exec: ["*"]', 'exec: ["*"')
    path = write(folder, text)
    result = check(path)
    assert result.returncode == 1
    assert re.search(rf"^{re.escape(str(path))}:\d+: ", result.stderr, re.MULTILINE), result.stderr


def test_check_reports_every_problem_in_the_file_not_just_the_first(folder):
    text = """\
listen: ["nonsense"]
identity:
  key: server.key
  cert: missing.crt
clients:
  ops:
    cert: clients/ops.crt
    run_as: no-such-user-radmin-test
  nocert:
    allow:
      exec: ["*"]
put:
  default_dir: relative/dir
limits:
  max_conection: 5
  max_connections: "many"
  max_put_size: 10 bananas
log:
  level: verbose
bogus: 1
"""
    path = write(folder, text)
    result = check(path)
    expected = [
        (line_of(text, "listen:"), "listen"),
        (line_of(text, "missing.crt"), "identity.cert"),
        (line_of(text, "run_as"), "clients.ops.run_as"),
        ((line_of(text, "nocert:"), line_of(text, "nocert:") + 1), "clients.nocert.cert"),
        (line_of(text, "default_dir"), "put.default_dir"),
        (line_of(text, "max_conection"), "limits.max_conection"),
        (line_of(text, "max_connections"), "limits.max_connections"),
        (line_of(text, "bananas"), "limits.max_put_size"),
        (line_of(text, "verbose"), "log.level"),
        (line_of(text, "bogus"), "bogus"),
    ]
    for line, key in expected:
        assert_reports(result, path, line, key)
    assert len(problems(result)) == len(expected), result.stderr


# -- which file, and paths inside it ----------------------------------------------------


def test_check_uses_radmin_config_when_c_is_absent(folder, tmp_path):
    good = write(folder, GOOD)
    result = check(None, cwd=tmp_path, env={"RADMIN_CONFIG": str(good)})
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr

    bad = write(folder, GOOD + "bogus: 1\n", name="bad.yaml")
    result = check(None, cwd=tmp_path, env={"RADMIN_CONFIG": str(bad)})
    assert_reports(result, bad, line_of(bad.read_text(), "bogus"), "bogus")


def test_check_c_beats_radmin_config(folder, tmp_path):
    good = write(folder, GOOD)
    bad = write(folder, GOOD + "bogus: 1\n", name="bad.yaml")
    result = check(good, cwd=tmp_path, env={"RADMIN_CONFIG": str(bad)})
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


def test_check_missing_config_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere" / "radmind.yaml"
    result = check(missing)
    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert "No such file" in result.stderr or "no such file" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_check_missing_config_named_by_radmin_config_is_a_clear_error(tmp_path):
    missing = tmp_path / "radmind.yaml"
    result = check(None, cwd=tmp_path, env={"RADMIN_CONFIG": str(missing)})
    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_relative_paths_resolve_against_the_config_folder_not_the_cwd(folder, tmp_path):
    path = write(folder, GOOD)  # server.key, server.crt, clients/ops.crt: all relative
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = check(path, cwd=elsewhere)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


def test_relative_c_path_and_relative_paths_inside_resolve_from_the_config_folder(folder):
    write(folder, GOOD)
    result = check(Path(folder.name) / "radmind.yaml", cwd=folder.parent)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


def test_a_missing_relative_file_is_reported_with_its_path_in_the_config_folder(folder, tmp_path):
    (folder / "clients" / "ops.crt").unlink()
    (tmp_path / "clients").mkdir()  # a decoy: the same relative path under the cwd
    shutil.copy(folder / "server.crt", tmp_path / "clients" / "ops.crt")
    path = write(folder, GOOD)
    result = check(path, cwd=tmp_path)
    assert_reports(
        result,
        path,
        line_of(GOOD, "clients/ops.crt"),
        "clients.ops.cert",
        str(folder / "clients" / "ops.crt"),
    )


# -- radmind check vs radmind run: what check accepts must start ------------------------


def test_check_rejects_an_identity_key_that_does_not_match_the_cert(folder, tmp_path):
    from radmin.identity import create_identity

    create_identity(tmp_path / "other.key", tmp_path / "other.crt", "radmind")
    shutil.copy(tmp_path / "other.key", folder / "server.key")
    path = write(folder, GOOD)
    result = check(path)
    assert result.returncode == 1, result.stdout
    assert re.search(
        rf"^{re.escape(str(path))}:\d+: identity\.(key|cert): ", result.stderr, re.MULTILINE
    )


def test_check_rejects_a_malformed_identity_key(folder):
    (folder / "server.key").write_text(
        "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n"
    )
    path = write(folder, GOOD)
    assert_reports(check(path), path, line_of(GOOD, "key: server.key"), "identity.key")


# -- documentation generated from the schema ------------------------------------------


def schema_keys() -> list[str]:
    """Every leaf key of the schema, dotted, clients' keys as clients.NAME.*."""
    keys: list[str] = []

    def walk(schema, prefix: str) -> None:
        for key, spec in schema.items():
            dotted = f"{prefix}{key}"
            if isinstance(spec, dict):
                walk(spec, dotted + ".")
            elif isinstance(spec, ClientsSection):
                keys.append(dotted)
                walk(CLIENT_SCHEMA, dotted + ".NAME.")
            else:
                keys.append(dotted)

    walk(SCHEMA, "")
    return keys


def test_the_schema_declares_every_key_of_the_contract():
    assert set(CONTRACT_KEYS) <= set(schema_keys())


def test_example_yaml_passes_check_beside_server_key_and_cert(folder):
    path = write(folder, example_yaml())
    result = check(path)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


@pytest.mark.parametrize(
    ("line", "expected"), [("exec_timeout: 3600", 3600.0), ("exec_timeout: null", None), ("", None)]
)
def test_exec_timeout_is_optional_and_off_by_default(folder, line, expected):
    """Without -t a command has no time limit unless the daemon sets one."""
    config = load_config(write(folder, GOOD.replace("exec_timeout: 3600", line)))
    assert config.limits.exec_timeout == expected


def test_example_yaml_without_client_example_passes_check(folder):
    (folder / "clients" / "ops.crt").unlink()
    path = write(folder, example_yaml(client_example=False))
    result = check(path)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


def test_example_yaml_shows_every_key(folder):
    """Opt-in settings (no default) are shown commented out; uncomment them to count."""
    text = example_yaml()
    for opt_in in ("  # file: ", "  # exec_timeout: "):
        assert opt_in in text
        text = text.replace(opt_in, opt_in.replace("# ", ""))
    data = yaml.safe_load(text)
    shown: list[str] = []

    def flatten(value, prefix: str) -> None:
        for key, item in value.items():
            dotted = "clients.NAME" if prefix == "clients." else f"{prefix}{key}"
            if dotted == "clients":
                shown.append(dotted)
            if isinstance(item, dict):
                flatten(item, dotted + ".")
            else:
                shown.append(dotted)

    flatten(data, "")
    assert set(schema_keys()) == set(shown)


def test_example_yaml_states_the_defaults(folder):
    """Loading the example gives exactly what an empty config gives: it does not lie."""
    example = load_config(write(folder, example_yaml(client_example=False), "example.yaml"))
    defaults = load_config(write(folder, "", "empty.yaml"))
    for field in ("listen", "key", "cert", "put_default_dir", "state_dir", "limits", "log"):
        assert getattr(example, field) == getattr(defaults, field), field


def test_reference_markdown_mentions_every_key():
    markdown = reference_markdown()
    for key in {*CONTRACT_KEYS, *schema_keys()}:
        assert f"`{key}`" in markdown, key


def test_reference_markdown_has_one_row_per_key():
    rows = [line for line in reference_markdown().splitlines() if line.startswith("| `")]
    documented = [re.match(r"\| `([^`]+)`", row).group(1) for row in rows]
    assert sorted(documented) == sorted(schema_keys())


def test_docs_config_md_is_the_generated_reference():
    path = REPO / "docs" / "config.md"
    if not path.exists():
        pytest.skip("docs/config.md is not written yet")
    assert reference_markdown() in path.read_text(), (
        "docs/config.md is out of date: regenerate it from radmin.config.reference_markdown()"
    )


def test_config_radmind_yaml_is_the_generated_example():
    path = REPO / "config" / "radmind.yaml"
    if not path.exists():
        pytest.skip("config/radmind.yaml is not written yet")
    assert path.read_text() == example_yaml(), (
        "config/radmind.yaml is out of date: regenerate it from radmin.config.example_yaml()"
    )
