"""`radmind check --explain`: the policy in words, and its verdict on one command or path.

An operator reviewing a config (or an auditor reviewing an operator) should not have
to simulate the glob rules in their head: this answers with the same functions the
daemon uses (radmin/policy.py), so the explanation cannot drift from the enforcement.
"""

from __future__ import annotations

import os
import posixpath
import pwd

from radmin import policy
from radmin.config import ClientPolicy


def describe(client: ClientPolicy) -> list[str]:
    """Everything the client may do, one line per fact."""
    user = client.run_as or _daemon_user()
    lines = [f"client {client.name} ({client.fingerprint})", f"run_as: {user}"]
    if not client.allow_exec:
        lines.append("exec: nothing (allow.exec is empty)")
    elif client.restricted:
        lines.append("exec: only these, matched on argv and run without a shell:")
        lines += [f"  {pattern}" for pattern in client.allow_exec]
    else:
        lines.append(f'exec: any shell command, as {user} ("*")')
    if client.restricted:
        names = ", ".join(client.allow_env) or "none"
        unsafe = "allowed" if client.allow_env_unsafe else "refused (allow.env_unsafe)"
        lines.append(f"env (-e): {names}; names like PATH, LD_*: {unsafe}")
        lines.append(f"cwd (--cwd): {_patterns(client.allow_cwd)}")
    else:
        lines.append("env (-e): any name")
        lines.append("cwd (--cwd): anywhere")
    lines.append(f"put: {_patterns(client.allow_put)}")
    lines.append(f"get: {_patterns(client.allow_get)}")
    if client.allow_shell:
        lines.append(f"shell: yes, {user}'s login shell on a PTY (any command, as exec '*')")
    else:
        lines.append("shell: no (allow.shell is not true)")
    return lines


def explain_command(client: ClientPolicy, words: list[str]) -> tuple[bool, str]:
    """The daemon's verdict on COMMAND, joined with spaces as radmin-cli sends it."""
    verdict = policy.exec_verdict(client.allow_exec, " ".join(words))
    return verdict.allowed, _verdict_line("exec", verdict)


def explain_path(client: ClientPolicy, path: str) -> tuple[bool, list[str]]:
    """put, get and cwd verdicts for PATH; allowed when any of them allows it."""
    if not path.startswith("/") or ".." in path.split("/"):
        return False, [f"refused: {path!r} must be absolute, without '..'"]
    normalized = posixpath.normpath(path)
    verdicts = {
        "put": policy.path_verdict(client.allow_put, "put", normalized),
        "get": policy.path_verdict(client.allow_get, "get", normalized),
    }
    if client.restricted:
        verdicts["cwd"] = policy.path_verdict(client.allow_cwd, "cwd", normalized)
    else:
        verdicts["cwd"] = policy.Verdict(True, policy.UNRESTRICTED, 'allow.exec has "*"')
    lines = [_verdict_line(key, verdict) for key, verdict in verdicts.items()]
    return any(v.allowed for v in verdicts.values()), lines


def _verdict_line(what: str, verdict: policy.Verdict) -> str:
    if verdict.allowed:
        return f"{what}: allowed by {verdict.reason}"
    return f"{what}: refused: {verdict.reason}"


def _patterns(patterns: tuple[str, ...]) -> str:
    return ", ".join(patterns) if patterns else "nothing"


def _daemon_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name + " (the daemon's user)"
    except KeyError:
        return f"uid {os.geteuid()} (the daemon's user)"
