"""Identities and trust: Ed25519 keys, self-signed certificates, fingerprints, known_hosts.

The fingerprint is computed here and only here, from the certificate's DER with a tiny
DER walker rather than `cryptography`: the client needs it on every connection and
`cryptography.x509` costs 110-150 ms to import, more than a whole `radmin-cli exec`
should take. Key generation does use `cryptography`, imported lazily.
"""

from __future__ import annotations

import binascii
import os
import re
import threading
from pathlib import Path

from radmin.errors import HostKeyChanged, HostKeyError, RadminError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import datetime

KEY_FILE_MODE = 0o600
# A folder radmin creates for an identity (the client home): owner only, like ~/.ssh.
IDENTITY_DIR_MODE = 0o700
_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END CERTIFICATE-----"
)


# -- fingerprints ---------------------------------------------------------------------


def _der_element(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at `pos`."""
    if pos + 2 > len(der):
        raise ValueError("truncated DER")
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or pos + count > len(der):
            raise ValueError("bad DER length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    if pos + length > len(der):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


_SEQUENCE = 0x30


def _tbs_fields(cert_der: bytes) -> list[tuple[int, int, int]]:
    """(tag, start, end) of each field of the TBSCertificate, version skipped.

    Certificate = SEQUENCE { tbsCertificate = SEQUENCE { [0] version OPTIONAL, serial,
    signature, issuer, validity, subject, subjectPublicKeyInfo, ... }, ... }
    """
    tag, cert_start, _ = _der_element(cert_der, 0)
    if tag != _SEQUENCE:
        raise ValueError("not a certificate")
    tag, pos, tbs_end = _der_element(cert_der, cert_start)
    if tag != _SEQUENCE:
        raise ValueError("not a certificate")
    fields: list[tuple[int, int, int]] = []
    while pos < tbs_end and len(fields) < 6:
        tag, _, end = _der_element(cert_der, pos)
        if not (tag == 0xA0 and not fields):  # the explicit version
            fields.append((tag, pos, end))
        pos = end
    if len(fields) < 6 or fields[5][2] > tbs_end:
        raise ValueError("certificate has no SubjectPublicKeyInfo")
    return fields


def spki_der(cert_der: bytes) -> bytes:
    """The SubjectPublicKeyInfo of an X.509 certificate, as DER."""
    tag, start, end = _tbs_fields(cert_der)[5]
    if tag != _SEQUENCE:
        raise ValueError("certificate has no SubjectPublicKeyInfo")
    return cert_der[start:end]


def validity(cert_der: bytes) -> tuple[datetime.datetime, datetime.datetime]:
    """(notBefore, notAfter) in UTC -- without importing `cryptography`, which would
    add 8 MiB to the daemon and to every fork it makes for a command."""
    import datetime
    _, start, end = _tbs_fields(cert_der)[3]
    _, pos, _ = _der_element(cert_der, start)  # the validity SEQUENCE's content
    times = []
    for _bound in range(2):
        tag, content, pos = _der_element(cert_der, pos)
        text = cert_der[content:pos].decode("ascii")
        if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: years 1950-2049 (RFC 5280)
            year = int(text[:2])
            text = str(1900 + year if year >= 50 else 2000 + year) + text[2:]
        elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
            raise ValueError("bad certificate validity")
        times.append(
            datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
        )
    if pos > end:
        raise ValueError("bad certificate validity")
    return times[0], times[1]


def fingerprint(cert_der: bytes) -> str:
    """`SHA256:` + unpadded base64 of SHA-256(SPKI): the form OpenSSH users know."""
    digest = _sha256(spki_der(cert_der))
    return "SHA256:" + binascii.b2a_base64(digest, newline=False).decode().rstrip("=")


def _sha256(data: bytes) -> bytes:
    """SHA-256 without importing hashlib on radmin-cli's start-up path: at import it
    builds a constructor for every algorithm it knows (about 3 ms of OpenSSL 3 look-ups
    per run), and a connection needs SHA-256 only. _hashlib is what hashlib.sha256 is."""
    try:
        from _hashlib import openssl_sha256 as sha256
    except ImportError:  # a Python built without OpenSSL's hashes
        from hashlib import sha256
    return sha256(data).digest()


def pem_to_der(pem: bytes) -> bytes:
    """The first certificate of a PEM text, as DER."""
    match = _PEM_CERT.search(pem)
    if match is None:
        raise ValueError("no PEM certificate (-----BEGIN CERTIFICATE-----) found")
    try:
        return _b64decode_strict(b"".join(match.group(1).split()))
    except (ValueError, binascii.Error):
        raise ValueError("PEM certificate is not valid base64") from None


def _b64decode_strict(data: bytes) -> bytes:
    """base64.b64decode(data, validate=True) without importing base64 (start-up path)."""
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except TypeError:  # Python 3.10: no strict_mode
        import base64

        return base64.b64decode(data, validate=True)


def cert_file_fingerprint(path: Path) -> str:
    return fingerprint(pem_to_der(path.read_bytes()))


def key_mode_problem(path: Path, st_mode: int) -> str | None:
    """Why a private key file's permissions are unsafe, or None if only its owner has any.

    OpenSSH's rule: anyone who can read the key can impersonate its owner, so a key with
    any permission bit for group or others is refused rather than used. Both radmind
    (identity.key) and radmin-cli (the client home's identity.key) apply it.
    """
    if not st_mode & 0o077:
        return None
    return (
        f"permissions {st_mode & 0o7777:04o} for {path} are too open: the private key must "
        f"not be accessible by group or others; run: chmod 600 {path}"
    )


# -- creating identities --------------------------------------------------------------


def _write_file(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write atomically: a private temporary file, fsync, then rename or link.

    Without `overwrite` the final step is link(), which fails if the name exists, so
    an existing key is never clobbered even by a concurrent writer.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def create_identity(key_path: Path, cert_path: Path, role: str, force: bool = False) -> str:
    """Create an Ed25519 key and a self-signed certificate; return the fingerprint.

    The subject is the role and a random 128-bit id: unique per identity, and it tells
    nobody anything. The daemon shows its certificate to every peer before it knows who
    they are, so a host or user name there would hand it to any port scanner; trust is
    by fingerprint and needs no name. Validity runs to 9999-12-31 (RFC 5280's "no
    expiry"): as with SSH keys, an expiring certificate would only lock admins out.
    A folder created here (the client home) is owner-only, whatever the umask.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not force:
        for path in (key_path, cert_path):
            if path.exists():
                raise RadminError(f"{path} already exists; use --force to replace it")
    key_path.parent.mkdir(mode=IDENTITY_DIR_MODE, parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "radmin"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{role} {os.urandom(16).hex()}"),
        ]
    )
    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH if role == "radmind" else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc))
        .not_valid_after(datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(key, None)
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    _write_file(key_path, key_pem, KEY_FILE_MODE, overwrite=force)
    _write_file(cert_path, cert_pem, 0o644, overwrite=force)
    return fingerprint(cert.public_bytes(serialization.Encoding.DER))


# -- the client's home ----------------------------------------------------------------


class ClientHome:
    """The folder holding a client's identity, known_hosts and config.yaml.

    A plain class, not a dataclass: `dataclasses` imports `inspect` (~8 ms), and this
    module is on radmin-cli's start-up path.
    """

    __slots__ = ("path",)

    def __init__(self, path: Path):
        self.path = path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClientHome) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"ClientHome({str(self.path)!r})"

    @classmethod
    def resolve(cls, override: str | None = None) -> ClientHome:
        """--home, else $RADMIN_HOME, else $XDG_CONFIG_HOME/radmin, else ~/.config/radmin."""
        if override:
            return cls(Path(override).expanduser())
        if os.environ.get("RADMIN_HOME"):
            return cls(Path(os.environ["RADMIN_HOME"]).expanduser())
        xdg = os.environ.get("XDG_CONFIG_HOME", "")
        if os.path.isabs(xdg):  # the XDG spec: relative values are ignored
            return cls(Path(xdg) / "radmin")
        return cls(Path.home() / ".config" / "radmin")

    @property
    def key(self) -> Path:
        return self.path / "identity.key"

    @property
    def cert(self) -> Path:
        return self.path / "identity.crt"

    @property
    def known_hosts(self) -> Path:
        return self.path / "known_hosts"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def digests(self) -> Path:
        return self.path / "digests"

    @property
    def last_run(self) -> Path:
        """The hosts of the previous multi-host run, for `@failed` and `@ok`."""
        return self.path / "last-run.json"


# -- known_hosts ----------------------------------------------------------------------


class KnownHosts:
    """`host:port SHA256:...` lines, OpenSSH's accept-new policy by default.

    One instance is shared by the threads of a fan-out; the lock keeps two first
    contacts with the same host from writing two lines.
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._parsed: dict[str, tuple[str, int]] | None = None  # read once per run
        self._line_count = 0

    def _entries(self) -> dict[str, tuple[str, int]]:
        """The file's entries, parsed once per instance (a fan-out shares one): 1,000
        hosts must not parse a 1,000-line file 1,000 times."""
        if self._parsed is not None:
            return self._parsed
        entries: dict[str, tuple[str, int]] = {}
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            text = ""
        lines = text.splitlines()
        for lineno, line in enumerate(lines, 1):
            words = line.split()
            if len(words) >= 2 and not words[0].startswith("#"):
                entries.setdefault(words[0], (words[1], lineno))
        self._parsed, self._line_count = entries, len(lines)
        return entries

    def check(self, host_port: str, presented: str, strict: bool) -> bool:
        """Accept a known match (False); raise on a changed key, or an unknown one in
        strict mode; True for a new host, to `record` once it has proven it is radmind."""
        with self._lock:
            known = self._entries().get(host_port)
        if known is not None:
            expected, lineno = known
            if expected == presented:
                return False
            raise HostKeyChanged(
                f"WARNING: HOST KEY CHANGED for {host_port}! The daemon presented "
                f"{presented} but {self.path}:{lineno} says {expected}. Someone may be "
                f"impersonating the host, or its key was replaced; if you know it was, "
                f"remove line {lineno} of {self.path} and connect again"
            )
        if strict:
            raise HostKeyError(
                f"host key for {host_port} is not in {self.path} and --strict-host-key "
                f"is set (the daemon presented {presented})"
            )
        return True

    def record(self, host_port: str, presented: str) -> bool:
        """Append `host_port presented` unless a line for it appeared meanwhile; True if
        written (the caller warns, as ssh's accept-new does)."""
        with self._lock:
            entries = self._entries()
            if host_port in entries:
                return False
            self.path.parent.mkdir(mode=IDENTITY_DIR_MODE, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            with os.fdopen(fd, "r+b") as f:
                size = f.seek(0, os.SEEK_END)
                # A hand-edited file may lack its final newline: never glue two entries.
                needs_newline = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
                f.write(b"\n" * needs_newline + f"{host_port} {presented}\n".encode())
            self._line_count += 1  # as far as this run knows: others may append too
            entries[host_port] = (presented, self._line_count)
            return True

    def verify(self, host_port: str, presented: str, strict: bool) -> bool:
        """check, then record a new host at once; True if recorded now."""
        return self.check(host_port, presented, strict) and self.record(host_port, presented)
