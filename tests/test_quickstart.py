"""`scripts/quickstart`, the README's first command, run for real.

It installs into the checkout's .venv (a no-op here: pip runs only when pyproject.toml
is newer than its last install) and keeps everything in $RADMIN_QUICKSTART_DIR, a
temporary folder here. The lines it prints are run as printed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from support import wait_until

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "scripts" / "quickstart"
READY = "Ctrl-C stops the daemon."


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick, released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Quickstart:
    """One run of scripts/quickstart: its output, and the radmind it becomes."""

    def __init__(self, folder: Path, port: int | None):
        self.folder = folder
        self.stdout = folder.parent / f"{folder.name}.stdout"
        self.stderr = folder.parent / f"{folder.name}.stderr"
        env = {k: v for k, v in os.environ.items() if k not in ("RADMIN_HOME", "RADMIN_PORT")}
        env["RADMIN_QUICKSTART_DIR"] = str(folder)
        if port is not None:
            env["RADMIN_PORT"] = str(port)
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [str(QUICKSTART)], stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env
            )

    @property
    def config(self) -> Path:
        return self.folder / "daemon" / "radmind.yaml"

    def output(self) -> str:
        return self.stdout.read_text()

    def errors(self) -> str:
        return self.stderr.read_text()

    def wait_serving(self) -> str:
        """The printed instructions, once the daemon they describe is listening."""
        wait_until(
            lambda: "listening" in self.errors() or self.proc.poll() is not None,
            120,
            "quickstart's radmind to listen",
        )
        assert self.proc.poll() is None, self.output() + self.errors()
        assert READY in self.output()
        return self.output()

    def finish(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int:
        """Ctrl-C, as the instructions say."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.finish(30)


@pytest.fixture
def quickstart(tmp_path):
    """run(port) -> a started Quickstart in tmp_path/quickstart (stopped afterwards)."""
    runs: list[Quickstart] = []

    def run(port: int | None) -> Quickstart:
        runs.append(Quickstart(tmp_path / "quickstart", port))
        return runs[-1]

    yield run
    for one in runs:
        if one.proc.poll() is None:
            one.proc.kill()
            one.proc.wait()


def printed_script(instructions: str) -> str:
    """The shell lines the instructions tell the user to type, as one script."""
    lines = [line.strip() for line in instructions.splitlines()]
    return "\n".join(line for line in lines if line.startswith(("export ", "radmin-cli ")))


def test_quickstart_prints_the_port_it_uses_and_its_lines_work(quickstart):
    port = free_port()
    run = quickstart(port)
    instructions = run.wait_serving()
    assert instructions.startswith(f"radmind 0.1.0 on 127.0.0.1:{port}, fingerprint SHA256:")
    script = printed_script(instructions)
    assert script.count(f" 127.0.0.1:{port}") == 3, script

    tried = subprocess.run(
        ["bash", "-ec", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert tried.returncode == 0, tried.stdout + tried.stderr
    assert 'known as "quickstart"' in tried.stdout
    assert (run.folder / "uploads" / "README.md").read_bytes() == (REPO / "README.md").read_bytes()
    assert run.stop() == 0


def test_quickstart_refuses_a_port_in_use_before_printing_instructions(quickstart):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = quickstart(port)
        assert run.finish() == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in run.errors()
    assert "RADMIN_PORT=" in run.errors()  # how to choose another port
    assert "In another terminal" not in run.output()


def test_quickstart_keeps_an_edited_config_and_says_so(quickstart):
    first_port, second_port = free_port(), free_port()
    first = quickstart(first_port)
    first.wait_serving()
    assert first.stop() == 0
    edited = first.config.read_text().replace("level: info", "level: debug")
    first.config.write_text(edited)

    second = quickstart(second_port)
    instructions = second.wait_serving()
    assert second.config.read_text() == edited
    assert re.search(r"keeping \S+radmind.yaml: it was edited", second.errors())
    assert f"127.0.0.1:{first_port}," in instructions  # the port it really uses
    assert str(second_port) not in instructions
    assert second.stop() == 0


def test_quickstart_rewrites_its_own_untouched_config_for_a_new_port(quickstart):
    first_port, second_port = free_port(), free_port()
    first = quickstart(first_port)
    first.wait_serving()
    assert first.stop() == 0

    second = quickstart(second_port)
    instructions = second.wait_serving()
    assert f'listen: ["127.0.0.1:{second_port}"]' in second.config.read_text()
    assert f"127.0.0.1:{second_port}," in instructions
    assert "keeping" not in second.errors()
    assert second.stop() == 0
