"""The daemon's connection threads: one per connection, kept a moment for the next one.

socketserver's ThreadingMixIn starts a new threading.Thread for every connection and
lets it end with it. That cost ~0.1 ms of CPU per connection (the Thread object, the
start handshake, an 8 MiB stack mapped and unmapped) out of ~1.7 ms, and a fan-out's
connections arrive back to back. Here a thread whose connection has ended waits up to
`linger` seconds for the next one; at most `max_idle` wait at once, the others end. So
a fan-out at the client's default `-p 32` is served by the same 32 threads, a burst of
1,000 leaves at most `max_idle` threads behind, and after `linger` seconds of quiet the
daemon is back to its idle thread count (tests/security/test_fuzz.py checks that).
"""

from __future__ import annotations

import _thread
import threading
from collections.abc import Callable

Job = Callable[[], None]


class _Idle:
    """A thread waiting for a job: `wake` is released once `job` is set."""

    __slots__ = ("job", "wake")

    def __init__(self) -> None:
        self.wake = _thread.allocate_lock()
        self.wake.acquire()
        self.job: Job | None = None


class Workers:
    """Runs each job on its own thread, reusing threads that just finished one."""

    def __init__(self, max_idle: int = 64, linger: float = 2.0):
        self.max_idle = max_idle
        self.linger = linger
        self._lock = threading.Lock()
        self._idle: list[_Idle] = []  # the most recently idle last: its stack is warm

    @property
    def idle(self) -> int:
        return len(self._idle)

    def submit(self, job: Job) -> None:
        """Run `job` on an idle thread, or on a new one. Raises RuntimeError (as
        threading does) when no thread can be started. `job` must not raise."""
        with self._lock:
            waiting = self._idle.pop() if self._idle else None
        if waiting is None:
            # _thread, not threading.Thread: no Thread object, and no wait until the
            # new thread has started (the accept loop goes on at once).
            _thread.start_new_thread(self._run, (job,))
            return
        waiting.job = job
        waiting.wake.release()

    def _run(self, job: Job) -> None:
        while True:
            job()
            next_job = self._wait()
            if next_job is None:
                return
            job = next_job

    def _wait(self) -> Job | None:
        """The next job, or None when this thread should end."""
        me = _Idle()
        with self._lock:
            if len(self._idle) >= self.max_idle:
                return None
            self._idle.append(me)
        if not me.wake.acquire(timeout=self.linger):
            with self._lock:
                if me in self._idle:  # nobody took this thread: it ends
                    self._idle.remove(me)
                    return None
            # submit() popped it just as the wait ended: its job is on the way.
            me.wake.acquire()
        return me.job
