"""The two SSLContexts: TLS 1.3 only, mutual authentication, Ed25519 identities.

Trust is by fingerprint, not by certificate authority:
  * the daemon loads every listed client certificate as its own trust anchor, so OpenSSL
    refuses unlisted certificates during the handshake; the session then maps the exact
    fingerprint to a client name (a certificate merely *signed by* a listed one -- they
    are CA:FALSE anyway -- has a different fingerprint and is refused there);
  * the client skips CA verification and checks the daemon's fingerprint against
    known_hosts (or a pin) right after the handshake, before it sends a single byte.
    TLS still proves the daemon holds the key behind that fingerprint (CertificateVerify).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

_NO_CHECK_TIME = 0x200000  # X509_V_FLAG_NO_CHECK_TIME; Python's ssl has no name for it


def _tls13_only(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def server_context(key: Path, cert: Path, client_certs_pem: list[str]) -> ssl.SSLContext:
    """Context for radmind: present our certificate, require a listed client certificate."""
    ctx = _tls13_only(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Trust is the pinned certificate itself, not a validity period: a listed client
    # whose certificate has passed its date is still that client (OpenSSH's pinned keys
    # do not expire either). `radmind check` warns about such certificates.
    ctx.verify_flags |= _NO_CHECK_TIME
    if client_certs_pem:
        ctx.load_verify_locations(cadata="\n".join(client_certs_pem))
    # No session tickets: clients do not resume, and the tickets would be one more
    # write after the handshake (with Nagle, a 40 ms stall).
    ctx.num_tickets = 0
    return ctx


def client_context(key: Path, cert: Path) -> ssl.SSLContext:
    """Context for radmin-cli: present our identity; the daemon is checked by fingerprint."""
    ctx = _tls13_only(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(cert, key)
    return ctx


def handshake(tls: ssl.SSLSocket, wait: Callable[[bool], None]) -> None:
    """Drive a non-blocking TLS handshake to its end; `wait(for_write)` blocks until the
    socket is ready and raises at the caller's deadline (a socket timeout would bound
    each read only, not the handshake)."""
    tls.setblocking(False)
    while True:
        try:
            tls.do_handshake()
            return
        except ssl.SSLWantReadError:
            wait(False)
        except ssl.SSLWantWriteError:
            wait(True)
