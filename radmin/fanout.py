"""Many hosts at once: a bounded pool of threads, results in the order hosts were given.

Threads, not asyncio: the work is blocking TLS I/O that releases the GIL, and asyncio
alone costs ~90 ms to import on the client's start-up path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_parallel(items: Sequence[T], work: Callable[[T], R], parallel: int) -> list[R]:
    """Run `work` on every item with at most `parallel` at once; `work` must not raise."""
    results: list[R | None] = [None] * len(items)
    if len(items) == 1:
        results[0] = work(items[0])
        return results  # type: ignore[return-value]
    next_index = iter(range(len(items)))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            results[index] = work(items[index])

    threads = [
        threading.Thread(target=worker, daemon=True) for _ in range(min(parallel, len(items)))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results  # type: ignore[return-value]
