"""The floor for a put on this machine: stdlib only, no radmin, no framing.

A sender process and a receiver process over TLS 1.3 on loopback, each measuring its own
CPU (getrusage), in four stages so that each cost shows by difference:

    tls       sender: sendall of one 1 MiB buffer; receiver: recv_into a 1 MiB buffer
    +hash     both ends SHA-256 every byte (a put verifies end to end)
    +file     the sender reads the file (readinto a reused buffer); the receiver writes
              with O_DIRECT (page-aligned mmap buffers), fdatasync at the end
    threads   +file with the hashing on a second thread at both ends (wall time)
    STAGE/ra  the same with OpenSSL's read-ahead on the receiver (see read_ahead)

    .venv/bin/python scripts/put_floor.py [FILE] [--dest DIR]

FILE defaults to 1 GiB of random data made in DIR (default: the current directory). What
radmin spends beyond the `+file` row is its own overhead (framing, heartbeats, threads).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import queue
import resource
import socket
import ssl
import subprocess
import tempfile
import threading
import time

MiB = 1 << 20


def contexts(tmp: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key, cert = f"{tmp}/k.pem", f"{tmp}/c.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=floor"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return server, client


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def send(sock: ssl.SSLSocket, path: str, size: int, stage: str) -> None:
    if stage == "tls" or stage == "+hash":
        buf = memoryview(os.urandom(MiB))
        h = hashlib.sha256()
        for _ in range(size // MiB):
            if stage == "+hash":
                h.update(buf)
            sock.sendall(buf)
        return
    threaded = stage == "threads"
    bufs = [memoryview(bytearray(MiB)) for _ in range(4)]
    free: queue.SimpleQueue = queue.SimpleQueue()
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for b in bufs:
        free.put(b)
    h = hashlib.sha256()

    def hasher() -> None:
        while (item := todo.get()) is not None:
            h.update(item[0][: item[1]])
            free.put(item[0])

    t = threading.Thread(target=hasher)
    if threaded:
        t.start()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = free.get()
            n = f.readinto(b)
            if not n:
                break
            if threaded:
                todo.put((b, n))
            else:
                h.update(b[:n])
                free.put(b)
            sock.sendall(b[:n])
    if threaded:
        todo.put(None)
        t.join()


def read_ahead(sock: ssl.SSLSocket) -> None:
    """OpenSSL's read-ahead (not exposed by Python's ssl): one read() for many records
    instead of two (header, body) per 16 KiB record. MEASUREMENT ONLY: it pokes the SSL*
    out of CPython's _ssl object, and bytes buffered in OpenSSL are invisible to poll()
    and to SSLSocket.pending(), which a poll-driven loop cannot live with."""
    import ctypes

    libssl = ctypes.CDLL("libssl.so.3")
    libssl.SSL_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    ptr = ctypes.c_void_p.from_address(id(sock._sslobj) + 3 * ctypes.sizeof(ctypes.c_void_p))
    libssl.SSL_ctrl(ptr, 41, 1, None)  # SSL_CTRL_SET_READ_AHEAD


def receive(sock: ssl.SSLSocket, dest: str, size: int, stage: str) -> None:
    h = hashlib.sha256()
    if stage.endswith("/ra"):
        read_ahead(sock)
        stage = stage[:-3]
    if stage in ("tls", "+hash"):
        buf = memoryview(bytearray(MiB))
        got = 0
        while got < size:
            n = sock.recv_into(buf)
            if stage == "+hash":
                h.update(buf[:n])
            got += n
        return
    threaded = stage == "threads"
    fd = os.open(f"{dest}/floor.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    free: queue.SimpleQueue = queue.SimpleQueue()
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(4):
        free.put(memoryview(mmap.mmap(-1, MiB)))

    def writer() -> None:
        while (item := todo.get()) is not None:
            h.update(item)
            os.write(fd, item)
            free.put(item)

    t = threading.Thread(target=writer)
    if threaded:
        t.start()
    got = 0
    try:
        while got < size:
            b = free.get()
            filled = 0
            while filled < MiB:  # whole MiB per buffer: O_DIRECT wants aligned lengths
                filled += sock.recv_into(b[filled:])
            got += filled
            if threaded:
                todo.put(b)
            else:
                h.update(b)
                os.write(fd, b)
                free.put(b)
        if threaded:
            todo.put(None)
            t.join()
        os.fdatasync(fd)
    finally:
        os.close(fd)
        os.unlink(f"{dest}/floor.out")


def one(stage: str, path: str, dest: str, size: int, ctxs: tuple) -> tuple[float, float, float]:
    server_ctx, client_ctx = ctxs
    bufsize = int(os.environ.get("FLOOR_SOCKBUF", "0"))  # SO_SNDBUF/SO_RCVBUF (0: autotuned)

    def sized(sock: socket.socket) -> socket.socket:
        if bufsize:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
        return sock

    listener = sized(socket.create_server(("127.0.0.1", 0)))
    port = listener.getsockname()[1]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the sender
        listener.close()
        os.close(r)
        raw = sized(socket.socket())
        raw.connect(("127.0.0.1", port))
        sock = client_ctx.wrap_socket(raw)
        start = cpu()
        send(sock, path, size, stage.removesuffix("/ra"))
        sock.recv(1)  # the receiver has it all
        os.write(w, f"{cpu() - start}".encode())
        os._exit(0)
    os.close(w)
    conn, _ = listener.accept()
    sock = server_ctx.wrap_socket(conn, server_side=True)
    rcvbuf = int(os.environ.get("FLOOR_RCVBUF", "0"))  # the receiver's, once connected
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    start_cpu, start = cpu(), time.monotonic()
    receive(sock, dest, size, stage)
    sock.sendall(b"k")
    receiver_cpu, wall = cpu() - start_cpu, time.monotonic() - start
    sender_cpu = float(os.read(r, 100))
    os.waitpid(pid, 0)
    sock.close()
    listener.close()
    return sender_cpu, receiver_cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?")
    parser.add_argument("--dest", default=".")
    parser.add_argument("--stages", default="tls,+hash,+file,threads")
    parser.add_argument("--json", action="store_true", help="one JSON line per stage")
    args = parser.parse_args()
    path = args.file
    if path is None:
        path = f"{args.dest}/floor-1GiB.bin"
        if not os.path.exists(path) or os.path.getsize(path) != 1024 * MiB:
            with open(path, "wb") as f:
                for _ in range(128):
                    f.write(os.urandom(8 * MiB))
    size = os.path.getsize(path) // MiB * MiB
    gib = size / (1 << 30)
    with tempfile.TemporaryDirectory() as tmp:
        ctxs = contexts(tmp)
        if not args.json:
            print(f"{'stage':<8} {'sender s/GiB':>12} {'receiver s/GiB':>14} {'MB/s':>7}")
        for stage in args.stages.split(","):
            s, r, wall = one(stage, path, args.dest, size, ctxs)
            if args.json:
                row = {"stage": stage, "sender": s / gib, "receiver": r / gib, "wall": wall}
                print(json.dumps(row), flush=True)
            else:
                print(f"{stage:<8} {s / gib:>12.2f} {r / gib:>14.2f} {size / wall / 1e6:>7.0f}")


if __name__ == "__main__":
    main()
