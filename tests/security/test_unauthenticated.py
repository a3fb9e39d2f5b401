"""Peers that never authenticate, against one real radmind.

Every attempt must be refused during the TLS handshake:
  * the peer gets a TLS alert or nothing, never a byte of the radmin protocol (no HELLO);
  * the daemon logs `handshake_failed` with the reason, and nothing else about that peer:
    the HELLO and REQUEST frames each attacker sends are never read;
  * the daemon is left as it was: a listed client's `radmin-cli ping` works and the
    daemon's open file descriptors return to their count before any attack.

OpenSSL, behind the standard library's `ssl`, will not present a certificate with a
private key that is not its own, so those attacks use tlslite-ng, a second, pure-Python
TLS 1.3 implementation (the one tlsfuzzer is built on). A control case shows tlslite-ng
accepted with the right key: its refusals are the key's doing, not the library's.
"""

from __future__ import annotations

import os
import random
import socket
import ssl
import subprocess
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from support import (
    RADMIND,
    Daemon,
    base_config,
    client_entry,
    expired_identity,
    make_client_home,
    run_cli,
    wait_until,
)

from radmin.identity import ClientHome
from radmin.protocol import HEADER, FrameType, encode_json, parse_header
from radmin.tls import client_context

with warnings.catch_warnings():  # tlslite-ng 0.8.2 imports asyncore where it exists
    warnings.simplefilter("ignore", DeprecationWarning)
    from tlslite import HandshakeSettings, TLSConnection, X509CertChain, parsePEMKey
    from tlslite.errors import TLSError

TLS_ALERT = 21  # the content type of a TLS record that carries an alert


def frame(frame_type: FrameType, message: dict[str, Any]) -> bytes:
    payload = encode_json(message)
    return HEADER.pack(frame_type, len(payload)) + payload


# What every attacker sends as soon as its side of the handshake is done: a daemon that
# read frames before authenticating the peer would answer them.
HELLO_AND_REQUEST = frame(FrameType.HELLO, {"protocols": [1], "software": "attacker"}) + frame(
    FrameType.REQUEST, {"op": "ping"}
)


# -- the target: one daemon for the whole module --------------------------------------


@dataclass(frozen=True)
class Target:
    daemon: Daemon
    listed: ClientHome  # the client "ops", listed under clients:
    expired_listed: Path  # folder with identity.crt/.key: listed, but expired
    server_identity: Path
    baseline_fds: int  # the daemon's open descriptors before any attack


def open_fds(daemon: Daemon) -> int:
    assert daemon.proc is not None
    return len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))


@pytest.fixture(scope="module")
def target(tmp_path_factory, server_identity) -> Iterator[Target]:
    folder = tmp_path_factory.mktemp("unauthenticated")
    listed = make_client_home(folder / "ops")
    expired_listed = expired_identity(folder / "old")
    (folder / "uploads").mkdir()
    config = base_config(server_identity, folder)
    config["clients"] = {
        "ops": client_entry(listed),
        "old": {"cert": str(expired_listed / "identity.crt")},
    }
    daemon = Daemon(folder, config).start()
    try:
        yield Target(daemon, listed, expired_listed, server_identity, open_fds(daemon))
    finally:
        daemon.stop()


# -- what an attacker saw --------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    local_port: int  # names the attacker in the daemon's log (peer=127.0.0.1:PORT)
    received: bytes  # raw attacks: the TLS records; TLS attacks: the application data
    error: BaseException | None  # what the attacker's TLS stack raised, if anything


def drain(read: Callable[[], bytes]) -> tuple[bytes, BaseException | None]:
    """Everything until the daemon ends the connection, and the error that ended it."""
    received = bytearray()
    try:
        while chunk := read():
            received += chunk
    except TimeoutError:
        raise AssertionError(
            f"the daemon kept the connection open; got {bytes(received)!r}"
        ) from None
    except (OSError, TLSError) as exc:  # ssl.SSLError is an OSError
        return bytes(received), exc
    return bytes(received), None


def connect_tcp(target: Target) -> socket.socket:
    return socket.create_connection(("127.0.0.1", target.daemon.port), timeout=10)


def raw_bytes(target: Target, payload: bytes, hang_up: bool) -> Seen:
    """Send `payload` over plain TCP; with `hang_up`, close our sending side after it."""
    with connect_tcp(target) as sock:
        sock.sendall(payload)
        if hang_up:
            sock.shutdown(socket.SHUT_WR)
        return Seen(sock.getsockname()[1], *drain(lambda: sock.recv(65536)))


def openssl_client(target: Target, context: ssl.SSLContext) -> Seen:
    """A TLS client on the standard library's ssl; it sends HELLO and REQUEST as soon as
    its side of the handshake is done (in TLS 1.3 that is before the daemon's verdict)."""
    with connect_tcp(target) as sock:
        local_port = sock.getsockname()[1]
        try:
            with context.wrap_socket(sock) as tls:
                tls.sendall(HELLO_AND_REQUEST)
                return Seen(local_port, *drain(lambda: tls.recv(65536)))
        except OSError as exc:
            return Seen(local_port, b"", exc)


def tlslite_settings() -> HandshakeSettings:
    settings = HandshakeSettings()
    settings.minVersion = settings.maxVersion = (3, 4)  # TLS 1.3
    # tlslite-ng 0.8.2 compresses its own certificate (RFC 8879) whenever its ClientHello
    # offers to receive compressed ones; OpenSSL 3.0 cannot read that. Offer none.
    settings.certificate_compression_receive = []
    return settings


def tlslite_handshake(conn: TLSConnection, cert_pem: bytes, key_pem: bytes) -> None:
    """Present `cert_pem` and sign CertificateVerify with `key_pem`, matching or not; in
    TLS 1.3 our side is done before the daemon has judged the certificate."""
    chain = X509CertChain()
    chain.parsePemList(cert_pem.decode())
    key = parsePEMKey(key_pem.decode(), private=True)
    conn.handshakeClientCert(chain, key, settings=tlslite_settings())


def tlslite_client(target: Target, cert_pem: bytes, key_pem: bytes) -> Seen:
    with connect_tcp(target) as sock:
        local_port = sock.getsockname()[1]
        conn = TLSConnection(sock)
        try:
            tlslite_handshake(conn, cert_pem, key_pem)
            conn.write(HELLO_AND_REQUEST)
            return Seen(local_port, *drain(conn.read))
        except (TLSError, OSError) as exc:
            return Seen(local_port, b"", exc)


# -- the attacks -----------------------------------------------------------------------


def client_hello() -> bytes:
    """A real TLS 1.3 ClientHello, as the first bytes any TLS client sends."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="radmind")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def random_bytes(target: Target) -> Seen:
    # Seeded: the first byte decides how OpenSSL reads the rest (0x16 would be a record).
    return raw_bytes(target, random.Random(7420).randbytes(512), hang_up=False)


def http_request(target: Target) -> Seen:
    return raw_bytes(target, b"GET / HTTP/1.1\r\nHost: radmind\r\n\r\n", hang_up=False)


def hello_cut_short_then_hang_up(target: Target) -> Seen:
    hello = client_hello()
    return raw_bytes(target, hello[: len(hello) // 2], hang_up=True)


def hello_cut_short_then_silence(target: Target) -> Seen:
    """Half a ClientHello, then nothing: only the handshake timeout (2 s here) ends it."""
    hello = client_hello()
    return raw_bytes(target, hello[: len(hello) // 2], hang_up=False)


def unverifying_context(max_version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = max_version
    return context


def tls12_only(target: Target) -> Seen:
    return openssl_client(target, unverifying_context(ssl.TLSVersion.TLSv1_2))


def tls13_without_certificate(target: Target) -> Seen:
    return openssl_client(target, unverifying_context(ssl.TLSVersion.TLSv1_3))


def unlisted_certificate(target: Target) -> Seen:
    stranger = make_client_home(target.daemon.folder / f"stranger-{os.urandom(4).hex()}")
    return openssl_client(target, client_context(stranger.key, stranger.cert))


def unlisted_expired_certificate(target: Target) -> Seen:
    expired = expired_identity(target.daemon.folder / f"expired-{os.urandom(4).hex()}")
    return openssl_client(
        target, client_context(expired / "identity.key", expired / "identity.crt")
    )


def the_servers_own_certificate(target: Target) -> Seen:
    server = target.server_identity
    return openssl_client(target, client_context(server / "server.key", server / "server.crt"))


def listed_but_expired_certificate(target: Target) -> Seen:
    expired = target.expired_listed
    return openssl_client(
        target, client_context(expired / "identity.key", expired / "identity.crt")
    )


def attacker_key() -> tuple[ed25519.Ed25519PrivateKey, bytes]:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key, pem


def listed_certificate_with_another_key(target: Target) -> Seen:
    """The listed client's certificate, byte for byte, but CertificateVerify signed with
    the attacker's key: what anyone who copied `identity.crt` (it is public) could try."""
    _, key_pem = attacker_key()
    return tlslite_client(target, target.listed.cert.read_bytes(), key_pem)


def forged_certificate_of_the_listed_key(target: Target) -> Seen:
    """A certificate with the listed client's subject and public key -- so the very
    fingerprint the daemon lists -- but self-signed by the attacker's key."""
    listed = x509.load_pem_x509_certificate(target.listed.cert.read_bytes())
    key, key_pem = attacker_key()
    forged = (
        x509.CertificateBuilder()
        .subject_name(listed.subject)
        .issuer_name(listed.issuer)
        .public_key(listed.public_key())
        .serial_number(listed.serial_number)
        .not_valid_before(listed.not_valid_before_utc)
        .not_valid_after(listed.not_valid_after_utc)
        .sign(key, None)
    )
    return tlslite_client(target, forged.public_bytes(serialization.Encoding.PEM), key_pem)


# -- what must hold after every attack -------------------------------------------------


def tls_record_types(data: bytes) -> list[int]:
    """The content type of each TLS record in `data` (which must be whole records)."""
    types, pos = [], 0
    while pos < len(data):
        assert pos + 5 <= len(data), f"not TLS records: {data!r}"
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        types.append(data[pos])
        pos += 5 + length
    assert pos == len(data), f"not TLS records: {data!r}"
    return types


def attack_and_check_refusal(target: Target, attack: Callable[[Target], Seen], reason: str) -> Seen:
    """Run `attack`; the daemon logged the peer's handshake failure with `reason` and
    nothing else about it, still serves a listed client, and holds no more descriptors
    than before any attack. Returns what the attacker saw."""
    logged_before = len(target.daemon.events())
    seen = attack(target)
    peer = f"127.0.0.1:{seen.local_port}"

    def about_peer() -> list[dict[str, Any]]:
        return [e for e in target.daemon.events()[logged_before:] if e.get("peer") == peer]

    (failure,) = wait_until(about_peer, timeout=5, what=f"the daemon's verdict on {peer}")
    assert failure["event"] == "handshake_failed", failure
    assert reason in failure["reason"], failure
    assert failure["level"] == "warning"
    ping = run_cli(target.listed, "ping", target.daemon.address)
    assert ping.returncode == 0, ping.stderr
    wait_until(
        lambda: open_fds(target.daemon) == target.baseline_fds,
        timeout=5,
        what=f"the daemon's descriptors to return to {target.baseline_fds}",
    )
    # Nothing more about that peer: no hello, no request, no protocol error.
    assert [e["event"] for e in about_peer()] == ["handshake_failed"]
    return seen


# -- the tests -------------------------------------------------------------------------

NOT_TLS = [
    pytest.param(random_bytes, "not TLS", id="random-bytes"),
    pytest.param(http_request, "not TLS: an HTTP request", id="http-request"),
    pytest.param(hello_cut_short_then_hang_up, "hung up during the handshake", id="half-hello"),
    pytest.param(hello_cut_short_then_silence, "handshake timed out", id="half-hello-silence"),
]


@pytest.mark.parametrize(("attack", "reason"), NOT_TLS)
def test_bytes_that_are_no_tls_handshake_get_at_most_a_tls_alert(target, attack, reason):
    seen = attack_and_check_refusal(target, attack, reason)
    assert set(tls_record_types(seen.received)) <= {TLS_ALERT}, seen.received


NO_LISTED_IDENTITY = [
    pytest.param(tls12_only, "does not offer TLS 1.3", id="tls1.2-only"),
    pytest.param(tls13_without_certificate, "sent no certificate", id="no-certificate"),
    pytest.param(unlisted_certificate, "not listed in clients:", id="unlisted"),
    pytest.param(unlisted_expired_certificate, "not listed in clients:", id="unlisted-expired"),
    pytest.param(the_servers_own_certificate, "not listed in clients:", id="servers-own-cert"),
    pytest.param(
        listed_certificate_with_another_key,
        "does not hold the private key",
        id="listed-cert-other-key",
    ),
    pytest.param(
        forged_certificate_of_the_listed_key, "not listed in clients:", id="forged-listed-key"
    ),
]


@pytest.mark.parametrize(("attack", "reason"), NO_LISTED_IDENTITY)
def test_tls_clients_without_a_listed_identity_are_refused_before_any_frame(target, attack, reason):
    seen = attack_and_check_refusal(target, attack, reason)
    assert seen.received == b"", "the daemon answered an unauthenticated peer"
    assert seen.error is not None  # a TLS alert, never a quiet close or a HELLO


def test_a_listed_certificate_that_has_expired_is_accepted_and_check_warns(target):
    """Trust is the pinned certificate, not its dates (issue: least privilege, check):
    a listed client whose certificate expired is still that client; `check` says so."""
    expired = ClientHome(target.expired_listed)
    ping = run_cli(expired, "ping", target.daemon.address)
    assert ping.returncode == 0, ping.stderr
    assert b"old" in ping.stdout  # the daemon knows it by its listed name
    check = subprocess.run(
        [RADMIND, "check", "-c", str(target.daemon.config_path)], capture_output=True
    )
    assert check.returncode == 0 and check.stdout == b"ok\n"
    assert b"clients.old.cert: warning: certificate expired on" in check.stderr


def test_control_tlslite_with_the_listed_key_gets_a_hello(target):
    """The tlslite-ng attacks above are refused for their keys, not for tlslite-ng: with
    the listed client's own key the same code is authenticated and answered."""
    with connect_tcp(target) as sock:
        peer = f"127.0.0.1:{sock.getsockname()[1]}"
        conn = TLSConnection(sock)
        tlslite_handshake(conn, target.listed.cert.read_bytes(), target.listed.key.read_bytes())
        conn.write(HELLO_AND_REQUEST)
        frame_type, _ = parse_header(conn.read(max=HEADER.size, min=HEADER.size))
    assert frame_type is FrameType.HELLO
    closed = target.daemon.wait_for_event(
        lambda e: e.get("event") == "connection_closed" and e.get("peer") == peer
    )
    assert closed["client"] == "ops"
