"""radmin/workers.py: the daemon's connection threads, reused and bounded."""

from __future__ import annotations

import threading
import time

from support import wait_until

from radmin.workers import Workers


def run_and_wait(workers: Workers, job) -> None:
    done = threading.Event()

    def wrapped() -> None:
        try:
            job()
        finally:
            done.set()

    workers.submit(wrapped)
    assert done.wait(5)


def test_a_thread_that_finished_a_job_takes_the_next():
    workers = Workers(max_idle=4, linger=5)
    seen: list[int] = []
    for _ in range(5):
        run_and_wait(workers, lambda: seen.append(threading.get_ident()))
        wait_until(lambda: workers.idle == 1, 5, "the thread to wait for the next job")
    assert len(set(seen)) == 1, seen


def test_at_most_max_idle_threads_wait_and_the_rest_end():
    workers = Workers(max_idle=2, linger=5)
    release = threading.Event()
    started = threading.Semaphore(0)

    def job() -> None:
        started.release()
        release.wait(5)

    before = threading.active_count()
    baseline = len(_tasks())
    for _ in range(6):  # six at once: six threads
        workers.submit(job)
    for _ in range(6):
        assert started.acquire(timeout=5)
    assert len(_tasks()) == baseline + 6
    release.set()
    wait_until(lambda: len(_tasks()) == baseline + 2, 5, "four threads to end")
    assert workers.idle == 2
    assert threading.active_count() == before  # _thread threads: no Thread objects


def test_idle_threads_end_after_linger():
    workers = Workers(max_idle=8, linger=0.2)
    baseline = len(_tasks())
    run_and_wait(workers, lambda: None)
    wait_until(lambda: workers.idle == 0 and len(_tasks()) == baseline, 5, "the thread to end")


def test_every_job_runs_once_when_submits_race_the_linger_expiry():
    """A thread whose wait expires just as submit() picks it still runs that job."""
    workers = Workers(max_idle=4, linger=0.002)
    ran: list[int] = []
    lock = threading.Lock()
    all_done = threading.Semaphore(0)

    def job(i: int) -> None:
        with lock:
            ran.append(i)
        all_done.release()

    for i in range(300):
        workers.submit(lambda i=i: job(i))
        time.sleep(0.002 * (i % 3) / 2)  # around the linger: before, at, after it
    for _ in range(300):
        assert all_done.acquire(timeout=5)
    assert sorted(ran) == list(range(300))


def _tasks() -> list[str]:
    """This process's threads, as the kernel lists them."""
    import os

    return os.listdir("/proc/self/task")
