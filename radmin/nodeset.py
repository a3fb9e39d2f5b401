"""Node sets, as ClusterShell writes them: `web[1-20]`, `web[01-20]`, `rack[1-2]-node[1-4]`.

Pure functions, no I/O: `expand` turns one HOSTS entry into host names, `fold` turns
a set of names back into the shortest canonical text radmin prints (summaries, gather
headers, `-v`), and `split_entries` cuts a HOSTS argument at the commas that are not
inside brackets.

Why not ClusterShell itself: `from ClusterShell.NodeSet import NodeSet` costs ~15 ms
(measured with `python -X importtime`: NodeUtils pulls in shlex, subprocess, glob...),
a quarter of radmin-cli's whole start-up, and radmin needs only the syntax below.
tests/test_nodeset.py checks this module against ClusterShell where the two agree.

The syntax (interface.md, "Hosts"):

- a bracket group holds comma-separated numbers and ranges `a-b` (optionally `a-b/step`);
  several groups in one name are a product (`n[1-2]-c[1-2]` is four names);
- zero padding is kept: `[01-10]` is 01..10; `[8-010]` (two paddings in one range) is
  an error, `[08,9,10]` (padding per item) is not;
- a bracket group holding `:` is an IPv6 literal (`[::1]:7420`), never a range;
- `web[3-1]`, an empty group, an unbalanced bracket, letters in a group are errors;
- at most MAX_HOSTS names come out of one expansion: `web[1-100000]` is a clear error
  rather than a client that builds a million targets.
"""

from __future__ import annotations

import re

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

MAX_HOSTS = 10_000  # names in one HOSTS argument, after expansion (docs/fanout.md)

_DIGITS = re.compile(r"(\d+)")
_ITEM = re.compile(r"(\d+)(?:-(\d+)(?:/(\d+))?)?")


class NodeSetError(ValueError):
    """A HOSTS entry whose brackets cannot be read as a node set."""


# -- reading ------------------------------------------------------------------------------


def split_entries(spec: str) -> list[str]:
    """`web[1-3,7],db1` -> ['web[1-3,7]', 'db1']: commas inside brackets belong to the
    group. Entries are stripped; empty ones are kept (the caller says why that is bad)."""
    entries, depth, start = [], 0, 0
    for index, char in enumerate(spec):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            entries.append(spec[start:index].strip())
            start = index + 1
    entries.append(spec[start:].strip())
    return entries


def has_ranges(entry: str) -> bool:
    """True if `entry` holds a bracket group that is a range (not an IPv6 literal)."""
    return any(":" not in text for text in _groups(entry)[1::2])


def expand(entry: str, limit: int = MAX_HOSTS) -> list[str]:
    """One HOSTS entry -> its names in order (`web[1-3]` -> web1, web2, web3).

    An entry without range brackets is returned as it is. Raises NodeSetError for a
    malformed group or more than `limit` names.
    """
    pieces = _groups(entry)
    choices: list[list[str]] = []
    count = 1
    for index, text in enumerate(pieces):
        if index % 2 == 0:
            choices.append([text])
        elif ":" in text:  # an IPv6 literal: brackets kept, never a range
            choices.append([f"[{text}]"])
        else:
            numbers = _range_items(text, entry, limit)
            count *= len(numbers)
            if count > limit:
                raise NodeSetError(
                    f"{entry!r} names more than {limit:,} hosts, radmin's limit for one run "
                    "(split it into several runs)"
                )
            choices.append(numbers)
    names = [""]
    for options in choices:
        names = [name + option for name in names for option in options]
    return names


def _groups(entry: str) -> list[str]:
    """[text, group, text, group, ..., text]: the entry cut at its brackets.

    Raises NodeSetError for an unbalanced or nested bracket."""
    pieces: list[str] = []
    rest = entry
    while True:
        open_at, close_at = rest.find("["), rest.find("]")
        if open_at < 0:
            if close_at >= 0:
                raise NodeSetError(f"{entry!r}: ']' without '['")
            pieces.append(rest)
            return pieces
        if 0 <= close_at < open_at:
            raise NodeSetError(f"{entry!r}: ']' without '['")
        close_at = rest.find("]", open_at)
        if close_at < 0:
            raise NodeSetError(f"{entry!r}: '[' without ']'")
        inner = rest[open_at + 1 : close_at]
        if "[" in inner:
            raise NodeSetError(f"{entry!r}: brackets inside brackets")
        pieces += [rest[:open_at], inner]
        rest = rest[close_at + 1 :]


def _range_items(text: str, entry: str, limit: int) -> list[str]:
    """`1-3,7` -> ['1', '2', '3', '7'], zero padding kept; duplicates dropped."""
    if not text.strip():
        raise NodeSetError(f"{entry!r}: empty brackets")
    numbers: list[str] = []
    for item in text.split(","):
        item = item.strip()
        match = _ITEM.fullmatch(item)
        if not match:
            what = "an empty item" if not item else repr(item)
            raise NodeSetError(
                f"{entry!r}: {what} in [{text}]: expected numbers and ranges like 1-3,7"
            )
        first, last, step = match.group(1), match.group(2), match.group(3)
        if last is None:
            numbers.append(first)
            continue
        width = _width(first)
        if _width(last) not in (0, width) or (width and len(last) < width):
            raise NodeSetError(f"{entry!r}: {item} mixes two zero paddings ({first} and {last})")
        low, high, by = int(first), int(last), int(step or 1)
        if low > high:
            raise NodeSetError(f"{entry!r}: range {item} goes down; write {last}-{first}")
        if by < 1:
            raise NodeSetError(f"{entry!r}: step {step} in {item} must be at least 1")
        if (high - low) // by + 1 > limit:
            raise NodeSetError(
                f"{entry!r} names more than {limit:,} hosts, radmin's limit for one run "
                "(split it into several runs)"
            )
        numbers += [str(n).zfill(width) for n in range(low, high + 1, by)]
    return list(dict.fromkeys(numbers))


def _width(number: str) -> int:
    """The zero-padded width a number is written with (0: not padded)."""
    return len(number) if len(number) > 1 and number.startswith("0") else 0


# -- order --------------------------------------------------------------------------------


def natural_key(name: str) -> tuple[object, ...]:
    """Sort key putting web2 before web10 (numbers compared as numbers, then by width:
    web9 before web09 before web10)."""
    tokens = _DIGITS.split(name)
    return tuple(
        (int(token), len(token)) if index % 2 else token for index, token in enumerate(tokens)
    )


def natural_sorted(names: Iterable[str]) -> list[str]:
    """The distinct names, naturally sorted."""
    return sorted(set(names), key=natural_key)


# -- writing ------------------------------------------------------------------------------


def fold(names: Iterable[str]) -> str:
    """Names -> canonical node set text: `web1,web2,web3,web5` -> `web[1-3,5]`.

    The same set always folds to the same text (whatever the order or duplicates), and
    expand() of each comma-separated part gives the set back, naturally sorted. Names that
    differ in several numbers fold into a product where the set is one
    (`n[1-2]-c[1-2]`); zero padding is kept (`web[01-03]`; web9 is not web09); names
    holding a bracket (IPv6 literals, `[::1]:7420`) or without a number stay as they are.
    """
    by_skeleton: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    literals: list[str] = []
    for name in set(names):
        if "[" in name or name.count(":") > 1:
            literals.append(name)
            continue
        tokens = _DIGITS.split(name)
        by_skeleton.setdefault(tuple(tokens[0::2]), []).append(tuple(tokens[1::2]))
    parts: list[tuple[tuple[object, ...], str]] = [(natural_key(n), n) for n in literals]
    for skeleton, vectors in by_skeleton.items():
        for product in _fold_products(vectors):
            first = _interleave(skeleton, [min(s, key=_number_key) for s in product])
            text = _interleave(skeleton, [_render_numbers(s) for s in product])
            parts.append((natural_key(first), text))
    parts.sort()
    return ",".join(text for _, text in parts)


def _fold_products(vectors: list[tuple[str, ...]]) -> list[tuple[frozenset[str], ...]]:
    """Number vectors of one skeleton -> products of number sets covering exactly them:
    folded along the last position first, then each earlier one."""
    products = [tuple(frozenset((n,)) for n in vector) for vector in vectors]
    for position in range(len(vectors[0]) - 1, -1, -1):
        merged: dict[tuple[frozenset[str], ...], set[str]] = {}
        for product in products:
            others = product[:position] + product[position + 1 :]
            merged.setdefault(others, set()).update(product[position])
        products = [
            (*others[:position], frozenset(numbers), *others[position:])
            for others, numbers in merged.items()
        ]
    return products


def _interleave(skeleton: tuple[str, ...], numbers: list[str]) -> str:
    out = [skeleton[0]]
    for number, text in zip(numbers, skeleton[1:], strict=True):
        out += [number, text]
    return "".join(out)


def _number_key(number: str) -> tuple[int, int]:
    return int(number), len(number)


def _render_numbers(numbers: frozenset[str]) -> str:
    """{'1','2','3','5'} -> `[1-3,5]`; one number as it is. Numbers are grouped by their
    padding (a plain number as wide as a padded group joins it: 10 with 08, 09)."""
    if len(numbers) == 1:
        return next(iter(numbers))
    padded_widths = {_width(n) for n in numbers} - {0}
    classes: dict[int, list[int]] = {}
    for number in numbers:
        width = _width(number) or (len(number) if len(number) in padded_widths else 0)
        classes.setdefault(width, []).append(int(number))
    items: list[tuple[int, int, str]] = []
    for width, values in classes.items():
        values.sort()
        start = previous = values[0]
        for value in [*values[1:], None]:
            if value is not None and value == previous + 1:
                previous = value
                continue
            text = str(start).zfill(width)
            if previous != start:
                text += "-" + str(previous).zfill(width)
            items.append((start, width, text))
            if value is not None:
                start = previous = value
    items.sort()
    return "[" + ",".join(text for _, _, text in items) + "]"
