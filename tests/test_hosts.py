"""HOSTS arguments: `name`, `name:port`, `[v6addr]:port`, aliases and `@group`s.

Aliases and groups come from a real `config.yaml` in a temporary client home; a few
tests run the real `radmin-cli` to show how a bad HOSTS argument reaches the user.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import run_cli

from radmin import DEFAULT_PORT
from radmin.hosts import HostBook, HostSpecError, Target, fold, parse_host_port

# -- parse_host_port ------------------------------------------------------------------


def test_the_default_port_is_7420():
    assert DEFAULT_PORT == 7420
    assert parse_host_port("web1") == ("web1", 7420)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("web1", ("web1", 7420)),
        ("web1:7421", ("web1", 7421)),
        ("web1.example.com:22", ("web1.example.com", 22)),
        ("10.0.0.11", ("10.0.0.11", 7420)),
        ("10.0.0.11:7422", ("10.0.0.11", 7422)),
        ("[::1]:7421", ("::1", 7421)),
        ("[::1]", ("::1", 7420)),
        ("::1", ("::1", 7420)),
        ("2001:db8::12", ("2001:db8::12", 7420)),
        ("[2001:db8::12]:7421", ("2001:db8::12", 7421)),
        ("[fe80::1%eth0]:7421", ("fe80::1%eth0", 7421)),
        ("web1:65535", ("web1", 65535)),
        ("  web1:7421  ", ("web1", 7421)),
    ],
)
def test_parse_host_port(text, expected):
    assert parse_host_port(text) == expected


def test_parse_host_port_uses_the_given_default_port():
    assert parse_host_port("web1", default_port=22) == ("web1", 22)
    assert parse_host_port("[::1]", default_port=22) == ("::1", 22)
    assert parse_host_port("web1:7421", default_port=22) == ("web1", 7421)


@pytest.mark.parametrize(
    "text",
    [
        "web1:abc",
        "web1:65536",
        "web1:99999",
        "web1:-1",
        "web1:+80",
        "web1:80x",
        "web1: 80",
        "[::1]:http",
        "[::1]:65536",
    ],
)
def test_parse_host_port_rejects_bad_ports(text):
    with pytest.raises(ValueError, match="port"):
        parse_host_port(text)


@pytest.mark.parametrize("text", ["[::1", "[::1:7421", "[2001:db8::12"])
def test_parse_host_port_rejects_a_missing_closing_bracket(text):
    with pytest.raises(ValueError, match=r"\]"):
        parse_host_port(text)


@pytest.mark.parametrize("text", ["[::1]7421", "[::1]x"])
def test_parse_host_port_rejects_junk_after_the_bracket(text):
    with pytest.raises(ValueError):
        parse_host_port(text)


@pytest.mark.parametrize("text", ["", "   ", ":7421", "[]:7421", "[]"])
def test_parse_host_port_rejects_an_empty_host(text):
    with pytest.raises(ValueError):
        parse_host_port(text)


# -- Target ---------------------------------------------------------------------------


def test_target_host_port_brackets_ipv6():
    assert Target("v6", "::1", 7420).host_port == "[::1]:7420"
    assert Target("v6", "2001:db8::12", 7421).host_port == "[2001:db8::12]:7421"


def test_target_host_port_leaves_names_and_ipv4_alone():
    assert Target("web1", "web1", 7421).host_port == "web1:7421"
    assert Target("10.0.0.11", "10.0.0.11", 7420).host_port == "10.0.0.11:7420"


def test_target_host_port_round_trips_through_parse_host_port():
    for text in ("web1:7421", "[::1]:7420", "10.0.0.1:1", "[2001:db8::12]:7421"):
        host, port = parse_host_port(text)
        assert Target(text, host, port).host_port == text


# -- HostBook -------------------------------------------------------------------------

CONFIG = """\
hosts:
  web1: 10.0.0.11
  web2: "[2001:db8::12]:7421"
  db1: db1.example.com:7422
groups:
  web: [web1, web2, "10.0.0.13:7422"]
  db: [db1]
  all: ["@web", "@db", backup.example.com]
  both: ["@web", "@all"]
"""

WEB = [
    Target("web1", "10.0.0.11", 7420),
    Target("web2", "2001:db8::12", 7421),
    Target("10.0.0.13:7422", "10.0.0.13", 7422),
]
DB1 = Target("db1", "db1.example.com", 7422)
BACKUP = Target("backup.example.com", "backup.example.com", 7420)


@pytest.fixture
def book_path(tmp_path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def book(book_path) -> HostBook:
    return HostBook.load(book_path)


def test_hostbook_alias_resolves_to_its_address_and_keeps_its_name_as_label(book):
    assert book.resolve("web1") == [Target("web1", "10.0.0.11", 7420)]
    assert book.resolve("web2") == [Target("web2", "2001:db8::12", 7421)]
    assert book.resolve("db1") == [DB1]


def test_hostbook_plain_addresses_pass_through(book):
    assert book.resolve("web9:7000") == [Target("web9:7000", "web9", 7000)]
    assert book.resolve("[::1]") == [Target("[::1]", "::1", 7420)]


def test_hostbook_group_expands_in_order(book):
    assert book.resolve("@web") == WEB


def test_hostbook_nested_groups_expand(book):
    assert book.resolve("@all") == [*WEB, DB1, BACKUP]


def test_hostbook_resolve_deduplicates_keeping_the_first_position(book):
    assert book.resolve("web1,@web") == WEB
    assert book.resolve("web2,@web") == [WEB[1], WEB[0], WEB[2]]
    assert book.resolve("@web,web1,web1") == WEB
    # `both` reaches the web hosts twice (directly and through @all): each once.
    assert book.resolve("@both") == [*WEB, DB1, BACKUP]


def test_hostbook_resolve_accepts_spaces_around_commas(book):
    assert book.resolve("web1, db1") == [WEB[0], DB1]


def test_hostbook_unknown_group_raises(book):
    with pytest.raises(HostSpecError, match="@nope"):
        book.resolve("web1,@nope")


@pytest.mark.parametrize(
    ("groups", "spec"),
    [
        ("loop: ['@loop']", "@loop"),
        ("a: [web1, '@b']\n  b: ['@a']", "@a"),
        ("a: ['@b']\n  b: ['@c']\n  c: [x, '@a']", "@b"),
    ],
    ids=["self", "pair", "triangle"],
)
def test_hostbook_group_including_itself_raises(tmp_path, groups, spec):
    path = tmp_path / "config.yaml"
    path.write_text(f"hosts:\n  web1: 10.0.0.11\ngroups:\n  {groups}\n")
    with pytest.raises(HostSpecError, match="itself"):
        HostBook.load(path).resolve(spec)


def test_hostbook_a_group_used_twice_is_not_a_loop(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("groups:\n  web: [w1, w2]\n  twice: ['@web', '@web']\n")
    assert [t.label for t in HostBook.load(path).resolve("@twice")] == ["w1", "w2"]


def test_hostbook_missing_config_means_no_aliases_or_groups(tmp_path):
    book = HostBook.load(tmp_path / "config.yaml")
    assert book.resolve("web1") == [Target("web1", "web1", 7420)]
    with pytest.raises(HostSpecError):
        book.resolve("@web")


def test_hostbook_empty_config_means_no_aliases(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("# nothing yet\n")
    assert HostBook.load(path).resolve("web1") == [Target("web1", "web1", 7420)]


def test_hostbook_malformed_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("hosts:\n  web1: [10.0.0.11\ngroups: {\n")
    with pytest.raises(HostSpecError) as caught:
        HostBook.load(path)
    assert str(path) in str(caught.value)
    assert "YAML" in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "- web1\n- web2\n",  # a list, not a mapping
        "hosts:\n  web1: 10.0.0.11\nhost_groups: {}\n",  # an unknown section
        "hosts: [web1, web2]\n",  # hosts must be a mapping
        "hosts:\n  web1:\n",  # an alias with no address
        "hosts:\n  web1: {address: 10.0.0.11}\n",
        "groups:\n  web: web1\n",  # a group must be a list
        "groups: [web1]\n",
    ],
    ids=[
        "list",
        "unknown-section",
        "hosts-list",
        "alias-empty",
        "alias-mapping",
        "group-string",
        "groups-list",
    ],
)
def test_hostbook_wrong_shapes_are_clear_errors(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(HostSpecError) as caught:
        HostBook.load(path)
    assert str(path) in str(caught.value)


def test_hostbook_unreadable_config_is_a_clear_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.mkdir()
    with pytest.raises(HostSpecError) as caught:
        HostBook.load(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("spec", ["", ",", "web1,,web2", "web1,"])
def test_hostbook_empty_entries_are_errors(book, spec):
    with pytest.raises(HostSpecError):
        book.resolve(spec)


def test_hostbook_alias_with_a_bad_port_is_an_error_naming_file_line_and_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("hosts:\n  web1: 10.0.0.11:99999\n")
    with pytest.raises(HostSpecError, match=rf"^{path}:2: hosts\.web1: .*port"):
        HostBook.load(path)


def test_hostbook_bad_port_in_the_argument_is_a_host_spec_error(book):
    with pytest.raises(HostSpecError, match="port"):
        book.resolve("web1:http")


# -- through the real radmin-cli --------------------------------------------------------


def test_cli_unknown_group_is_a_usage_error_naming_the_group(client_home):
    client_home.config.write_text(CONFIG)
    result = run_cli(client_home, "ping", "web1,@nope")
    assert result.returncode == 2
    assert b"@nope" in result.stderr
    assert b"Traceback" not in result.stderr


def test_cli_malformed_host_config_is_a_usage_error_naming_the_file(client_home):
    client_home.config.write_text("hosts: [unclosed\n")
    result = run_cli(client_home, "ping", "web1")
    assert result.returncode == 2
    assert str(client_home.config).encode() in result.stderr
    assert b"Traceback" not in result.stderr


def test_cli_bad_port_is_a_usage_error(client_home):
    result = run_cli(client_home, "ping", "web1:99999")
    assert result.returncode == 2
    assert b"port" in result.stderr
    assert b"Traceback" not in result.stderr


# -- fold: a set of hosts as ClusterShell writes it --------------------------------------


@pytest.mark.parametrize(
    ("labels", "folded"),
    [
        (["web1"], "web1"),
        (["web1", "web2", "web3", "web5"], "web[1-3,5]"),
        (["web3", "web1", "web2", "web2"], "web[1-3]"),
        (["web01", "web02", "web03", "web10"], "web[01-03,10]"),
        (["web9", "web08", "web10"], "web[08,9,10]"),  # web9 is not web09
        (["web1", "db1", "web2", "db2"], "db[1-2],web[1-2]"),  # naturally sorted
        (["rack1-node1", "rack1-node2", "rack2-node1"], "rack1-node[1-2],rack2-node1"),
        (["10.0.0.1:7420", "10.0.0.2:7420", "10.0.0.3:7420"], "10.0.0.[1-3]:7420"),
        (["10.0.0.1:7421", "10.0.0.2:7422"], "10.0.0.1:7421,10.0.0.2:7422"),
        (["[::1]:7420", "[::2]:7420"], "[::1]:7420,[::2]:7420"),  # brackets are IPv6 here
        (["alpha", "beta", "alpha"], "alpha,beta"),
    ],
)
def test_fold(labels, folded):
    assert fold(labels) == folded
