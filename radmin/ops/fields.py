"""Request fields declared once: name, kind, default and meaning.

Each operation lists its REQUEST fields as `Field`s (Ansible's argument_spec habit);
`parse` validates a request against that list -- one message shape for every bad
value, no isinstance ladders in the operations -- and `reference_markdown` writes the
field tables of docs/protocol.md from the same list (scripts/gen-config-docs), so the
documentation cannot drift from what the daemon accepts. protocol.py has already
refused NaN, huge integers, deep nesting, lone surrogates and NULs in every string.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from radmin.errors import BadRequest
from radmin.policy import ENV_NAME

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# A terminal type as terminfo names them (xterm-256color, screen.xterm, rxvt-unicode):
# no '/', since programs look the name up as a file under /usr/share/terminfo.
_TERMINAL_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


@dataclass(frozen=True)
class Kind:
    """How a value is checked (raising ValueError with the reason) and documented."""

    check: Callable[[Any], Any]
    doc: str


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    doc: str
    required: bool = False
    default: Any = None


def parse(op: str, fields: tuple[Field, ...], params: Mapping[str, Any]) -> dict[str, Any]:
    """The declared fields' values (defaults filled in); BadRequest names a bad one.
    Fields the spec does not name are ignored (`op`, `run_id`, newer clients' extras)."""
    values = {}
    for field in fields:
        value = params.get(field.name)
        if value is None:
            if field.required:
                raise BadRequest(f"{op}: {field.name} is required")
            values[field.name] = field.default
            continue
        try:
            values[field.name] = field.kind.check(value)
        except ValueError as exc:
            raise BadRequest(f"{op}: {field.name}: {exc}") from None
    return values


def reference_markdown(fields: tuple[Field, ...]) -> str:
    rows = ["| field | type | default | meaning |", "| --- | --- | --- | --- |"]
    for field in fields:
        default = "(required)" if field.required else f"`{_json(field.default)}`"
        rows.append(f"| `{field.name}` | {field.kind.doc} | {default} | {field.doc} |")
    return "\n".join(rows) + "\n"


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


# -- kinds -------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _absolute_path(value: Any) -> str:
    text = _text(value)
    if not text.startswith("/"):
        raise ValueError(f"must be an absolute path, got {text!r}")
    return text


def _env(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of NAME to VALUE")
    for name, text in value.items():
        if not ENV_NAME.fullmatch(name):
            raise ValueError(f"invalid environment variable name {name!r}")
        if not isinstance(text, str):
            raise ValueError(f"the value of {name} must be a string")
    return dict(value)


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number of seconds, got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"must be a positive number of seconds, got {value!r}")
    return float(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _byte_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a byte count, got {value!r}")
    return value


def _mode(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o7777:
        raise ValueError(f"must be between 0 and 07777, got {value!r}")
    return value


def _sha256(value: Any) -> str:
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        raise ValueError("expected 64 lowercase hex digits")
    return value


def _file_name(value: Any) -> str:
    text = _text(value)
    if "/" in text or text in (".", ".."):
        raise ValueError(f"expected a file name without '/', got {text!r}")
    return text


def _terminal_type(value: Any) -> str:
    if not isinstance(value, str) or not _TERMINAL_TYPE.fullmatch(value):
        raise ValueError(
            f"expected a terminal type like xterm-256color (letters, digits, . _ + -), "
            f"got {value!r}"[:200]
        )
    return value


def _terminal_size(value: Any) -> int:
    """Rows or columns: what struct winsize holds (an unsigned short), zero excluded."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"expected a whole number from 1 to 65535, got {value!r}")
    return value


TEXT = Kind(_text, "string")
ABSOLUTE_PATH = Kind(_absolute_path, "absolute path")
PATH = Kind(_text, "path")
ENV = Kind(_env, "object NAME: VALUE")
SECONDS = Kind(_seconds, "number > 0")
BOOLEAN = Kind(_boolean, "boolean")
BYTE_COUNT = Kind(_byte_count, "integer >= 0")
MODE = Kind(_mode, "integer 0-4095 (07777)")
SHA256 = Kind(_sha256, "64 hex digits")
FILE_NAME = Kind(_file_name, "file name")
NAME = Kind(_text, "user or group name")
TERMINAL_TYPE = Kind(_terminal_type, "terminal type ([A-Za-z0-9._+-], at most 64)")
TERMINAL_SIZE = Kind(_terminal_size, "integer 1-65535")
