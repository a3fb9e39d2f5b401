"""Every `radmin-cli` and `radmind` command line the docs show, run against a real daemon.

The lines come from README.md and docs/*.md (tests/docsupport.py: ```sh/```bash blocks,
and the `$ ` lines of ```console blocks); a line counts when one of its pipeline stages
starts with `radmin-cli` or `radmind`. Each is run through bash, or is listed in
LISTED with the reason it is not run here. A line must exit with the status
the doc implies: 0, unless its comment says `exit status N`.

The world the lines run in (`world` below) is made the way docs/install.md makes it:
`radmind init`, then the block `radmin-cli fingerprint --paste` prints, appended to
radmind.yaml for install.md's client (as printed: least privilege), and an `ops` client
with `exec: ["*"]` and `shell: true` for the README's examples (its rules "widened as
needed"). One radmind serves every host name the docs use; the client's config.yaml is
the repo's example, config/config.yaml, with its documentation addresses mapped as below.

What is replaced, and why (nothing else is; the constants below are the table):

- SYSTEM_PATHS (/etc/radmin, /etc/nginx, /srv, /run, /var/lib/radmin, /var/tmp/radmin,
  /var/log) -> the same under a temporary ROOT: the test must not write into the system.
  radmind's default config, /etc/radmin/radmind.yaml, is ROOT's, through $RADMIN_CONFIG.
- the client home (~/.config/radmin) -> $RADMIN_HOME: the README's client (`ops`) for
  README.md, install.md's client for docs/install.md (HOME_OF_FILE).
- FIRST_TIME commands (`radmind init`, `radmin-cli keygen`) -> a fresh ROOT or client
  home each: they make what the world already has, and rightly refuse to overwrite it.
- ADDRESSES, the docs' documentation addresses, and `127.0.0.1` (quickstart's daemon) ->
  the test daemon's listeners: 127.0.0.1:PORT0, 127.0.0.2:PORT1 and [::1]:PORT2
  (127.0.0.3:PORT2 without IPv6); `server1` (install.md) is added to config.yaml as an
  alias of the first. init's `listen: ["0.0.0.0:7420"]` becomes those three, with
  kernel-chosen ports: a test must not take a fixed port.
- COMMANDS that need systemd, nginx or PostgreSQL on the host -> a harmless equivalent.
- the local files the docs upload (LOCAL_FILES) -> small files in the current folder.

`radmind run` runs until it listens and is then stopped with SIGTERM (exit 0 expected);
`radmind run --detach` gets the config with its `log.file` line uncommented (the doc
says a detached daemon needs it) and is stopped through its pidfile.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import yaml
from docsupport import (
    REPO,
    SHELL_LANGUAGES,
    console_examples,
    doc_files,
    fenced_blocks,
    shell_lines,
    split_comment,
)
from support import BIN, ConfigFileDaemon, make_client_home, run_cli, run_radmind, wait_until

from radmin.identity import ClientHome

# -- what is not simply run -------------------------------------------------------------

LISTED = {
    "radmin-cli fingerprint --paste | ssh root@server1 'cat >> /etc/radmin/radmind.yaml'": (
        "needs ssh to a server; tests/test_install.py appends the same output to "
        "radmind.yaml and starts the daemon with it, and the world here is made so too"
    ),
}
LISTED_FILES = {
    "docs/policy.md": "tests/test_explain.py runs these against the doc's config and "
    "compares their output",
}
# A program the docs' examples run on a managed host -> (what runs here, why).
COMMANDS = {
    "journalctl -u nginx -f": ("echo nginx log line", "needs systemd's journal; -f never ends"),
    "systemctl is-active nginx": ("true", "needs systemd and an nginx unit"),
    "vacuumdb -z": ('test "$PGDATABASE" = app', "needs PostgreSQL; checks -e arrived"),
}
# Documentation addresses -> index of the test daemon's listener.
ADDRESSES = {
    "10.0.0.11": 0,
    "127.0.0.1": 0,
    "10.0.0.12:7421": 1,
    "[2001:db8::21]:7420": 2,
    "[2001:db8::5]:7420": 2,
}
SYSTEM_PATHS = (
    "/etc/radmin",
    "/etc/nginx",
    "/srv",
    "/run",
    "/var/lib/radmin",
    "/var/tmp/radmin",
    "/var/log",
)
FIRST_TIME = (("radmind", "init"), ("radmin-cli", "keygen"))
HOME_OF_FILE = {
    "README.md": "ops",
    "docs/install.md": "install",
    "docs/fanout.md": "ops",
    "docs/ansible.md": "ops",
}
LOCAL_FILES = {
    "nginx.conf": "events {}\n",
    "app.env": "DEPLOY_ENV=test\n",
    "backup.tgz": "not really a tarball\n",
    "site/index.html": "<p>hello</p>\n",
}


# -- the lines --------------------------------------------------------------------------


@dataclass(frozen=True)
class DocCommand:
    file: str  # relative to the repository
    line: int
    text: str  # as the doc writes it, without its comment
    comment: str
    shown: str | None = None  # the output a ```console block shows for it

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def expected_status(self) -> int:
        match = re.search(r"exit status (\d+)", self.comment)
        return int(match.group(1)) if match else 0

    @property
    def radmin_words(self) -> list[str]:
        """The words of the pipeline stage that runs radmin-cli or radmind."""
        stage = next(s for s in self.text.split("|") if _RADMIN_STAGE.match(s))
        return shlex.split(stage)


_RADMIN_STAGE = re.compile(r"\s*(radmin-cli|radmind)(\s|$)")


def _lines_of(block) -> Iterator[tuple[int, str, str | None]]:
    if block.language in SHELL_LANGUAGES:
        yield from ((number, line, None) for number, line in shell_lines(block))
    elif block.language == "console":
        yield from console_examples(block)


# Sections whose ```console output is compared with what the command really prints
# (file, heading): output that does not vary from run to run.
COMPARED_SECTIONS = {("README.md", "### Many hosts: node sets, gather, batches, reruns")}


def _compared_lines(text: str) -> set[int]:
    """Line numbers inside the COMPARED_SECTIONS of one file's text."""
    compared: set[int] = set()
    inside = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            inside = any(line == heading for _, heading in COMPARED_SECTIONS)
        if inside:
            compared.add(number)
    return compared


def doc_commands() -> list[DocCommand]:
    found = []
    for path in doc_files():
        name = str(path.relative_to(REPO))
        text = path.read_text()
        compared = _compared_lines(text) if name in {f for f, _ in COMPARED_SECTIONS} else set()
        for block in fenced_blocks(text):
            for number, line, output in _lines_of(block):
                command, comment = split_comment(line)
                if any(_RADMIN_STAGE.match(stage) for stage in command.split("|")):
                    shown = output if number in compared else None
                    found.append(DocCommand(name, number, command, comment, shown))
    return found


DOC_COMMANDS = doc_commands()


def _param(doc: DocCommand):
    reason = LISTED.get(doc.text) or LISTED_FILES.get(doc.file)
    marks = [pytest.mark.skip(reason=f"listed: {reason}")] if reason else []
    return pytest.param(doc, id=doc.id, marks=marks)


# -- the world they run in ----------------------------------------------------------------


@dataclass
class World:
    base: Path
    root: Path  # stands for /
    work: Path  # the current folder: the files the docs upload
    config: Path  # ROOT/etc/radmin/radmind.yaml
    listeners: list[str]
    homes: dict[str, ClientHome]
    fresh: Iterator[int] = field(default_factory=lambda: iter(range(1000)))

    def fresh_folder(self, what: str) -> Path:
        return self.base / f"fresh-{what}-{next(self.fresh)}"


def map_paths(text: str, root: Path) -> str:
    pattern = "|".join(re.escape(p) for p in SYSTEM_PATHS)
    return re.sub(rf"(?<![\w./-])({pattern})(?=[/\s'\"]|$)", rf"{root}\1", text)


def map_addresses(text: str, listeners: list[str]) -> str:
    keys = sorted(ADDRESSES, key=len, reverse=True)
    pattern = "|".join(re.escape(k) for k in keys)
    return re.sub(
        rf"(?<![\w.:\[\]-])({pattern})(?![\w.:\]-])",
        lambda m: listeners[ADDRESSES[m.group(1)]],
        text,
    )


def map_commands(text: str) -> str:
    for doc_text, (replacement, _why) in COMMANDS.items():
        text = text.replace(doc_text, replacement)
    return text


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def _client_config(listeners: list[str]) -> str:
    """config/config.yaml with its addresses mapped, plus install.md's server1."""
    example = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    hosts = {
        name: map_addresses(str(address), listeners) for name, address in example["hosts"].items()
    }
    hosts["server1"] = listeners[0]
    return yaml.safe_dump({"hosts": hosts, "groups": example["groups"]}, sort_keys=False)


def _server_config(root: Path, install_home: ClientHome, ops_home: ClientHome) -> Path:
    """radmind.yaml as install.md makes it, then moved under ROOT onto loopback."""
    etc = root / "etc" / "radmin"
    init = run_radmind("init", "--dir", str(etc))
    assert init.returncode == 0, init.stderr
    paste = run_cli(install_home, "fingerprint", "--paste")
    assert paste.returncode == 0, paste.stderr
    ops_block = (
        f"  ops:\n    cert: {ops_home.cert}\n    allow:\n"
        f'      exec: ["*"]\n      put: ["/**"]\n      get: ["/var/log/**"]\n'
        "      shell: true\n"
    )
    config = etc / "radmind.yaml"
    text = config.read_text() + paste.stdout.decode() + ops_block
    ipv6 = '"[::1]:0"' if _ipv6_loopback() else '"127.0.0.3:0"'
    listen = f'["127.0.0.1:0", "127.0.0.2:0", {ipv6}]'
    assert text.count('["0.0.0.0:7420"]') == 1
    config.write_text(map_paths(text.replace('["0.0.0.0:7420"]', listen), root))
    return config


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("docs")
    root, work = base / "root", base / "work"
    for folder in ("etc/nginx", "srv/app", "run", "var/log"):
        (root / folder).mkdir(parents=True)
    (root / "var/log/syslog").write_text("Nov 26 10:00:00 web1 radmind: listening\n")
    for name, content in LOCAL_FILES.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(content)
    install_home = ClientHome(base / "install-home")
    keygen = run_cli(install_home, "keygen")
    assert keygen.returncode == 0, keygen.stderr
    homes = {"install": install_home, "ops": make_client_home(base / "ops-home")}
    config = _server_config(root, install_home, homes["ops"])
    daemon = ConfigFileDaemon(config)
    try:
        daemon.start()
        listening = next(e for e in daemon.events() if e.get("event") == "listening")
        listeners = [str(a) for a in listening["addresses"]]
        for home in homes.values():
            (home.path / "config.yaml").write_text(_client_config(listeners))
        yield World(base, root, work, config, listeners, homes)
    finally:
        for home in homes.values():  # docs/ansible.md's lines start radmin-cli mux
            run_cli(home, "mux", "--stop")
        daemon.stop()


# -- running one line ---------------------------------------------------------------------


@dataclass
class Outcome:
    status: int
    output: str
    stdout: str = ""
    stderr: str = ""


def _environment(world: World, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADMIN_")}
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env["RADMIN_HOME"] = str(home)
    env["RADMIN_CONFIG"] = str(world.config)
    return env


def _prepared(world: World, doc: DocCommand) -> tuple[str, dict[str, str]]:
    """The command line as run here, and its environment (see the table above)."""
    root, home = world.root, world.homes[HOME_OF_FILE[doc.file]].path
    if tuple(doc.radmin_words[:2]) in FIRST_TIME:
        root, home = world.fresh_folder("root"), world.fresh_folder("home")
    text = map_paths(map_addresses(map_commands(doc.text), world.listeners), root)
    return text, _environment(world, home)


def _run(command: str, env: dict[str, str], cwd: Path) -> Outcome:
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Outcome(done.returncode, done.stdout + done.stderr, done.stdout, done.stderr)


def _run_until_listening(command: str, env: dict[str, str], cwd: Path) -> Outcome:
    """A foreground daemon: wait until it listens, then SIGTERM, as its comment says."""
    log = cwd.parent / "foreground-radmind.log"
    with log.open("w") as output:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
    try:
        wait_until(
            lambda: '"event": "listening"' in log.read_text() or proc.poll() is not None,
            20,
            "the foreground radmind to listen",
        )
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return Outcome(proc.wait(timeout=40), log.read_text())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _run_detached(command: str, env: dict[str, str], world: World) -> Outcome:
    """`run --detach`: with log.file uncommented; stopped through the pidfile."""
    config = world.config.with_name("radmind-detached.yaml")
    text = world.config.read_text()
    assert text.count("  # file: ") == 1
    config.write_text(text.replace("  # file: ", "  file: "))
    words = shlex.split(command)
    pidfile = Path(words[words.index("--pidfile") + 1])
    outcome = _run(command, {**env, "RADMIN_CONFIG": str(config)}, world.work)
    if pidfile.exists():
        os.kill(int(pidfile.read_text()), signal.SIGTERM)
        wait_until(lambda: not pidfile.exists(), 40, "the detached radmind to stop")
    return outcome


def _second_daemon_config(world: World) -> Path:
    """The world's config with a state_dir of its own: a second daemon on the world
    daemon's state_dir is refused (its lock), as it must be."""
    config = world.config.with_name("radmind-second.yaml")
    lines = world.config.read_text().splitlines(keepends=True)
    (index,) = [i for i, line in enumerate(lines) if line.startswith("state_dir:")]
    lines[index] = f"state_dir: {world.root / 'var' / 'lib' / 'radmin-second'}\n"
    config.write_text("".join(lines))
    return config


def run_doc_command(world: World, doc: DocCommand) -> Outcome:
    command, env = _prepared(world, doc)
    words = doc.radmin_words
    if words[:2] == ["radmind", "run"] or words == ["radmind"]:
        second = _second_daemon_config(world)
        command = command.replace(str(world.config), str(second))
        env = {**env, "RADMIN_CONFIG": str(second)}
        if "--detach" in words:
            return _run_detached(command, env, replace(world, config=second))
        return _run_until_listening(command, env, world.work)
    return _run(command, env, world.work)


@pytest.mark.parametrize("doc", [_param(doc) for doc in DOC_COMMANDS])
def test_doc_command(world, doc):
    outcome = run_doc_command(world, doc)
    assert outcome.status == doc.expected_status, (
        f"{doc.id}: {doc.text}\nexpected exit status {doc.expected_status}, "
        f"got {outcome.status}:\n{outcome.output}"
    )
    if doc.shown is not None:
        assert _as_shown(outcome) == _as_shown_text(doc.shown), f"{doc.id}: {doc.text}"


def _as_shown(outcome: Outcome) -> list[str]:
    """What a terminal shows, as the doc's comparison reads it: stdout's lines in order,
    then stderr's, without first-contact warnings (they depend on what ran before)."""
    lines = outcome.stdout.splitlines() + outcome.stderr.splitlines()
    return [line for line in lines if not line.startswith("Warning: permanently added")]


def _as_shown_text(shown: str) -> list[str]:
    """The doc's lines in the same order as _as_shown: stdout, then radmin-cli's own
    stderr lines (which a terminal may show first, as `-v`'s)."""
    lines = shown.splitlines()
    own = [line for line in lines if line.startswith("radmin-cli: ") or _is_summary(line)]
    return [line for line in lines if line not in own] + own


def _is_summary(line: str) -> bool:
    return (
        re.fullmatch(r"\d+ (ok|changed|unchanged|failed|refused|unreachable|skipped)\b.*", line)
        is not None
    )


# -- the lists above stay true ------------------------------------------------------------


def test_the_docs_show_commands_from_every_file_that_has_them():
    files = {doc.file for doc in DOC_COMMANDS}
    assert {"README.md", "docs/install.md", "docs/policy.md"} <= files
    assert len(DOC_COMMANDS) >= 25


def test_every_replacement_and_exception_names_a_line_the_docs_still_show():
    texts = {doc.text for doc in DOC_COMMANDS}
    for line in LISTED:
        assert line in texts, f"no doc shows {line!r} any more: drop it from the lists"
    for program in COMMANDS:
        assert any(program in text for text in texts), program
    shown = "\n".join(texts) + (REPO / "config" / "config.yaml").read_text()
    for address in ADDRESSES:
        assert address in shown, address


def test_commands_are_written_the_two_documented_ways():
    """Commands only in ```sh/```bash (bare) or ```console (`$ `) blocks: a command
    anywhere else would escape the tests above."""
    for path in doc_files():
        for block in fenced_blocks(path.read_text()):
            for offset, line in enumerate(block.lines):
                where = f"{path.name}:{block.first_line + offset}"
                if block.language in SHELL_LANGUAGES:
                    assert not line.startswith("$ "), f"{where}: no `$ ` in a sh block"
                elif block.language != "console":
                    assert not _RADMIN_STAGE.match(line.removeprefix("$ ")), (
                        f"{where}: a command in a ```{block.language} block: use sh or console"
                    )
