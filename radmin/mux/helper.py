"""`radmin-cli mux`: the client home's connection helper, ssh's ControlPersist for radmin.

One process per client home holds authenticated daemon connections behind a Unix socket
(radmin/mux/__init__.py has the files). A client opens a session with one OPEN (a HELLO
with "mux": "open", the target and every option that decides trust and timing); the
helper answers with a pooled connection's or a fresh one's fingerprint -- or with the
exception its connect raised -- replays the daemon's HELLO, then relays radmin frames
both ways, verbatim, with heartbeats kept per hop. It follows REQUEST -> RESULT, so it
knows whether the daemon connection is between requests when the client leaves: then
the connection goes back to the pool; in the middle of one it is closed, and the daemon
ends the command's process group as for any dropped client. A REQUEST is never sent
again on another connection (exec is not idempotent).

Why the races ControlPath users know cannot happen here:
  * stale socket: the lock is the truth. A starting helper takes it (or leaves: another
    one is alive), unlinks whatever `sock` is left, then binds.
  * expiry: the helper decides to expire in its accept loop, so no accepted session is
    uncounted; it unlinks `sock` first (no new client can reach it), accepts what was
    already queued on the listener, closes it, lets every accepted session finish. A
    client that finds no socket starts a new helper or connects directly.
  * path length: the socket is bound and reached through /proc/self/fd (see MuxDir).
  * other users: the folder is 0700, and SO_PEERCRED must show our own uid.

A pooled connection is reused only while it is well within the daemon's idle timeout
(its HELLO says it: `idle_timeout`), and only if it is quiet: a pooled socket that became
readable with anything but heartbeats (EOF from a restarted daemon, an ERROR from a
reload that removed us) is dropped and a new connection opened.
"""

from __future__ import annotations

import argparse
import os
import sys

from radmin.mux import DEFAULT_IDLE_TIMEOUT, LOCK, START_WAIT_S, MuxDir

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

    from radmin.identity import ClientHome


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m radmin.mux.helper")
    parser.add_argument("--home", required=True)
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT)
    parser.add_argument("--detach", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Started by a client (`--detach`): fork once more so the starter can reap its child
    at once and the helper belongs to no one's session (start_new_session did setsid)."""
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.detach and os.fork() != 0:
        os._exit(0)
    from radmin.identity import ClientHome

    return run(
        ClientHome.resolve(args.home), args.idle_timeout, ready_fd=1 if args.detach else None
    )


def run(home: ClientHome, idle_timeout: float, ready_fd: int | None = None) -> int:
    """Own the home's helper socket until idle for `idle_timeout` s or stopped: 0; or
    0 at once with "already running" when another helper owns it."""
    import fcntl

    mux = MuxDir.open(home, create=True)
    assert mux is not None
    lock_fd = mux.open_file(LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        _wait_listening(mux, START_WAIT_S)
        print(f"radmin-cli mux: already running for {home.path}", file=sys.stderr)
        return 0
    # Listening first, the heavy imports after: clients queue on the listener meanwhile.
    listener = _listen(mux)
    if ready_fd is not None:
        _say_ready(ready_fd)
    from radmin import log
    from radmin.mux.server import Helper

    log.configure(level="info", fmt="console", stream=sys.stderr)
    logger = log.get_logger(helper_pid=os.getpid())

    helper = Helper(home, mux, listener, lock_fd, idle_timeout, logger)
    logger.info("mux_started", home=str(home.path), idle_timeout=idle_timeout)
    helper.serve()
    return 0


def _wait_listening(mux: MuxDir, seconds: float) -> None:
    """Another helper holds the lock but may not listen yet (several clients started one
    at once): wait until it does, so our starter finds it when we say we are done."""
    import socket
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            probe.connect(mux.sock_path)
            return  # it listens (the probe's session ends at once: it sends nothing)
        except OSError:
            time.sleep(0.01)  # between its flock() and its listen(): microseconds
        finally:
            probe.close()


def _listen(mux: MuxDir) -> socket.socket:
    import socket

    mux.unlink_sock()  # a SIGKILLed helper's leftover: we hold the lock, so it is dead
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    listener.bind(mux.sock_path)
    listener.listen(128)
    return listener


def _say_ready(fd: int) -> None:
    """Tell the starter we listen, then let go of its pipe (stdout becomes /dev/null)."""
    try:
        os.write(fd, b"ready\n")
    except OSError:
        pass
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


if __name__ == "__main__":
    sys.exit(main())
