"""What a client may do: pure functions over its `allow:` rules, easy to test alone.

docs/policy.md is the user-facing definition; this module is its implementation.

exec:
  * a client whose `allow.exec` holds the exact entry `"*"` is *unrestricted*: any shell
    command, any `-e` variable, any `--cwd` (it is as powerful as its run_as user);
  * every other client is *restricted*: its command line is split into argv with shlex
    (after refusing every shell metacharacter, quoted or not) and each pattern is
    matched word by word. `*`/`?` inside a word never match `/`, never produce a `.`
    or `..` path component and never match an argument starting with `-` unless the
    pattern word does; a final `**` word matches the remaining arguments (none an
    option, none with a `..` component). The program word is compared literally. A
    matched command runs as argv, without a shell, so nothing is re-interpreted.
paths (put, get, cwd): globs over the normalized absolute path, `*` and `?` within one
  component, `**` across components (`/srv/**` = anything below /srv).
env: a restricted client may set only the names in `allow.env`, and never the names
  that change how programs load or find code unless `allow.env_unsafe` is true.

Every check returns a `Verdict` naming the rule that decided, so the audit log and
`radmind check --explain` can say *why*.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from radmin.errors import PolicyDenied

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # what -e and allow.env may name
UNRESTRICTED = "*"
REST = "**"  # a final exec pattern word: the remaining arguments
# Anything a shell would interpret, and glob characters an argument has no need for.
SHELL_METACHARACTERS = frozenset(";&|$`()<>*?[]{}~!\\#\n\0")
# Names that change which code a program loads or how a shell behaves: refused for
# restricted clients even when listed in allow.env, unless allow.env_unsafe is true.
UNSAFE_ENV_NAMES = frozenset(
    {"PATH", "IFS", "ENV", "BASH_ENV", "SHELLOPTS", "PS4", "NODE_OPTIONS", "GCONV_PATH"}
    | {"HOME", "USER", "LOGNAME", "SHELL"}
)
UNSAFE_ENV_PREFIXES = ("LD_", "PYTHON", "PERL5", "RUBY", "GIT_")
DENIED = "not allowed by policy"


@dataclass(frozen=True)
class Verdict:
    """The answer to one question to the policy, with the rule that decided it."""

    allowed: bool
    rule: str | None  # the allow entry that matched, or None
    reason: str  # why: fit for the audit log and `check --explain`

    def enforce(self) -> None:
        """Raise the refusal a client sees: it says what was refused, never what exists."""
        if not self.allowed:
            raise PolicyDenied(f"{DENIED}: {self.reason}")


def is_unrestricted(exec_patterns: tuple[str, ...]) -> bool:
    return UNRESTRICTED in exec_patterns


# -- exec --------------------------------------------------------------------------------


def split_command(command: str) -> list[str]:
    """argv of a restricted client's command line; ValueError says what is refused."""
    bad = sorted({ch for ch in command if ch in SHELL_METACHARACTERS})
    if bad:
        shown = " ".join("\\n" if ch == "\n" else "NUL" if ch == "\0" else ch for ch in bad)
        raise ValueError(f"shell syntax is not allowed for this client: {shown}")
    if any(unicodedata.category(ch) == "Cc" and ch not in " \t" for ch in command):
        raise ValueError("control characters are not allowed for this client")
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"cannot split the command line: {exc}") from None
    if not argv:
        raise ValueError("empty command")
    return argv


def check_exec_pattern(pattern: str) -> str | None:
    """Why a restricted exec pattern is unusable (an error for `check`), or None."""
    if pattern == UNRESTRICTED:
        return None
    try:
        words = shlex.split(pattern)
    except ValueError as exc:
        return f"cannot split pattern {pattern!r}: {exc}"
    if not words:
        return "empty pattern"
    program = words[0]
    if "/" in program and not program.startswith("/"):
        return f"program {program!r} must be a bare name or an absolute path"
    if any(ch in program for ch in "*?"):
        return f"the program word {program!r} must be literal (no * or ?)"
    return None


def exec_pattern_warnings(pattern: str) -> list[str]:
    """Why a pattern can never match (a warning for `check`; the config still loads)."""
    if pattern == UNRESTRICTED or check_exec_pattern(pattern) is not None:
        return []
    words = shlex.split(pattern)
    warnings = []
    literal = "".join(w for w in words if w != REST).replace("*", "").replace("?", "")
    bad = sorted({ch for ch in literal if ch in SHELL_METACHARACTERS})
    if bad:
        warnings.append(
            f"pattern {pattern!r} can never match: commands with {' '.join(bad)} are refused"
        )
    if REST in words[:-1]:
        warnings.append(f"pattern {pattern!r}: '**' only has a meaning as the last word")
    return warnings


def match_exec(patterns: tuple[str, ...], argv: list[str]) -> str | None:
    """The first restricted pattern that allows argv, or None."""
    for pattern in patterns:
        if pattern != UNRESTRICTED and _argv_matches(_pattern_words(pattern), argv):
            return pattern
    return None


@lru_cache(maxsize=1024)
def _pattern_words(pattern: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(pattern))
    except ValueError:
        return ()  # reported by `check`; matches nothing


def _argv_matches(words: tuple[str, ...], argv: list[str]) -> bool:
    if not words or words[0] != argv[0]:
        return False
    rest = words[-1] == REST
    fixed = words[1:-1] if rest else words[1:]
    args = argv[1:]
    if len(args) < len(fixed) or (not rest and len(args) != len(fixed)):
        return False
    if not all(_word_matches(w, a) for w, a in zip(fixed, args, strict=False)):
        return False
    return all(_safe_rest_argument(a) for a in args[len(fixed) :])


def _word_matches(word: str, arg: str) -> bool:
    if "*" not in word and "?" not in word:
        return word == arg
    if arg.startswith("-") and not word.startswith("-"):
        return False  # no option injection: `find /var/log *` must not take `-exec`
    if not _word_regex(word).fullmatch(arg):
        return False
    # A wildcard never stands for `.` or `..`: compare component by component (a
    # wildcard cannot match `/`, so the components line up).
    for pattern_part, arg_part in zip(word.split("/"), arg.split("/"), strict=True):
        if arg_part in (".", "..") and pattern_part != arg_part:
            return False
    return True


def _safe_rest_argument(arg: str) -> bool:
    return not arg.startswith("-") and ".." not in arg.split("/")


@lru_cache(maxsize=1024)
def _word_regex(word: str) -> re.Pattern[str]:
    parts = ("[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch) for ch in word)
    return re.compile("".join(parts), re.DOTALL)


def exec_verdict(patterns: tuple[str, ...], command: str) -> Verdict:
    """May a client with these patterns run this command line?"""
    if not patterns:
        return Verdict(False, None, "allow.exec is empty")
    if is_unrestricted(patterns):
        return Verdict(True, UNRESTRICTED, 'allow.exec has "*" (any shell command)')
    try:
        argv = split_command(command)
    except ValueError as exc:
        return Verdict(False, None, str(exc))
    rule = match_exec(patterns, argv)
    if rule is None:
        return Verdict(False, None, "no allow.exec pattern matches this command")
    return Verdict(True, rule, f"allow.exec pattern {rule!r}")


# -- env ---------------------------------------------------------------------------------


def is_unsafe_env_name(name: str) -> bool:
    return name in UNSAFE_ENV_NAMES or name.startswith(UNSAFE_ENV_PREFIXES)


def env_verdict(
    exec_patterns: tuple[str, ...], allowed: tuple[str, ...], unsafe_ok: bool, name: str
) -> Verdict:
    if is_unrestricted(exec_patterns):
        return Verdict(True, UNRESTRICTED, 'allow.exec has "*" (any variable)')
    if name not in allowed:
        return Verdict(False, None, f"-e {name} is not in allow.env")
    if is_unsafe_env_name(name) and not unsafe_ok:
        return Verdict(False, None, f"-e {name} changes how programs run (allow.env_unsafe)")
    return Verdict(True, name, f"allow.env lists {name}")


# -- paths (put, get, cwd) ---------------------------------------------------------------


@lru_cache(maxsize=1024)
def _path_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            ch = pattern[i]
            out.append("[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def match_path(patterns: tuple[str, ...], path: str) -> str | None:
    """The first pattern matching a normalized absolute path, or None."""
    for pattern in patterns:
        if _path_regex(pattern).fullmatch(path):
            return pattern
    return None


def path_verdict(patterns: tuple[str, ...], key: str, path: str) -> Verdict:
    """May `path` be used under the `allow.<key>` patterns?"""
    if not patterns:
        return Verdict(False, None, f"allow.{key} is empty")
    rule = match_path(patterns, path)
    if rule is None:
        return Verdict(False, None, f"{path} matches no allow.{key} pattern")
    return Verdict(True, rule, f"allow.{key} pattern {rule!r}")


def check_path_pattern(pattern: str) -> str | None:
    """Why a put/get/cwd pattern is unusable (an error for `check`), or None."""
    if not pattern.startswith("/"):
        return f"{pattern!r} must be an absolute path pattern"
    return None


def path_pattern_warnings(pattern: str) -> list[str]:
    """A pattern that can never match, or whose syntax is probably misunderstood."""
    warnings = []
    parts = pattern.split("/")[1:]
    if any(p in (".", "..") for p in parts) or "//" in pattern:
        warnings.append(f"{pattern!r} can never match: paths are normalized first")
    if any("**" in p and p != "**" for p in parts):
        warnings.append(f"{pattern!r}: '**' spans folders only as a whole component")
    if any(ch in pattern for ch in "[]{}"):
        warnings.append(f"{pattern!r}: [ ] {{ }} are literal characters here, not globs")
    return warnings


# -- shell -------------------------------------------------------------------------------


def shell_verdict(allowed: bool) -> Verdict:
    """May a client open an interactive shell? Only with `allow.shell: true`: a login
    shell runs anything its user can, so it is as powerful as `allow.exec: ["*"]`."""
    if not allowed:
        return Verdict(False, None, "allow.shell is not true for this client")
    return Verdict(True, "shell", "allow.shell is true")
