"""No crash, no leak, no lock-out from an authenticated client.

Each test speaks real frames to a real radmind: malformed requests are answered, not
crashed on; thousands of connections do not break the daemon or the client; a peer
cannot make the daemon allocate what it only announces, nor hold a connection by
dripping bytes.
"""

from __future__ import annotations

import pytest
from support import frames_after_hello, ping_works, send_request

# -- malformed requests: a RESULT with bad_request, and the session goes on -------------

_EXEC = {"command": '"echo hi"', "cwd": "null", "env": "{}", "timeout": "null", "stdin": "false"}
_PUT = {
    "path": '"/tmp/radmin-test"',
    "name": '"radmin-test"',
    "size": "1",
    "sha256": "null",
    "mode": "420",
    "owner": "null",
    "group": "null",
}


def _request(op: str, defaults: dict[str, str], **raw_fields: str) -> bytes:
    """A REQUEST payload written as JSON text, so it can hold what json.dumps never
    writes (NaN, 5,000-digit integers, lone surrogates)."""
    fields = {**defaults, **raw_fields}
    body = "".join(f',"{key}":{value}' for key, value in fields.items())
    return f'{{"op":"{op}"{body}}}'.encode()


def _exec(**raw_fields: str) -> bytes:
    return _request("exec", _EXEC, **raw_fields)


def _put(**raw_fields: str) -> bytes:
    return _request("put", _PUT, **raw_fields)


def _ping(**raw_fields: str) -> bytes:
    return _request("ping", {}, **raw_fields)


MALFORMED = {
    "array nested 20,000 deep": _ping(x="[" * 20_000 + "]" * 20_000),
    "object nested 10,000 deep": _ping(x='{"":' * 10_000 + "1" + "}" * 10_000),
    "5,000-digit integer": _ping(x="9" * 5_000),
    "5,000-digit put size": _put(size="9" * 5_000),
    "5,000-digit exec timeout": _exec(timeout="1" * 5_000),
    "lone surrogate in command": _exec(command='"echo \\ud800"'),
    "lone surrogate in env value": _exec(env='{"FOO":"\\ud800"}'),
    "lone surrogate in env name": _exec(env='{"\\udfff":"x"}'),
    "lone surrogate in cwd": _exec(cwd='"/tmp/\\ud800"'),
    "lone surrogate in op": _request("\\ud800", {}),
    "lone surrogate in put path": _put(path='"/tmp/\\ud800"'),
    "lone surrogate in put name": _put(path="null", name='"\\ud800"'),
    "lone surrogate in owner": _put(owner='"\\ud800"'),
    "lone surrogate in group": _put(group='"\\udbff"'),
    "NUL in owner": _put(owner='"root\\u0000x"'),
    "NUL in group": _put(group='"root\\u0000x"'),
    "NaN timeout": _exec(timeout="NaN"),
    "Infinity timeout": _exec(timeout="Infinity"),
    "-Infinity timeout": _exec(timeout="-Infinity"),
    "1e400 timeout": _exec(timeout="1e400"),
    "1 and 400 zeros timeout": _exec(timeout="1" + "0" * 400),
    "env name with a trailing newline": _exec(env='{"FOO\\n":"x"}'),
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_request_is_answered_bad_request_and_session_goes_on(
    restricted_daemon, low_home, payload
):
    frames = frames_after_hello(low_home, restricted_daemon.port)
    reply = send_request(frames, payload)
    assert reply["ok"] is False
    assert reply["error"] == "bad_request", reply
    assert reply["message"]
    assert ping_works(frames)
