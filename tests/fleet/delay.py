"""Userspace delay for one fleet link, because this kernel has no netem.

usage: delay.py IF_A IF_B ONE_WAY_MS

Copies every Ethernet frame between two interfaces of the current namespace (AF_PACKET),
each held ONE_WAY_MS before it is sent on, so the link's round trip grows by twice that.
Order is kept (FIFO per direction). Fine for control-plane traffic (handshakes, requests);
not for bulk data, which is why tests/fleet/netns.py splices it in only while a test
asks for delay. Adapted from the shared netns-delay.py recipe (without jitter and loss:
loss is nftables' job in the fleet).
"""

from __future__ import annotations

import collections
import socket
import sys
import threading
import time

ETH_P_ALL = 3
PACKET_OUTGOING = 4


def packet_socket(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((interface, 0))
    return sock


def pump(source: socket.socket, sink: socket.socket, delay: float) -> None:
    """Two threads: one stamps each frame with its due time, one sends it when due."""
    queue: collections.deque[tuple[float, bytes]] = collections.deque()
    ready = threading.Condition()

    def receive() -> None:
        while True:
            frame, address = source.recvfrom(65535)
            if address[2] == PACKET_OUTGOING:  # our own sends on this interface
                continue
            with ready:
                queue.append((time.monotonic() + delay, frame))
                ready.notify()

    def send() -> None:
        while True:
            with ready:
                while not queue:
                    ready.wait()
                due, frame = queue.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                sink.send(frame)
            except OSError:  # the other end is gone or the frame too big: a lost frame
                pass

    for target in (receive, send):
        threading.Thread(target=target, daemon=True).start()


def main(argv: list[str]) -> None:
    first, second, one_way_ms = argv[0], argv[1], float(argv[2])
    a, b = packet_socket(first), packet_socket(second)
    pump(a, b, one_way_ms / 1000)
    pump(b, a, one_way_ms / 1000)
    print(f"forwarding {first}<->{second}, {one_way_ms} ms each way", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
