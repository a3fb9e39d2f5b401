"""radmin on a real fleet: hosts in network namespaces, each with its own address, radmind,
identity and state, driven by radmin-cli from a control namespace (tests/fleet/conftest.py).

Links are impaired the way this kernel allows (no netem): tbf for rate, nftables for loss,
a userspace forwarder for delay, a switch port down for a partition. The numbers measured
here (fan-out time at 50 ms RTT, put throughput over a shaped link) are printed at the end
of the run and recorded in docs/performance.md; the machine is shared, so they are noisy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from fleet.radmin_fleet import (
    BASE_SIZE,
    MEASURED,
    json_lines,
    requests_of_run,
    wait_for,
)

RTT_ONE_WAY_MS = 25  # the delay forwarder on the control node's link: 50 ms round trips
LINK_RATE = "100mbit"
LINK_RATE_MBPS = 100
PUT_SIZE = 30 * 1024 * 1024
CONNECT_TIMEOUT = 2.0


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.write(os.urandom(size))
    return path


def timed(run, *args, **kwargs):
    started = time.monotonic()
    done = run(*args, **kwargs)
    return done, time.monotonic() - started


def by_host(records: list[dict]) -> dict[str, dict]:
    return {record["host"]: record for record in records}


def new_marker() -> str:
    """A `sleep` duration no other process has in its command line, about 6 s."""
    return f"6.{random.randint(10**8, 10**9 - 1)}"


def marked_pids(marker: str) -> list[int]:
    """The hosts' processes running `sleep MARKER` (not the radmin-cli that asked)."""
    found = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True)
    pids = []
    for pid in map(int, found.stdout.split()):
        try:
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if b"radmin-cli" not in command_line:
            pids.append(pid)
    return pids


def spans_if_all(items: list, count: int) -> list | None:
    """`items` once there are `count` of them (for wait_for), else None."""
    return items if len(items) >= count else None


def netns_of(pid: int) -> str:
    done = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True)
    return done.stdout.strip()


# -- the fleet itself ----------------------------------------------------------------------


def test_every_host_answers_with_its_own_identity_on_v4_and_v6(fleet):
    done = fleet.cli("ping", "--json", "--strict-host-key", "@fleet,h1-v6")
    assert done.returncode == 0, done.stderr
    records = by_host(json_lines(done.stdout))
    assert set(records) == {f"h{i}" for i in range(1, BASE_SIZE + 1)} | {"h1-v6"}
    assert all(record["status"] == "ok" for record in records.values())
    assert len({host.fingerprint for host in fleet.hosts}) == len(fleet.hosts)


def test_each_command_runs_in_its_hosts_namespace(fleet):
    done = fleet.cli("exec", "--json", "@fleet", "hostname -I")
    assert done.returncode == 0, done.stderr
    for name, record in by_host(json_lines(done.stdout)).items():
        assert fleet.host(name).node.ipv4 in record["stdout"].split()


# -- fan-out over a 50 ms round trip ---------------------------------------------------------


def best_of_two(fleet, *args: str) -> float:
    """The faster of two runs of radmin-cli ARGS (which must succeed): the machine is
    shared, and a timing bound should not fail on one stall of someone else's."""
    times = []
    for _ in range(2):
        done, seconds = timed(fleet.cli, *args)
        assert done.returncode == 0, done.stderr
        times.append(seconds)
    return min(times)


@contextlib.contextmanager
def at_50ms(fleet) -> Iterator[float]:
    """Every packet to and from the control node delayed 25 ms each way: every host is
    50 ms away. Yields the round trip radmin-cli ping measures (in seconds)."""
    with fleet.net.delay(fleet.net.control, RTT_ONE_WAY_MS, log=fleet.work / "delay.log"):
        ping = fleet.cli("ping", "--json", "h1")
        assert ping.returncode == 0, ping.stderr
        rtt = json_lines(ping.stdout)[0]["rtt_ms"] / 1000
        assert 0.045 <= rtt < 0.5, f"the delay forwarder should give ~50 ms, got {rtt * 1000:.1f}"
        yield rtt


def test_fan_out_at_50ms_rtt_takes_about_one_hosts_time(fleet):
    with at_50ms(fleet) as rtt:
        one_s = best_of_two(fleet, "exec", "h2", "true")
        every_s = best_of_two(fleet, "exec", "-p", str(BASE_SIZE), "@fleet", "true")
        serial, serial_s = timed(fleet.cli, "exec", "-p", "1", "@fleet", "true")
        assert serial.returncode == 0, serial.stderr
    MEASURED["exec true, 1 host at 50 ms RTT (s)"] = f"{one_s:.2f}"
    MEASURED[f"exec true, {BASE_SIZE} hosts at 50 ms RTT, -p {BASE_SIZE} (s)"] = (
        f"{every_s:.2f} (-p 1: {serial_s:.2f})"
    )
    # One by one, each further host costs at least TCP + TLS + hello + request: 4 round
    # trips, 1.4 s for 7 hosts. Together they cost about one host's time: the fan-out
    # must save at least half of those round trips (room for a busy machine).
    assert every_s + (BASE_SIZE - 1) * 2 * rtt < serial_s, (one_s, every_s, serial_s)
    assert every_s < one_s + (BASE_SIZE - 1) * 2 * rtt, (one_s, every_s)


def test_fan_out_to_64_hosts_at_50ms_rtt(fleet64):
    count = len(fleet64.hosts)
    with at_50ms(fleet64) as rtt:
        every_s = best_of_two(fleet64, "exec", "-p", str(count), f"@fleet{count}", "true")
    MEASURED[f"exec true, {count} hosts at 50 ms RTT, -p {count} (s)"] = f"{every_s:.2f}"
    serial = count * 4 * rtt  # 12.8 s of round trips one by one
    assert every_s < serial / 4, (every_s, serial)


# -- a put over a slow, lossy link -----------------------------------------------------------


def test_put_30mib_to_every_host_over_a_100mbit_lossy_link_is_verified_then_unchanged(fleet):
    blob = random_file(fleet.work / "blob30", PUT_SIZE)
    expected = sha256_file(blob)
    target = str(fleet.srv / "blob30")
    hosts = fleet.net.hosts[:BASE_SIZE]
    with fleet.net.rate(hosts, LINK_RATE), fleet.net.loss(hosts, 1):
        done, wall_s = timed(fleet.cli, "put", "--json", str(blob), "@fleet", target)
        assert done.returncode == 0, done.stderr
        records = by_host(json_lines(done.stdout))
        again = fleet.cli("put", "--json", str(blob), "@fleet", target)
    assert len(records) == BASE_SIZE
    for name, record in records.items():
        assert (record["status"], record["sha256"]) == ("changed", expected), record
        assert sha256_file(fleet.host(name).files / "blob30") == expected  # each host's copy
    assert again.returncode == 0, again.stderr
    assert {r["status"] for r in json_lines(again.stdout)} == {"unchanged"}
    slowest = max(record["duration_s"] for record in records.values())
    per_host = PUT_SIZE / slowest / 1e6
    MEASURED[f"put 30 MiB to {BASE_SIZE} hosts, each over {LINK_RATE_MBPS} Mbit/s + 1 % loss"] = (
        f"{wall_s:.1f} s; {per_host:.1f} MB/s per host (link {LINK_RATE_MBPS / 8:.1f} MB/s), "
        f"{BASE_SIZE * PUT_SIZE / wall_s / 1e6:.1f} MB/s in all"
    )
    # tbf must have shaped it: no host faster than its link (plus tbf's 64 kB burst).
    assert per_host < LINK_RATE_MBPS / 8 * 1.1
    for host in fleet.hosts:
        (host.files / "blob30").unlink(missing_ok=True)


# -- one host changes under a fan-out ----------------------------------------------------------


def test_restarting_one_hosts_daemon_during_a_fan_out(fleet):
    """The restarted host's command either finishes (SIGTERM lets in-flight requests
    end) or is ended by the daemon with a result; never a hang or a traceback. Every
    other host succeeds, and the restarted daemon answers again."""
    victim = fleet.host("h5")
    marker = new_marker().replace("6.", "2.", 1)  # a 2 s command
    cli = fleet.cli_popen("exec", "--json", "@fleet", f"sleep {marker}")
    try:
        wait_for(lambda: len(marked_pids(marker)) >= BASE_SIZE, 20, "every host's command")
        fleet.restart(victim)
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    records = by_host(json_lines(out))
    assert "Traceback" not in err
    for name, record in records.items():
        if name != victim.name:
            assert (record["status"], record["exit_code"]) == ("ok", 0), record
    outcome = records[victim.name]
    assert outcome["status"] == "ok" or outcome["exit_code"] == 143, outcome
    assert cli.returncode == (0 if outcome["status"] == "ok" else 1), err
    again = fleet.cli("exec", victim.name, "true")
    assert again.returncode == 0, again.stderr


def test_a_rekeyed_host_alone_fails_loudly(fleet):
    victim = fleet.host("h4")
    saved = fleet.work / "h4-identity"
    saved.mkdir()
    for name in ("server.key", "server.crt"):
        shutil.copy2(victim.folder / name, saved / name)
    fleet.stop(victim)
    try:
        init = subprocess.run(
            [str(fleet.bin / "radmind"), "init", "--dir", str(victim.folder), "--force"],
            capture_output=True,
            text=True,
        )
        assert init.returncode == 0, init.stderr
        fleet.start(victim)
        done = fleet.cli("exec", "@fleet", "echo alive")
    finally:
        fleet.stop(victim)
        for name in ("server.key", "server.crt"):
            shutil.copy2(saved / name, victim.folder / name)
        shutil.rmtree(saved)
        fleet.start(victim)
    assert done.returncode == 255, done.stderr
    assert sorted(done.stdout.splitlines()) == sorted(
        f"{host.name}: alive" for host in fleet.hosts[:BASE_SIZE] if host is not victim
    )
    line = next(line for line in done.stderr.splitlines() if line.startswith("radmin-cli: h4:"))
    assert f"HOST KEY CHANGED for {victim.node.ipv4}:7420" in line
    assert f"{fleet.home / 'known_hosts'}:" in line  # names the line to remove
    failures = [line for line in done.stderr.splitlines() if line.startswith("radmin-cli: h")]
    assert failures == [line], done.stderr  # only h4 failed
    assert f"{BASE_SIZE - 1} ok, 1 unreachable (h4: HOST KEY CHANGED)" in done.stderr


# -- -p on 64 hosts ----------------------------------------------------------------------------


def test_parallel_8_on_64_hosts_never_holds_more_than_8_at_once(fleet64):
    """Observed in radmin-cli itself, while the run lasts: the sockets it holds, counted
    in /proc/PID/fd while it is stopped (SIGSTOP, then SIGCONT), so each count is one
    instant's truth. (A TCP table read from /proc/net/tcp or `ss` is not atomic: on a busy
    machine one read overlaps the close of one connection and the open of the next.)
    Never more than 8, and 8 reached; every host ran its request (the run id in each
    daemon's log)."""
    count = len(fleet64.hosts)
    run_id = f"p8-{os.urandom(4).hex()}"
    cli = fleet64.cli_popen(
        "exec", "-p", "8", "--run-id", run_id, f"@fleet{count}", "sleep 0.3; echo ran"
    )
    samples = []
    try:
        while cli.poll() is None:
            held = sockets_held(cli.pid)
            if held is not None:
                samples.append(held)
            time.sleep(0.01)
        out, err = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, err
    assert len(out.splitlines()) == count
    most = max(samples)
    MEASURED["most connections held at once, -p 8 over 64 hosts"] = (
        f"{most} (of {len(samples)} samples)"
    )
    assert most <= 8
    assert most >= 6, "the fan-out should actually run 8 at a time"
    wait_for(lambda: requests_of_run(fleet64.hosts, run_id) == count, 10, "every host's request")


def sockets_held(pid: int) -> int | None:
    """The sockets process `pid` has open, counted while all its threads are stopped;
    None if it is gone (or did not stop in time)."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return None
    try:
        deadline = time.monotonic() + 1.0
        while not all_threads_stopped(pid):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.0005)
        count = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        return count
    except OSError:
        return None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def all_threads_stopped(pid: int) -> bool:
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
        except OSError:
            continue  # a thread that just ended
        state = stat.rsplit(")", 1)[1].split()[0]
        if state not in ("T", "t", "Z", "X"):
            return False
    return True


# -- hosts that do not answer ----------------------------------------------------------------


def test_a_blackholed_address_and_a_silent_port_each_fail_within_connect_timeout(fleet):
    blackholed = "198.18.3.1"  # nobody has it, and nft drops what ctl sends there
    silent_host = fleet.host("h8")
    silent = f"{silent_host.node.ipv4}:7421"
    listener = fleet.net.spawn(
        silent_host.node,
        [sys.executable, "-c", SILENT_LISTENER, "7421"],
        log=fleet.work / "silent.log",
    )
    try:
        wait_for(
            lambda: b"7421" in fleet.net.run(silent_host.node, "ss", "-Hltn").stdout,
            10,
            "the silent listener",
        )
        with fleet.net.blackhole(blackholed):
            arrived, status = json_lines_as_they_come(
                fleet.cli_popen(
                    "exec",
                    "--json",
                    "--connect-timeout",
                    str(CONNECT_TIMEOUT),
                    f"@fleet,{blackholed},{silent}",
                    "echo alive",
                )
            )
    finally:
        listener.kill()
        listener.wait()
        fleet.net.processes.remove(listener)
    assert status == 255
    records = {record["host"]: record for _, record in arrived}
    after = {record["host"]: seconds for seconds, record in arrived}
    for name in (host.name for host in fleet.hosts[:BASE_SIZE]):
        assert (records[name]["status"], records[name]["stdout"]) == ("ok", "alive\n")
        assert after[name] < CONNECT_TIMEOUT  # the others went on meanwhile
    for address in (blackholed, silent):
        assert records[address]["status"] == "unreachable", records[address]
        assert CONNECT_TIMEOUT * 0.9 < after[address] < CONNECT_TIMEOUT + 2.0, after
    assert "timed out" in records[blackholed]["error"]
    assert "does not answer TLS" in records[silent]["error"]


def json_lines_as_they_come(cli: subprocess.Popen) -> tuple[list[tuple[float, dict]], int]:
    """Each --json line with the seconds after which it arrived, and the exit status."""
    started = time.monotonic()
    arrived = []
    assert cli.stdout is not None
    for line in cli.stdout:
        if line.startswith("{"):
            arrived.append((time.monotonic() - started, json.loads(line)))
    cli.stderr.read()  # type: ignore[union-attr]
    return arrived, cli.wait(timeout=30)


SILENT_LISTENER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[1])))
server.listen(64)
held = []
while True:
    held.append(server.accept())  # accepted, never answered
"""


# -- partitions (heartbeats) ---------------------------------------------------------------

HEARTBEAT = 1.0
# interface.md: three silent intervals mean the peer is dead; plus slack for a busy machine.
DETECTION_BOUND = 3 * HEARTBEAT + 3.0


class StampedLines:
    """A running radmin-cli's --json lines, each stamped (time.monotonic()) as it
    arrives, read by a thread so the test can act meanwhile."""

    def __init__(self, cli: subprocess.Popen):
        self.cli = cli
        self.lines: list[tuple[float, dict]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.cli.stdout is not None
        for line in self.cli.stdout:
            if line.startswith("{"):
                self.lines.append((time.monotonic(), json.loads(line)))

    def finish(self, timeout: float) -> tuple[int, str]:
        """The exit status and stderr; the client must end within `timeout` (no hang)."""
        try:
            status = self.cli.wait(timeout=timeout)
        finally:
            if self.cli.poll() is None:
                self.cli.kill()
                self.cli.wait()
        self.reader.join(5)
        return status, self.cli.stderr.read()  # type: ignore[union-attr]

    def of(self, name: str) -> tuple[float, dict]:
        return next((at, record) for at, record in self.lines if record["host"] == name)


def test_a_partition_mid_put_fails_that_host_alone_and_keeps_its_old_file(fleet):
    victim = fleet.host("h3")
    blob = random_file(fleet.work / "blob-partition", PUT_SIZE)
    target = fleet.srv / "partition.bin"
    for host in fleet.hosts[:BASE_SIZE]:
        (host.files / "partition.bin").write_bytes(b"the old file\n")
    hosts = fleet.net.hosts[:BASE_SIZE]
    with fleet.net.rate(hosts, LINK_RATE):
        lines = StampedLines(
            fleet.cli_popen(
                "put", "--json", "--heartbeat-interval", str(HEARTBEAT), str(blob), "@fleet",
                str(target),
            )
        )  # fmt: skip
        try:
            wait_for(
                lambda: any(
                    p.name != "partition.bin" and p.stat().st_size > 1 << 20
                    for p in victim.files.iterdir()
                ),
                20,
                "the upload to reach h3",
            )
            fleet.net.port_down(victim.node)
            cut = time.monotonic()
            # The daemon notices on its own (no heartbeat for three intervals) and
            # removes the partial upload; the old file stays.
            wait_for(
                lambda: [p.name for p in victim.files.iterdir()] == ["partition.bin"],
                DETECTION_BOUND,
                "h3's daemon to remove the partial upload",
            )
            daemon_noticed_s = time.monotonic() - cut
            status, err = lines.finish(timeout=60)
        finally:
            fleet.net.port_up(victim.node)
    at, record = lines.of(victim.name)
    client_noticed_s = at - cut
    MEASURED["partition mid-put noticed by the client / the daemon (s)"] = (
        f"{client_noticed_s:.1f} / {daemon_noticed_s:.1f} (heartbeat {HEARTBEAT:g} s)"
    )
    assert status == 255, err
    assert client_noticed_s < DETECTION_BOUND
    assert record["status"] == "error", record
    assert f"no answer from {victim.name}" in record["error"]
    assert (victim.files / "partition.bin").read_bytes() == b"the old file\n"
    for _, other in lines.lines:
        if other["host"] != victim.name:
            assert other["status"] == "changed", other
    assert len(lines.lines) == BASE_SIZE
    for host in fleet.hosts:
        (host.files / "partition.bin").unlink(missing_ok=True)


def test_a_partition_mid_exec_fails_that_host_and_its_daemon_kills_the_command(fleet):
    """Every host runs a ~6 s command (`sleep 30` in the issue, shortened so the others'
    success does not cost the suite 30 s); h6 is cut off while it runs."""
    victim = fleet.host("h6")
    marker = new_marker()
    lines = StampedLines(
        fleet.cli_popen(
            "exec", "--json", "--heartbeat-interval", str(HEARTBEAT), "@fleet", f"sleep {marker}"
        )
    )
    try:
        pids = wait_for(
            lambda: spans_if_all(marked_pids(marker), BASE_SIZE), 20, "every host's command"
        )
        victims = [pid for pid in pids if netns_of(pid) == victim.node.netns]
        assert victims
        fleet.net.port_down(victim.node)
        cut = time.monotonic()
        # The daemon kills the orphaned process group once three intervals are silent.
        wait_for(
            lambda: not any(pid in marked_pids(marker) for pid in victims),
            DETECTION_BOUND + 2,  # + kill_grace
            "h6's daemon to kill the orphaned command",
        )
        daemon_noticed_s = time.monotonic() - cut
        status, err = lines.finish(timeout=60)
    finally:
        fleet.net.port_up(victim.node)
    at, record = lines.of(victim.name)
    client_noticed_s = at - cut
    MEASURED["partition mid-exec noticed by the client / the daemon (s)"] = (
        f"{client_noticed_s:.1f} / {daemon_noticed_s:.1f} (heartbeat {HEARTBEAT:g} s)"
    )
    assert status == 255, err
    assert client_noticed_s < DETECTION_BOUND
    assert record["status"] == "unreachable", record
    assert f"no answer from {victim.name}" in record["error"]
    for _, other in lines.lines:
        if other["host"] != victim.name:
            assert (other["status"], other["exit_code"]) == ("ok", 0), other
    assert len(lines.lines) == BASE_SIZE
