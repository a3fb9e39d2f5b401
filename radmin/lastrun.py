"""The previous multi-host run, remembered in the client home for `@failed` and `@ok`.

Like Ansible's retry files: after a run over several hosts, `last-run.json` holds its
run id and which hosts succeeded, failed (a non-zero exit, a refusal, unreachable,
cancelled) or were skipped, so the next command can say `radmin-cli exec @failed ...`.
Written atomically (a temporary file renamed over the old one): two runs ending
together leave one whole record, never a mix.
"""

from __future__ import annotations

import json
import os

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

# The names HOSTS may use, and the record's list each one reads.
REFERENCES = {"@failed": "failed", "@ok": "ok", "@skipped": "skipped"}


class NoPreviousRun(LookupError):
    """`@failed` or `@ok` with no usable record (no multi-host run yet, an unreadable
    or damaged file, or a set that is empty)."""


def save(
    path: Path, run_id: str, op: str, hosts: dict[str, list[str]], when: float | None = None
) -> None:
    """Record a run: `hosts` maps "ok", "failed", "skipped" to host labels. Raises
    OSError if the home cannot be written (the caller warns; the run itself stands)."""
    import time

    record = {
        "run_id": run_id,
        "op": op,
        "time": round(time.time() if when is None else when, 3),
        **{name: list(hosts.get(name, [])) for name in REFERENCES.values()},
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def hosts_of(path: Path, reference: str) -> list[str]:
    """The labels `@failed` / `@ok` / `@skipped` stand for; NoPreviousRun says why not."""
    name = REFERENCES[reference]
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        raise NoPreviousRun(
            f"{reference}: no previous multi-host run recorded in {path.parent} "
            "(it is written after each run over several hosts)"
        ) from None
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not a run record"
        raise NoPreviousRun(f"{reference}: cannot read {path}: {why}") from None
    labels = record.get(name) if isinstance(record, dict) else None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise NoPreviousRun(f"{reference}: cannot read {path}: not a run record")
    if not labels:
        run = f"run {record.get('run_id')} ({record.get('op')})"
        raise NoPreviousRun(f"{reference}: no host is {name} in the previous {run}")
    return labels
