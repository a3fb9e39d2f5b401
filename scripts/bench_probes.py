"""Small programs scripts/bench.py runs in other interpreters, one per subcommand.

They live apart from bench.py because each needs a different venv: `pssh-lib` runs in
.bench/venv-tools (the parallel-ssh library), `api-throughput` and `idle-connections`
in .bench/venv-radmin (radmin as installed for users), `tcp-send` anywhere. Each prints
one JSON line on stdout and bounds its own run time, so a stuck peer cannot hang it.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import threading
import time
from pathlib import Path


def pssh_lib(args: argparse.Namespace) -> dict:
    """`true` on N hosts with ParallelSSHClient; in-process time around run_command+join.

    The orchestrator times the whole process too (start-up and imports included), which
    is what it compares, like the wall time of the other command-line tools.
    """
    from pssh.clients import ParallelSSHClient

    started = time.perf_counter()
    client = ParallelSSHClient(
        ["127.0.0.1"] * args.hosts,
        port=args.port,
        user="root",
        pkey=args.key,
        pool_size=args.hosts,
        num_retries=1,
        timeout=args.timeout,
    )
    output = client.run_command("true", stop_on_errors=False)
    client.join(output, timeout=args.timeout)
    elapsed = time.perf_counter() - started
    failed = [o.host for o in output if o.exception is not None or o.exit_code != 0]
    return {"inproc_s": elapsed, "hosts": len(output), "failed": len(failed)}


def _options(home: str):
    from radmin.client import ClientOptions
    from radmin.identity import ClientHome

    return ClientOptions(ClientHome(Path(home)))


def api_throughput(args: argparse.Namespace) -> dict:
    """Threads, each with one connection, calling run("true") in a loop for a fixed time.

    Connections are opened before the clock starts: this measures requests on reused
    connections, which is what a program using the Python API gets.
    """
    from radmin.client import connect
    from radmin.hosts import Target

    options = _options(args.home)
    counts = [0] * args.threads
    errors: list[str] = []
    window: dict[str, float] = {}

    def start_clock() -> None:  # runs once, before any thread is released
        window["start"] = time.monotonic()
        window["deadline"] = window["start"] + args.seconds

    ready = threading.Barrier(args.threads + 1, action=start_clock)

    def worker(index: int) -> None:
        try:
            conn = connect(Target(f"t{index}", "127.0.0.1", args.port), options)
        except Exception as exc:
            errors.append(f"connect: {exc}")
            ready.abort()
            return
        with conn:
            try:
                ready.wait(timeout=60)
            except threading.BrokenBarrierError:
                return
            while time.monotonic() < window["deadline"] and counts[index] < args.max_per_thread:
                result = conn.run("true")
                if result.status != 0:
                    errors.append(f"exit status {result.status}")
                    return
                counts[index] += 1
        window[f"end{index}"] = time.monotonic()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.threads)]
    for thread in threads:
        thread.start()
    try:
        ready.wait(timeout=60)
    except threading.BrokenBarrierError:
        return {"error": "; ".join(errors) or "threads did not connect in time"}
    start = window["start"]
    for thread in threads:
        thread.join(timeout=args.seconds + 60)
    ends = [v for k, v in window.items() if k.startswith("end")]
    elapsed = (max(ends) if ends else time.monotonic()) - start
    total = sum(counts)
    return {"execs": total, "seconds": elapsed, "rate": total / elapsed, "errors": errors[:5]}


def idle_connections(args: argparse.Namespace) -> dict:
    """Open N authenticated connections (one ping each), report, hold them until stdin closes.

    The orchestrator reads the daemon's RSS while they are held open and idle.
    """
    from radmin.client import connect
    from radmin.hosts import Target

    options = _options(args.home)
    conns = []
    try:
        for index in range(args.count):
            conn = connect(Target(f"c{index}", "127.0.0.1", args.port), options)
            conns.append(conn)
            conn.ping()
        print(json.dumps({"open": len(conns)}), flush=True)
        # Hold until the orchestrator closes our stdin, or the hold time runs out.
        select.select([sys.stdin], [], [], args.hold)
        return {"closed": len(conns)}
    finally:
        for conn in conns:
            conn.close()


def tcp_send(args: argparse.Namespace) -> dict:
    """Send `mib` MiB of zeros to 127.0.0.1:port as fast as the kernel takes them."""
    chunk = memoryview(bytes(1 << 20))
    with socket.create_connection(("127.0.0.1", args.port), timeout=60) as sock:
        for _ in range(args.mib):
            sock.sendall(chunk)
    return {"sent_mib": args.mib}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="probe", required=True)
    lib = sub.add_parser("pssh-lib")
    lib.add_argument("--port", type=int, required=True)
    lib.add_argument("--key", required=True)
    lib.add_argument("--hosts", type=int, required=True)
    lib.add_argument("--timeout", type=float, default=120)
    api = sub.add_parser("api-throughput")
    api.add_argument("--home", required=True)
    api.add_argument("--port", type=int, required=True)
    api.add_argument("--threads", type=int, default=20)
    api.add_argument("--seconds", type=float, default=10)
    api.add_argument("--max-per-thread", type=int, default=100_000)
    idle = sub.add_parser("idle-connections")
    idle.add_argument("--home", required=True)
    idle.add_argument("--port", type=int, required=True)
    idle.add_argument("--count", type=int, default=200)
    idle.add_argument("--hold", type=float, default=120)
    send = sub.add_parser("tcp-send")
    send.add_argument("--port", type=int, required=True)
    send.add_argument("--mib", type=int, default=1024)
    args = parser.parse_args()
    probe = {
        "pssh-lib": pssh_lib,
        "api-throughput": api_throughput,
        "idle-connections": idle_connections,
        "tcp-send": tcp_send,
    }[args.probe]
    result = probe(args)
    print(json.dumps(result), flush=True)
    return 1 if result.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
