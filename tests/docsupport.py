"""Reading the command lines out of README.md and docs/*.md, for the tests that run them.

The docs write commands one of two ways, and only these (tests/test_docs.py checks):

- ```sh (or ```bash) blocks: every line is a command to type, optionally followed by a
  `# comment`; lines that are only a comment continue the one above;
- ```console blocks: `$ COMMAND` lines, each followed by the output it prints.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHELL_LANGUAGES = ("sh", "bash")
_FENCE = re.compile(r"^```(\S*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    language: str  # "" for a bare ```
    first_line: int  # line number (1-based) of the block's first line inside the fence
    lines: tuple[str, ...]


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def fenced_blocks(text: str) -> Iterator[Block]:
    for match in _FENCE.finditer(text):
        first_line = text.count("\n", 0, match.start(2)) + 1
        yield Block(match.group(1), first_line, tuple(match.group(2).splitlines()))


def console_examples(block: Block) -> list[tuple[int, str, str]]:
    """(line number, command, expected output) for each `$ ` line of a console block."""
    examples: list[tuple[int, str, str]] = []
    for offset, line in enumerate(block.lines):
        if line.startswith("$ "):
            examples.append((block.first_line + offset, line[2:], ""))
        elif examples:
            number, command, output = examples[-1]
            examples[-1] = (number, command, output + line + "\n")
    return examples


def shell_lines(block: Block) -> list[tuple[int, str]]:
    """(line number, line) for each command line of a sh/bash block."""
    return [
        (block.first_line + offset, line.strip())
        for offset, line in enumerate(block.lines)
        if line.strip() and not line.strip().startswith("#")
    ]


def split_comment(line: str) -> tuple[str, str]:
    """(command, comment) of a shell line: the comment starts at a `#` that follows
    whitespace outside quotes, as the shell reads it."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip(), line[index + 1 :].strip()
    return line.rstrip(), ""
