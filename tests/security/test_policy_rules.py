"""The policy's pure rules as tables: every known escape is a row that must be refused.

These run in milliseconds; tests/security/test_attacks.py replays the important ones
against a real daemon, because a rule that is right here can still be bypassed by the
code around it.
"""

from __future__ import annotations

import pytest

from radmin import policy

RESTRICTED = ("uptime", "systemctl status *", "echo *", "tail -n 5 /var/log/*", "ls **")


@pytest.mark.parametrize(
    "command, rule",
    [
        ("uptime", "uptime"),
        ("systemctl status nginx", "systemctl status *"),
        ("systemctl status nginx.service", "systemctl status *"),
        ("echo hello", "echo *"),
        ("echo 'a b'", "echo *"),  # one argument: no shell will split it again
        ('echo "quoted word"', "echo *"),
        ("tail -n 5 /var/log/syslog", "tail -n 5 /var/log/*"),
        ("tail -n 5 /var/log/.hidden", "tail -n 5 /var/log/*"),
        ("ls", "ls **"),
        ("ls /srv /etc/hosts", "ls **"),
    ],
)
def test_restricted_commands_that_match_name_their_rule(command, rule):
    verdict = policy.exec_verdict(RESTRICTED, command)
    assert verdict.allowed, verdict.reason
    assert verdict.rule == rule


@pytest.mark.parametrize(
    "command",
    [
        # shell syntax, quoted or not: nothing is ever interpreted, so nothing may look so
        "uptime; id",
        "uptime && id",
        "uptime | sh",
        "echo $(id)",
        "echo `id`",
        "echo $HOME",
        "echo ${IFS}",
        "echo $'\\x41'",
        "echo 'a;b'",
        "echo a\\ b",
        "echo > /etc/passwd",
        "echo < /etc/shadow",
        "echo a\nid",
        "echo ~root",
        "echo !!",
        "echo # comment",
        "echo {a,b}",
        "echo *",
        "echo ?",
        "echo [a]",
        "echo a\x1b[2J",
        "echo 'unbalanced",
        # `..` and extra words against `tail -n 5 /var/log/*`
        "tail -n 5 /var/log/../../etc/shadow",
        "tail -n 5 /var/log/..",
        "tail -n 5 /var/log/.",
        "tail -n 5 /var/log/syslog /etc/shadow",
        "tail -n 5 /var/log/sub/file",
        "tail -n 500000 /var/log/syslog",
        "tail -n 5 -f /var/log/syslog",
        # options where the pattern has a plain wildcard
        "systemctl status --help",
        "systemctl status -H root@elsewhere",
        "echo -e x",
        "echo --",
        # the program word is literal
        "/usr/bin/uptime",
        "./uptime",
        "uptime2",
        "Uptime",
        "\u0075ptime\u200b",  # a zero-width space after a lookalike-free name
        # `**` takes no options and no `..`
        "ls -la /root",
        "ls /srv/../root",
        "ls --color=always",
        # not listed at all
        "id",
        "",
    ],
)
def test_restricted_escapes_are_refused(command):
    assert not policy.exec_verdict(RESTRICTED, command).allowed


def test_find_pattern_cannot_take_exec_option():
    """`find /var/log *` must not run `touch` as root through `-exec ... {} +`."""
    patterns = ("find /var/log *",)
    assert policy.exec_verdict(patterns, "find /var/log syslog").allowed
    for attack in ("find /var/log -exec touch /pwned {} +", "find /var/log -delete"):
        assert not policy.exec_verdict(patterns, attack).allowed


def test_pattern_word_that_is_an_option_may_match_options():
    patterns = ("journalctl -u *", "journalctl --since=*")
    assert policy.exec_verdict(patterns, "journalctl -u nginx").allowed
    assert policy.exec_verdict(patterns, "journalctl --since=today").allowed
    assert not policy.exec_verdict(patterns, "journalctl -u -f").allowed


def test_unicode_lookalikes_are_ordinary_characters():
    """A fullwidth or division slash is no path separator to the kernel: matching it as
    part of a name is harmless, and it never turns into `..` traversal."""
    patterns = ("tail -n 5 /var/log/*",)
    lookalike = "tail -n 5 /var/log/\u2215..\u2215..\u2215etc\u2215shadow"
    verdict = policy.exec_verdict(patterns, lookalike)
    assert verdict.allowed  # one file name inside /var/log, which does not exist
    assert policy.split_command(lookalike)[3].startswith("/var/log/")
    assert policy.split_command(lookalike)[3].count("/") == 3


def test_star_alone_is_unrestricted_and_empty_is_nothing():
    assert policy.exec_verdict(("*",), "anything; at all | sh").allowed
    assert policy.exec_verdict(("*",), "x").rule == "*"
    refused = policy.exec_verdict((), "uptime")
    assert not refused.allowed and "allow.exec is empty" in refused.reason


@pytest.mark.parametrize(
    "pattern, problem",
    [
        ("./deploy.sh", "bare name or an absolute path"),
        ("bin/deploy", "bare name or an absolute path"),
        ("*", None),
        ("syst*ctl status", "must be literal"),
        ("echo 'unbalanced", "cannot split"),
        ("/usr/local/bin/deploy *", None),
    ],
)
def test_exec_pattern_errors_for_check(pattern, problem):
    found = policy.check_exec_pattern(pattern)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_patterns_that_can_never_match_are_warned_about():
    assert policy.exec_pattern_warnings("systemctl restart nginx; true")
    assert policy.exec_pattern_warnings("ls ** -l")
    assert not policy.exec_pattern_warnings("systemctl status *")
    assert policy.path_pattern_warnings("/srv/../etc/**")
    assert policy.path_pattern_warnings("/srv/**.conf")
    assert policy.path_pattern_warnings("/srv/[ab]/x")
    assert not policy.path_pattern_warnings("/srv/**")


UNSAFE = [
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "PATH",
    "IFS",
    "ENV",
    "BASH_ENV",
    "SHELLOPTS",
    "PS4",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PERL5LIB",
    "PERL5OPT",
    "RUBYOPT",
    "NODE_OPTIONS",
    "GCONV_PATH",
    "GIT_SSH_COMMAND",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
]


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_env_names_need_env_unsafe_even_when_listed(name):
    restricted = ("uptime",)
    assert not policy.env_verdict(restricted, (name,), False, name).allowed
    assert policy.env_verdict(restricted, (name,), True, name).allowed
    assert not policy.env_verdict(restricted, (), True, name).allowed  # still must be listed
    assert policy.env_verdict(("*",), (), False, name).allowed  # "*" may set anything


def test_env_names_not_listed_are_refused_for_restricted_clients():
    assert policy.env_verdict(("uptime",), ("DEPLOY_ENV",), False, "DEPLOY_ENV").allowed
    refused = policy.env_verdict(("uptime",), ("DEPLOY_ENV",), False, "OTHER")
    assert not refused.allowed and "allow.env" in refused.reason


@pytest.mark.parametrize(
    "path, allowed",
    [
        ("/srv/app/config.yml", True),
        ("/srv/app/deep/down/file", True),
        ("/srv", False),
        ("/srvx/file", False),
        ("/etc/passwd", False),
        ("/tmp/x", True),
        ("/tmp/sub/x", False),
    ],
)
def test_path_rules(path, allowed):
    assert policy.path_verdict(("/srv/**", "/tmp/*"), "put", path).allowed is allowed


def test_verdict_refusal_says_not_allowed_by_policy():
    with pytest.raises(Exception) as refused:
        policy.path_verdict(("/srv/**",), "put", "/etc/x").enforce()
    assert str(refused.value).startswith("not allowed by policy")
