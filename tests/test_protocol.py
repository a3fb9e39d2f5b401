"""Framing: malformed frames get a clear protocol error and a closed connection, and the
daemon goes on serving everyone else."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pytest
from support import frames_after_hello, run_cli, tls_connect, trickled_frames

from radmin.errors import ConnectionClosed, ProtocolError
from radmin.protocol import HEADER, MAX_CONTROL, MAX_DATA, FrameSocket, FrameType, parse_header


def _error_reply(frames: FrameSocket) -> dict:
    """The ERROR frame the daemon sends before hanging up, then the hang-up itself."""
    frame_type, message = frames.recv_json(FrameType.ERROR)
    assert frame_type is FrameType.ERROR
    with pytest.raises((ConnectionClosed, OSError)):
        frames.recv_frame()
    return message


def _assert_still_serving(daemon, home) -> None:
    assert run_cli(home, "ping", daemon.address).returncode == 0


def test_oversized_frame_is_refused_before_reading_it(daemon, client_home):
    frames = frames_after_hello(client_home, daemon.port)
    # Announce 2 GiB and send nothing more: the daemon must answer from the header alone.
    frames.sock.sendall(HEADER.pack(FrameType.REQUEST, 2**31))
    message = _error_reply(frames)
    assert message["code"] == "protocol"
    assert "exceeds the limit" in message["message"]
    event = daemon.wait_for_event(lambda e: e.get("event") == "protocol_error")
    assert "exceeds the limit" in event["error"]
    _assert_still_serving(daemon, client_home)


def test_oversized_data_frame_is_refused(daemon, client_home):
    frames = frames_after_hello(client_home, daemon.port)
    frames.sock.sendall(HEADER.pack(FrameType.STDIN, MAX_DATA + 1))
    assert "exceeds the limit" in _error_reply(frames)["message"]


def test_truncated_frame_is_a_protocol_error(daemon, client_home):
    frames = frames_after_hello(client_home, daemon.port)
    payload = b'{"op":"ping"}'
    frames.sock.sendall(HEADER.pack(FrameType.REQUEST, len(payload) + 10) + payload)
    frames.sock.shutdown(socket.SHUT_WR)  # half-close: we can still read the daemon's reply
    event = daemon.wait_for_event(lambda e: e.get("event") == "protocol_error")
    assert "truncated" in event["error"]
    _assert_still_serving(daemon, client_home)


def test_unknown_frame_type_is_a_protocol_error(daemon, client_home):
    frames = frames_after_hello(client_home, daemon.port)
    frames.sock.sendall(struct.pack("!BI", 0x7F, 0))
    assert "unknown frame type 0x7f" in _error_reply(frames)["message"]
    _assert_still_serving(daemon, client_home)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [(b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object"), (b"\xff\xfe", "not valid JSON")],
)
def test_invalid_json_control_message_is_a_protocol_error(daemon, client_home, payload, expected):
    frames = frames_after_hello(client_home, daemon.port)
    frames.send_frame(FrameType.REQUEST, payload)
    assert expected in _error_reply(frames)["message"]
    _assert_still_serving(daemon, client_home)


def test_data_frame_where_a_request_is_expected_is_refused(daemon, client_home):
    frames = frames_after_hello(client_home, daemon.port)
    frames.send_frame(FrameType.STDIN, b"rm -rf /")
    assert "expected a REQUEST/CANCEL frame, got STDIN" in _error_reply(frames)["message"]


def test_request_before_hello_is_refused(daemon, client_home):
    frames = FrameSocket(tls_connect(client_home, daemon.port))
    frames.send_json(FrameType.REQUEST, {"op": "ping"})
    assert "expected a HELLO frame" in _error_reply(frames)["message"]


def test_hello_without_common_protocol_version_is_refused(daemon, client_home):
    frames = FrameSocket(tls_connect(client_home, daemon.port))
    frames.send_json(FrameType.HELLO, {"protocols": [99, 100]})
    message = _error_reply(frames)["message"]
    assert "no common protocol version" in message and "[1]" in message


def test_unknown_operation_is_refused_but_connection_stays(daemon, client_home):
    frames = frames_after_hello(client_home, daemon.port)
    frames.send_json(FrameType.REQUEST, {"op": "task_shutdown"})
    _, reply = frames.recv_json(FrameType.RESULT)
    assert reply == {
        "ok": False,
        "error": "failed",
        "message": "unsupported operation 'task_shutdown'",
    }
    frames.send_json(FrameType.REQUEST, {"op": "ping"})
    _, reply = frames.recv_json(FrameType.RESULT)
    assert reply["ok"] is True and reply["client"] == "ops"


def test_pipelined_requests_in_one_write_are_all_answered(daemon, client_home):
    """The seed's "sticky packets": several frames in one TCP segment must stay apart."""
    frames = frames_after_hello(client_home, daemon.port)
    one = HEADER.pack(FrameType.REQUEST, 13) + b'{"op":"ping"}'
    frames.sock.sendall(one * 5)
    replies = [frames.recv_json(FrameType.RESULT)[1] for _ in range(5)]
    assert all(r["ok"] for r in replies)


# -- the frame layer alone ------------------------------------------------------------


def test_parse_header_checks_limits_per_type():
    assert parse_header(HEADER.pack(FrameType.REQUEST, MAX_CONTROL)) == (
        FrameType.REQUEST,
        MAX_CONTROL,
    )
    with pytest.raises(ProtocolError):
        parse_header(HEADER.pack(FrameType.REQUEST, MAX_CONTROL + 1))
    assert parse_header(HEADER.pack(FrameType.FILE_DATA, MAX_DATA))[1] == MAX_DATA
    with pytest.raises(ProtocolError):
        parse_header(HEADER.pack(FrameType.EOF, 1))


def test_frames_split_at_every_byte_boundary_reassemble():
    sent = [(FrameType.STDOUT, b"abc"), (FrameType.STDERR, b""), (FrameType.STDOUT, b"x" * 300)]
    with trickled_frames(sent) as receiver:
        got = [(f.type, bytes(f.payload)) for f in (receiver.recv_frame() for _ in sent)]
    assert got == sent


def test_max_size_data_frames_back_to_back():
    left, right = socket.socketpair()
    with left, right:
        sender, receiver = FrameSocket(left), FrameSocket(right)
        chunks = [bytes([i]) * MAX_DATA for i in range(4)]
        thread = threading.Thread(
            target=lambda: [sender.send_frame(FrameType.FILE_DATA, c) for c in chunks]
        )
        thread.start()
        for chunk in chunks:
            assert bytes(receiver.recv_frame().payload) == chunk
        thread.join()


@pytest.mark.parametrize("op", ["exec", "put", "get"])
def test_docs_protocol_md_field_tables_are_generated_from_the_declared_fields(op):
    """REQUEST fields are declared once (radmin/ops/*.py FIELDS); the doc is generated
    from them by scripts/gen-config-docs, so it cannot drift."""
    from radmin.ops import exec as exec_op
    from radmin.ops import fields
    from radmin.ops import get as get_op
    from radmin.ops import put as put_op

    declared = {"exec": exec_op.FIELDS, "put": put_op.FIELDS, "get": get_op.FIELDS}[op]
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    assert fields.reference_markdown(declared) in doc, (
        "docs/protocol.md is out of date: run scripts/gen-config-docs"
    )


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({}, "exec: command is required"),
        ({"command": ""}, "exec: command: expected a non-empty string"),
        ({"command": "x", "cwd": "rel"}, "exec: cwd: must be an absolute path"),
        ({"command": "x", "env": {"A B": "1"}}, "invalid environment variable name"),
        ({"command": "x", "env": {"A": 1}}, "the value of A must be a string"),
        ({"command": "x", "timeout": 0}, "exec: timeout: must be a positive number"),
        ({"command": "x", "timeout": True}, "exec: timeout: expected a number"),
        ({"command": "x", "stdin": "yes"}, "exec: stdin: expected true or false"),
    ],
)
def test_exec_fields_name_the_bad_one(params, says):
    from radmin.errors import BadRequest
    from radmin.ops.exec import parse_params

    with pytest.raises(BadRequest) as refused:
        parse_params(params, None)
    assert says in str(refused.value)


@pytest.mark.parametrize("run_id", ["bad id!", "", "-x", "a" * 65, 12, "x\ny"])
def test_a_malformed_run_id_is_a_bad_request_and_never_logged(daemon, client_home, run_id):
    frames = frames_after_hello(client_home, daemon.port)
    frames.send_json(FrameType.REQUEST, {"op": "ping", "run_id": run_id})
    _, reply = frames.recv_json(FrameType.RESULT)
    assert (reply["ok"], reply["error"]) == (False, "bad_request")
    frames.send_json(FrameType.REQUEST, {"op": "ping", "run_id": "CHG-1234"})
    assert frames.recv_json(FrameType.RESULT)[1]["ok"] is True
    event = daemon.wait_for_event(lambda e: e.get("run_id") == "CHG-1234")
    assert event["event"] == "request"
    assert not [e for e in daemon.events() if e.get("run_id") == run_id]
