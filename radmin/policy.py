"""What a client may do: pure functions over its `allow:` rules, easy to test alone.

exec patterns:
  * `"*"` allows any shell command.
  * Any other pattern is a glob (`*` any run of characters, `?` one character) matched
    against the whole command line, and only for command lines free of shell syntax
    (no ; & | ` $ ( ) < > newline or backslash): otherwise `"systemctl status *"` would
    also allow `systemctl status x; rm -rf /`.
put patterns: globs over the normalized absolute destination, `*` and `?` within one
path component, `**` across components (`/srv/**` = anything below /srv).
"""

from __future__ import annotations

import re
from functools import lru_cache

from radmin.errors import PolicyDenied

_SHELL_SYNTAX = re.compile(r"[;&|`$()<>\n\\]")


@lru_cache(maxsize=1024)
def _command_regex(pattern: str) -> re.Pattern[str]:
    parts = (".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile("".join(parts), re.DOTALL)


def exec_allowed(patterns: tuple[str, ...], command: str) -> bool:
    if "*" in patterns:
        return True
    if _SHELL_SYNTAX.search(command):
        return False
    return any(_command_regex(p).fullmatch(command) for p in patterns)


def check_exec(client_name: str, patterns: tuple[str, ...], command: str) -> None:
    if not patterns:
        raise PolicyDenied(f"client {client_name!r} may not run commands (allow.exec is empty)")
    if not exec_allowed(patterns, command):
        raise PolicyDenied(f"command not allowed for client {client_name!r} by allow.exec")


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


def put_allowed(patterns: tuple[str, ...], path: str) -> bool:
    return any(_path_regex(p).fullmatch(path) for p in patterns)


def check_put(client_name: str, patterns: tuple[str, ...], path: str) -> None:
    if not patterns:
        raise PolicyDenied(f"client {client_name!r} may not upload files (allow.put is empty)")
    if not put_allowed(patterns, path):
        raise PolicyDenied(f"{path} is not allowed for client {client_name!r} by allow.put")
