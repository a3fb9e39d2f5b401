"""Property-based fuzzing, from an authenticated but restricted client, of ONE real radmind.

Targets: the frame layer (any type byte, random payloads, oversized headers, truncation)
and every control message: HELLO, REQUEST for ping / exec / put with random field values
(and values strict JSON refuses: NaN, huge integers, lone surrogates, NULs, deep
nesting), CANCEL, DIGEST, WINDOW, and the daemon's own types sent the wrong way.

The oracle is the protocol:
  * a REQUEST is answered by exactly one RESULT (after PROCEED and the command's output
    when an exec is allowed) with a known error code -- never an ERROR, a bare close or
    an internal error -- and a REQUEST holding a refused value gets `bad_request`;
  * other bytes get the RESULTs of the requests among them, then at most one ERROR,
    after which the daemon closes; it never closes without an ERROR mid-frame;
  * the restricted client never gets a put started, nor an exec of anything but echo;
  * afterwards the daemon answers ping, is back to its baseline of descriptors and
    threads, and its log holds no crash.

Cheap by design: many cases per connection, a new one only when the daemon closed the
last. Harmless by construction: every command string sent is `echo ` followed by letters,
digits and inert punctuation, env names come from a fixed list, and the client may run
only `echo *` and upload nothing. RADMIN_FUZZ_SCALE (default 1) scales the case counts.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import string
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import (
    Daemon,
    frames_after_hello,
    open_fds,
    ping_works,
    proc_status,
    tls_connect,
    wait_until,
)

from radmin import RUN_ID_PATTERN
from radmin.errors import ConnectionClosed
from radmin.identity import ClientHome
from radmin.protocol import HEADER, FrameSocket, FrameType, max_payload

SCALE = float(os.environ.get("RADMIN_FUZZ_SCALE", "1"))
REPLY_TIMEOUT = 10.0
KNOWN_CODES = {"bad_request", "denied", "failed", "not_authorized"}
PING = b'{"op":"ping"}'


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


# -- JSON text with what json.dumps never writes ------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text sent as is. `unsafe`: strict decoding must refuse it; else `value` is
    what the daemon decodes it to."""

    text: str
    unsafe: bool
    value: Any = None


UNSAFE_ATOMS = [
    Raw(text, True)
    for text in (
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "-1e999",
        "1" + "0" * 400,
        "9" * 5000,
        "-" + "9" * 21,
        '"\\ud800"',
        '"a\\udfffb"',
        '"\\u0000"',
        '"x\\u0000y"',
        "[" * 40 + "]" * 40,
        '{"a":' * 40 + "1" + "}" * 40,
        "[" * 5000 + "]" * 5000,
        '{"\\udc00":1}',
        '{"a\\u0000":1}',
    )
]
SAFE_ATOMS = [
    Raw("1e308", False, 1e308),
    Raw("-0", False, 0),
    Raw("1E+2", False, 100.0),
    Raw("9" * 20, False, int("9" * 20)),
    Raw("-" + "9" * 20, False, -int("9" * 20)),
    Raw('"\\ud83d\\ude00"', False, "\U0001f600"),
    Raw('"\\u00e9t\\u00e9"', False, "\u00e9t\u00e9"),
    Raw("[[[[[[[[1]]]]]]]]", False, [[[[[[[[1]]]]]]]]),
]
MISSING = Raw("", False)  # a field left out of the message

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cc"]), max_size=24)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**18), 10**18)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
ATOMS = st.sampled_from(UNSAFE_ATOMS + SAFE_ATOMS)
FLAT = SCALARS | ATOMS  # cheap to draw: for the many fields where nesting adds nothing
VALUES = st.recursive(
    FLAT,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(TEXT, kids, max_size=3),
    max_leaves=4,
)
NOT_A_MAPPING = SCALARS | st.lists(SCALARS, max_size=3) | ATOMS


def to_json(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        items = (f"{json.dumps(k)}:{to_json(v)}" for k, v in value.items() if v is not MISSING)
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value)


def to_python(value: Any) -> Any:
    """What the daemon decodes `value` to (if it is safe)."""
    if isinstance(value, Raw):
        return value.value
    if isinstance(value, dict):
        return {k: to_python(v) for k, v in value.items() if v is not MISSING}
    if isinstance(value, list):
        return [to_python(v) for v in value]
    return value


def is_unsafe(value: Any) -> bool:
    if isinstance(value, Raw):
        return value.unsafe
    if isinstance(value, dict):
        return any(is_unsafe(v) for v in value.values())
    if isinstance(value, list):
        return any(is_unsafe(v) for v in value)
    return False


def message(extras: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """`fields` over random `extras` (which must not replace them)."""
    return {**{k: v for k, v in extras.items() if k not in fields}, **fields}


# -- the client side of a case ------------------------------------------------------------


class Peer:
    """The fuzzing client's connection, renewed only when the daemon has closed it."""

    def __init__(self, home: ClientHome, port: int, greet: bool = True):
        self.home = home
        self.port = port
        self.greet = greet  # False: the case sends its own HELLO
        self._frames: FrameSocket | None = None

    @property
    def frames(self) -> FrameSocket:
        if self._frames is None:
            if self.greet:
                self._frames = frames_after_hello(self.home, self.port)
            else:
                self._frames = FrameSocket(tls_connect(self.home, self.port))
            self._frames.sock.settimeout(REPLY_TIMEOUT)
        return self._frames

    def send(self, *wire: bytes) -> None:
        self.frames.sock.sendall(b"".join(wire))

    def drop(self) -> None:
        if self._frames is not None:
            self._frames.close()
            self._frames = None


@dataclass
class Replies:
    results: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None  # the ERROR frame before the daemon closed
    others: list[FrameType] = field(default_factory=list)


def wire(frame_type: int, payload: bytes) -> bytes:
    return HEADER.pack(frame_type, len(payload)) + payload


# OpenSSL's answer to a TCP FIN without close_notify (our half-close): a fatal alert,
# after which the daemon's ERROR frame can no longer be written.
RAGGED_EOF_ALERT = "TLSV1_ALERT_DECODE_ERROR"


def read_replies(
    peer: Peer,
    requests: int,
    allowed: frozenset[FrameType] = frozenset(),
    half_closed: bool = False,
    stop_at: FrameType | None = None,
) -> Replies:
    """Frames until `requests` RESULTs (or a `stop_at` frame), or until an ERROR -- after
    which the daemon must close. A close without ERROR, silence, or a frame of another
    type fails the case; once we `half_closed`, the TLS alert for that counts as the
    daemon's ERROR."""
    replies = Replies()
    while len(replies.results) < requests:
        try:
            frame = peer.frames.recv_frame()
        except ssl.SSLError as exc:
            peer.drop()
            if not (half_closed and exc.reason == RAGGED_EOF_ALERT):
                raise AssertionError(f"TLS failed without an ERROR frame: {exc!r}") from None
            replies.error = {"code": "tls_alert"}
            break
        except (ConnectionClosed, OSError) as exc:
            peer.drop()
            raise AssertionError(f"closed or silent without an ERROR frame: {exc!r}") from None
        if frame.type is FrameType.RESULT:
            replies.results.append(_checked_result(frame.json()))
        elif frame.type is FrameType.ERROR:
            replies.error = frame.json()
            _expect_close(peer)
            break
        elif frame.type in allowed:
            replies.others.append(frame.type)
            if frame.type is stop_at:
                break
        else:
            peer.drop()
            raise AssertionError(f"unexpected {frame.type.name} frame after {replies}")
    return replies


def _checked_result(reply: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        assert reply.get("error") in KNOWN_CODES, reply
        assert isinstance(reply.get("message"), str), reply
        assert "internal error" not in reply["message"], reply
    return reply


def _expect_close(peer: Peer) -> None:
    """After an ERROR the daemon hangs up: EOF or a reset, never another frame."""
    try:
        frame = peer.frames.recv_frame()
    except TimeoutError:
        raise AssertionError("the daemon sent ERROR but did not close") from None
    except (ConnectionClosed, OSError):
        frame = None
    peer.drop()
    assert frame is None, f"a {frame.type.name} frame after ERROR"


def one_result(peer: Peer) -> dict[str, Any]:
    replies = read_replies(peer, 1)
    assert replies.error is None, replies.error
    return replies.results[0]


# -- the daemon side: one daemon, a baseline, a clean log ----------------------------------


@pytest.fixture(scope="module")
def baseline(restricted_daemon: Daemon) -> tuple[int, int]:
    """Descriptors and threads of the idle daemon."""
    pid = restricted_daemon.proc.pid
    return open_fds(pid), proc_status(pid, "Threads")


@pytest.fixture
def fuzz_cases(fuzz_tally) -> Counter:
    return fuzz_tally.cases


@pytest.fixture
def fuzz(restricted_daemon, low_home, baseline, fuzz_tally) -> Callable:
    """Run a hypothesis-driven target against the daemon and check the aftermath."""

    def run(name: str, target: Callable[[Peer], None], examples: int) -> None:
        peer = Peer(low_home, restricted_daemon.port)
        before = fuzz_tally.cases[name]
        started = time.monotonic()
        try:
            target(peer)
        finally:
            fuzz_tally.seconds += time.monotonic() - started
            peer.drop()
        assert fuzz_tally.cases[name] - before >= int(examples * SCALE)
        _assert_unharmed(restricted_daemon, low_home, baseline)

    return run


def _assert_unharmed(daemon: Daemon, home: ClientHome, baseline: tuple[int, int]) -> None:
    frames = frames_after_hello(home, daemon.port)
    try:
        assert ping_works(frames)
    finally:
        frames.close()
    pid = daemon.proc.pid
    current = lambda: (open_fds(pid), proc_status(pid, "Threads"))  # noqa: E731
    try:
        wait_until(lambda: current() == baseline, 10, "descriptors and threads at baseline")
    except AssertionError:
        raise AssertionError(f"(fds, threads) {current()} != baseline {baseline}") from None
    crashes = [
        e
        for e in daemon.events()
        if e.get("event") in ("request_crashed", "session_crashed", "raw")
        or e.get("level") == "error"
    ]
    assert not crashes, crashes[:3]


# -- the frame layer -----------------------------------------------------------------------


def _request_payload(extras: dict[str, Any], op: Any) -> bytes:
    return to_json(message(extras, op=op)).encode()


OPS = st.sampled_from(["ping", "ping", "nope", ""]) | FLAT.filter(
    lambda v: v not in ("exec", "put")
)
CONTROL_PAYLOADS = st.one_of(
    st.builds(_request_payload, st.dictionaries(TEXT, FLAT, max_size=2), OPS),
    st.binary(max_size=48),
    st.sampled_from([b"", b"[]", b"1", b'"op"', b"null", b"{", b"\xef\xbb\xbf{}", b"{}{}"]),
)


@st.composite
def frames_on_the_wire(draw) -> tuple[int, bytes]:
    """(type byte, wire bytes): an honest frame of any type, or an oversized header."""
    kind = draw(st.sampled_from(["request"] * 4 + ["cancel", "any", "oversized"]))
    if kind == "oversized":
        frame_type = draw(st.sampled_from(list(FrameType)))
        length = draw(st.integers(max_payload(frame_type) + 1, 2**32 - 1))
        return frame_type, HEADER.pack(frame_type, length)
    if kind == "any":
        frame_type = draw(st.integers(0, 255))
        payload = draw(st.binary(max_size=64) | CONTROL_PAYLOADS)
    else:
        frame_type = FrameType.REQUEST if kind == "request" else FrameType.CANCEL
        payload = draw(CONTROL_PAYLOADS)
    return frame_type, wire(frame_type, payload)


def test_fuzz_frame_layer(fuzz, fuzz_cases):
    examples = 3000

    @fuzz_settings(examples)
    @given(
        frames=st.lists(frames_on_the_wire(), min_size=1, max_size=4),
        truncate=st.sampled_from([False] * 4 + [True]),  # each truncation costs a connection
        cut=st.floats(0, 1, exclude_max=True),
    )
    def case(peer: Peer, frames: list[tuple[int, bytes]], truncate: bool, cut: float) -> None:
        fuzz_cases["frame layer"] += 1
        requests = sum(1 for frame_type, _ in frames if frame_type == FrameType.REQUEST)
        data = b"".join(w for _, w in frames)
        if not truncate:  # whole frames, then a ping: RESULTs and the ping's, or an ERROR
            peer.send(data, wire(FrameType.REQUEST, PING))
            replies = read_replies(peer, requests + 1)
            assert replies.error is not None or replies.results[-1]["ok"] is True
            return
        last = len(frames[-1][1])  # the last frame truncated, then our half of TCP closed
        peer.send(data[: len(data) - last + 1 + int(cut * (last - 1))])
        socket.socket.shutdown(peer.frames.sock, socket.SHUT_WR)  # TLS stays on for reading
        replies = read_replies(peer, requests + 1, half_closed=True)
        assert replies.error is not None, "a truncated frame must be answered with ERROR"
        peer.drop()

    fuzz("frame layer", case, examples)


# -- HELLO ---------------------------------------------------------------------------------


def test_fuzz_hello(fuzz, fuzz_cases, restricted_daemon, low_home):
    examples = 300

    @fuzz_settings(examples)
    @given(
        protocols=st.lists(st.integers(-2, 3) | FLAT, max_size=4) | FLAT | st.just(MISSING),
        extras=st.dictionaries(TEXT, FLAT, max_size=2),
    )
    def case(protocols: Any, extras: dict[str, Any]) -> None:
        fuzz_cases["hello"] += 1
        hello = message(extras, protocols=protocols)
        offered = to_python(protocols)
        accepted = not is_unsafe(hello) and isinstance(offered, list) and 1 in offered
        fresh = Peer(low_home, restricted_daemon.port, greet=False)  # HELLO comes first
        try:
            fresh.send(
                wire(FrameType.HELLO, to_json(hello).encode()), wire(FrameType.REQUEST, PING)
            )
            replies = read_replies(fresh, 1, allowed=frozenset({FrameType.HELLO}))
        finally:
            fresh.drop()
        if accepted:
            assert replies.others == [FrameType.HELLO]
            assert replies.results[0]["client"] == "low"
        else:
            assert replies.others == [] and replies.error is not None
            assert replies.error["code"] == "protocol"

    fuzz("hello", lambda peer: case(), examples)


# -- REQUEST: ping, exec, put --------------------------------------------------------------


def test_fuzz_ping_requests(fuzz, fuzz_cases):
    """Any extra fields: answered ok, or bad_request exactly when a value is refused."""
    examples = 2500

    @fuzz_settings(examples)
    @given(extras=st.dictionaries(TEXT, VALUES, max_size=3))
    def case(peer: Peer, extras: dict[str, Any]) -> None:
        fuzz_cases["ping"] += 1
        request = message(extras, op="ping")
        peer.send(wire(FrameType.REQUEST, to_json(request).encode()))
        reply = one_result(peer)
        if is_unsafe(request) or not valid_run_id(request):
            assert reply.get("error") == "bad_request", reply
        else:
            assert reply["ok"] is True and reply["client"] == "low", reply

    fuzz("ping", case, examples)


def valid_run_id(request: dict[str, Any]) -> bool:
    """A run_id goes into every log line of its request: absent, or as the contract says."""
    run_id = request.get("run_id")
    if run_id is None:
        return True
    return isinstance(run_id, str) and re.fullmatch(RUN_ID_PATTERN, run_id)


# Inert in a shell word: no quotes, globs, expansions, redirections or separators.
ECHO_ARGS = st.text(st.sampled_from(string.ascii_letters + string.digits + " -_.,:=+@%/éü日本"))
COMMANDS = st.one_of(
    ECHO_ARGS.map(lambda args: "echo " + args),
    st.sampled_from(["", " ", "echo", "echo\t", MISSING]),
    SCALARS.filter(lambda v: not isinstance(v, str)),
    st.sampled_from([Raw('"echo \\ud800"', True), Raw('"echo a\\u0000b"', True)]),
)
ENV = st.one_of(
    st.dictionaries(
        st.sampled_from(["FUZZ_A", "FUZZ_B", "FOO\n", "1X", "", "A-B", "\u00c4B"]),
        TEXT | VALUES,
        max_size=3,
    ),
    NOT_A_MAPPING,
    st.just(MISSING),
)
TIMEOUTS = st.one_of(
    st.just(MISSING),
    st.none(),
    st.floats(0.001, 5),
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(10**17, 10**18),
    st.booleans(),
    TEXT,
    ATOMS,
)
CWDS = st.one_of(
    st.just(MISSING),
    st.none(),
    st.sampled_from(["/", "/tmp", "/nonexistent-radmin-fuzz", "relative", ""]),
    VALUES,
)
# What the client sends after PROCEED, before the EOF that ends its input.
STDIN_SCRIPT = st.lists(
    st.one_of(
        st.binary(max_size=512).map(lambda data: wire(FrameType.STDIN, data)),
        CONTROL_PAYLOADS.map(lambda payload: wire(FrameType.CANCEL, payload)),
        st.just(wire(FrameType.EOF, b"")),
        st.tuples(st.sampled_from(list(FrameType)), CONTROL_PAYLOADS).map(lambda t: wire(*t)),
    ),
    max_size=3,
)
EXEC_STREAM = frozenset({FrameType.PROCEED, FrameType.STDOUT, FrameType.STDERR, FrameType.WINDOW})


def test_fuzz_exec_requests(fuzz, fuzz_cases):
    """Random fields; only `echo ...` may ever start, and every request ends with a RESULT."""
    examples = 1500

    @fuzz_settings(examples)
    @given(
        command=COMMANDS,
        cwd=CWDS,
        env=ENV,
        timeout=TIMEOUTS,
        stdin=st.booleans() | VALUES | st.just(MISSING),
        extras=st.dictionaries(TEXT, FLAT, max_size=2),
        script=STDIN_SCRIPT,
    )
    def case(peer: Peer, command, cwd, env, timeout, stdin, extras, script) -> None:
        fuzz_cases["exec"] += 1
        request = message(
            extras, op="exec", command=command, cwd=cwd, env=env, timeout=timeout, stdin=stdin
        )
        peer.send(wire(FrameType.REQUEST, to_json(request).encode()))
        proceed = frozenset({FrameType.PROCEED})
        first = read_replies(peer, 1, allowed=proceed, stop_at=FrameType.PROCEED)
        assert first.error is None, first.error
        if not first.others:  # refused
            assert not first.results[0]["ok"]
            assert first.results[0]["error"] == "bad_request" or not is_unsafe(request)
            return
        assert isinstance(command, str) and command.startswith("echo "), command
        assert not is_unsafe(request)
        eof = wire(FrameType.EOF, b"")
        peer.send(*script, b"" if eof in script else eof, wire(FrameType.REQUEST, PING))
        replies = read_replies(peer, 2, allowed=EXEC_STREAM)
        if replies.error is None:
            assert replies.results[-1]["ok"] is True  # the ping after the exec

    fuzz("exec", case, examples)


def test_fuzz_put_requests(fuzz, fuzz_cases):
    """Random fields; a client with allow.put: [] never gets an upload started."""
    examples = 1500
    missing_or = lambda *choices: st.one_of(st.just(MISSING), *choices, FLAT)  # noqa: E731

    @fuzz_settings(examples)
    @given(
        path=missing_or(st.sampled_from(["/tmp/radmin-fuzz", "/tmp/", "x", "/tmp/../etc/x"])),
        name=missing_or(st.sampled_from(["f", ".", "..", "a/b", ""])),
        size=missing_or(st.integers(-5, 10**6), st.integers(0, 10**19)),
        sha256=missing_or(st.sampled_from(["0" * 64, "A" * 64, "0" * 63])),
        mode=missing_or(st.integers(-1, 0o10000)),
        owner=missing_or(st.sampled_from(["root", "nobody", "no-such-user", ""])),
        group=missing_or(st.sampled_from(["root", "nogroup", "no-such-group", ""])),
        extras=st.dictionaries(TEXT, FLAT, max_size=2),
    )
    def case(peer: Peer, path, name, size, sha256, mode, owner, group, extras) -> None:
        fuzz_cases["put"] += 1
        request = message(
            extras,
            op="put",
            path=path,
            name=name,
            size=size,
            sha256=sha256,
            mode=mode,
            owner=owner,
            group=group,
        )
        peer.send(wire(FrameType.REQUEST, to_json(request).encode()))
        reply = one_result(peer)  # a PROCEED would fail here: not allowed
        assert reply["error"] in (
            {"bad_request"} if is_unsafe(request) else {"bad_request", "denied"}
        )

    fuzz("put", case, examples)


# -- the other control frames, between requests --------------------------------------------


def test_fuzz_other_control_frames(fuzz, fuzz_cases):
    """A CANCEL between requests is ignored (it raced a RESULT); any other control frame
    there, or a CANCEL that is not a safe JSON object, is a protocol error."""
    examples = 1300
    kinds = [FrameType.CANCEL] * 3 + [
        FrameType.DIGEST,
        FrameType.WINDOW,
        FrameType.PROCEED,
        FrameType.RESULT,
        FrameType.ERROR,
        FrameType.HELLO,
    ]

    @fuzz_settings(examples)
    @given(
        frame_type=st.sampled_from(kinds),
        body=st.dictionaries(TEXT, FLAT, max_size=3) | FLAT,
    )
    def case(peer: Peer, frame_type: FrameType, body: Any) -> None:
        fuzz_cases["control"] += 1
        peer.send(wire(frame_type, to_json(body).encode()), wire(FrameType.REQUEST, PING))
        replies = read_replies(peer, 1)
        ignored = frame_type is FrameType.CANCEL and isinstance(body, dict) and not is_unsafe(body)
        if ignored:
            assert replies.error is None and replies.results[0]["ok"] is True
        else:
            assert replies.error is not None and replies.error["code"] == "protocol"

    fuzz("control", case, examples)
