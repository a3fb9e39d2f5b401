"""Identities: `radmind init`, `radmin-cli keygen`, fingerprints, client homes, known_hosts.

The programs are run for real; fingerprints are checked against an independent
computation with `cryptography` (radmin computes them with its own DER walker).
"""

from __future__ import annotations

import base64
import datetime
import getpass
import hashlib
import os
import random
import re
import shutil
import socket
import stat
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from support import RADMIN_CLI, RADMIND, make_client_home, run_cli

from radmin.config import load_config
from radmin.errors import HostKeyError, TransportError
from radmin.identity import (
    ClientHome,
    KnownHosts,
    cert_file_fingerprint,
    fingerprint,
    pem_to_der,
    spki_der,
)

REPO = Path(__file__).resolve().parent.parent
FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}(?![A-Za-z0-9+/=])")


# -- helpers --------------------------------------------------------------------------


def crypto_fingerprint(cert_path: Path) -> str:
    """The contract's fingerprint, computed independently with `cryptography`."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "SHA256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode().rstrip("=")


def printed_fingerprints(text: str) -> list[str]:
    return FINGERPRINT.findall(text)


def radmind(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RADMIN_CONFIG"}
    return subprocess.run(
        [RADMIND, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cli_with_env(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """radmin-cli with exactly this environment (plus PATH), nothing inherited."""
    return subprocess.run(
        [RADMIN_CLI, *args],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


# -- radmind init ---------------------------------------------------------------------


def test_init_creates_key_0600_cert_and_config_and_prints_the_fingerprint(tmp_path):
    folder = tmp_path / "etc" / "radmin"  # parents are created too
    result = radmind("init", "--dir", str(folder))
    assert result.returncode == 0, result.stderr
    assert mode(folder / "server.key") == 0o600
    assert b"PRIVATE KEY-----" in (folder / "server.key").read_bytes()
    assert (folder / "server.crt").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert (folder / "radmind.yaml").is_file()
    assert printed_fingerprints(result.stdout) == [crypto_fingerprint(folder / "server.crt")]


def test_init_writes_a_config_that_passes_check_and_names_the_same_server(tmp_path):
    folder = tmp_path / "srv"
    init = radmind("init", "--dir", str(folder))
    assert init.returncode == 0, init.stderr

    check = radmind("check", "-c", str(folder / "radmind.yaml"), cwd=tmp_path)
    assert (check.returncode, check.stdout) == (0, "ok\n"), check.stderr

    shown = radmind("fingerprint", "-c", str(folder / "radmind.yaml"), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    expected = crypto_fingerprint(folder / "server.crt")
    assert printed_fingerprints(init.stdout) == [expected]
    assert shown.stdout.strip() == expected


def test_init_config_is_commented(tmp_path):
    folder = tmp_path / "srv"
    assert radmind("init", "--dir", str(folder)).returncode == 0
    text = (folder / "radmind.yaml").read_text()
    assert text.lstrip().startswith("#")
    assert "radmind check" in text  # tells the admin how to validate it


def test_init_refuses_to_overwrite_the_key_without_force(tmp_path):
    folder = tmp_path / "srv"
    first = radmind("init", "--dir", str(folder))
    assert first.returncode == 0, first.stderr
    key, cert = (folder / "server.key").read_bytes(), (folder / "server.crt").read_bytes()

    again = radmind("init", "--dir", str(folder))
    assert again.returncode != 0
    assert "--force" in again.stderr
    assert "server.key" in again.stderr
    assert "Traceback" not in again.stderr
    assert (folder / "server.key").read_bytes() == key
    assert (folder / "server.crt").read_bytes() == cert
    assert mode(folder / "server.key") == 0o600
    assert sorted(p.name for p in folder.iterdir()) == ["radmind.yaml", "server.crt", "server.key"]


def test_init_refuses_when_only_the_key_exists(tmp_path):
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "server.key").write_bytes(b"precious")
    result = radmind("init", "--dir", str(folder))
    assert result.returncode != 0
    assert (folder / "server.key").read_bytes() == b"precious"


def test_init_force_replaces_the_key_with_a_new_fingerprint(tmp_path):
    folder = tmp_path / "srv"
    first = radmind("init", "--dir", str(folder))
    assert first.returncode == 0, first.stderr
    old_key = (folder / "server.key").read_bytes()
    (old_fp,) = printed_fingerprints(first.stdout)

    forced = radmind("init", "--dir", str(folder), "--force")
    assert forced.returncode == 0, forced.stderr
    (new_fp,) = printed_fingerprints(forced.stdout)
    assert new_fp != old_fp
    assert (folder / "server.key").read_bytes() != old_key
    assert mode(folder / "server.key") == 0o600
    assert new_fp == crypto_fingerprint(folder / "server.crt")
    shown = radmind("fingerprint", "-c", str(folder / "radmind.yaml"))
    assert shown.stdout.strip() == new_fp


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_init_never_overwrites_an_existing_config(tmp_path, force):
    folder = tmp_path / "srv"
    folder.mkdir()
    mine = "# my own config, hands off\nlisten: ['127.0.0.1:7420']\n"
    (folder / "radmind.yaml").write_text(mine)
    result = radmind("init", "--dir", str(folder), *(["--force"] if force else []))
    assert result.returncode == 0, result.stderr
    assert (folder / "radmind.yaml").read_text() == mine
    assert (folder / "server.key").is_file()

    again = radmind("init", "--dir", str(folder), "--force")
    assert again.returncode == 0, again.stderr
    assert (folder / "radmind.yaml").read_text() == mine


def test_radmind_fingerprint_reads_the_cert_named_by_the_config(tmp_path, server_identity):
    config = tmp_path / "radmind.yaml"
    config.write_text(
        f"identity:\n  key: {server_identity / 'server.key'}\n"
        f"  cert: {server_identity / 'server.crt'}\n"
    )
    result = radmind("fingerprint", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == crypto_fingerprint(server_identity / "server.crt")


# -- radmin-cli keygen ----------------------------------------------------------------


def test_keygen_creates_identity_key_0600_and_cert_and_prints_the_fingerprint(tmp_path):
    home = ClientHome(tmp_path / "home")
    result = run_cli(home, "keygen")
    assert result.returncode == 0, result.stderr
    assert mode(home.key) == 0o600
    assert b"PRIVATE KEY-----" in home.key.read_bytes()
    assert home.cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    out = result.stdout.decode()
    (line,) = [ln for ln in out.splitlines() if ln.startswith("Fingerprint: ")]
    assert line == f"Fingerprint: {crypto_fingerprint(home.cert)}"
    assert "clients:" in out  # says where the printed lines go


def authorization_block(keygen_output: str) -> str:
    """The lines keygen prints for `clients:`: from `  NAME:` through the allow lines."""
    lines = keygen_output.splitlines()
    start = next(i for i, ln in enumerate(lines) if re.fullmatch(r"  [^\s#][^\s]*:", ln))
    end = max(i for i, ln in enumerate(lines) if re.match(r"\s+(exec|put):", ln) and i > start)
    return "\n".join(lines[start : end + 1]) + "\n"


def config_with_clients(folder: Path, server_identity: Path, clients_block: str) -> Path:
    """A radmind.yaml in `folder` whose clients: section is `clients_block` as pasted."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "radmind.yaml"
    config.write_text(
        'listen: ["127.0.0.1:7420"]\n'
        "identity:\n"
        f"  key: {server_identity / 'server.key'}\n"
        f"  cert: {server_identity / 'server.crt'}\n"
        "clients:\n" + clients_block + "put:\n  default_dir: /var/tmp/radmin\n"
    )
    return config


def assert_check_ok(config: Path) -> None:
    check = radmind("check", "-c", str(config))
    assert (check.returncode, check.stdout) == (0, "ok\n"), check.stderr + config.read_text()


def keygen(home: ClientHome) -> str:
    result = run_cli(home, "keygen")
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def test_keygen_block_pasted_under_clients_passes_check(tmp_path, server_identity):
    home = ClientHome(tmp_path / "home")
    block = authorization_block(keygen(home))
    config = config_with_clients(tmp_path / "etc", server_identity, block)
    assert_check_ok(config)

    # ...and the client it authorizes is this one, under the name the block gives it.
    (policy,) = load_config(config).clients.values()
    assert policy.fingerprint == crypto_fingerprint(home.cert)
    assert block.startswith(f"  {policy.name}:")


def test_keygen_block_with_the_cert_path_it_names_passes_check(tmp_path, server_identity):
    home = ClientHome(tmp_path / "home")
    output = keygen(home)
    named = re.search(r"^Or copy (\S+) to the daemon host and write\s+cert: (\S+)$", output, re.M)
    assert named, output
    assert Path(named[1]) == home.cert
    etc = tmp_path / "etc"
    (etc / named[2]).parent.mkdir(parents=True)
    shutil.copy(home.cert, etc / named[2])  # the admin copies identity.crt over

    lines = authorization_block(output).splitlines()
    by_path = [lines[0], f"    cert: {named[2]}", *lines[lines.index("    allow:") :]]
    config = config_with_clients(etc, server_identity, "\n".join(by_path) + "\n")
    assert_check_ok(config)
    (policy,) = load_config(config).clients.values()
    assert policy.fingerprint == crypto_fingerprint(home.cert)


def allow_rules(block: str) -> dict:
    (entry,) = yaml.safe_load(block).values()
    return entry["allow"]


def test_keygen_block_suggests_least_privilege_and_says_what_star_would_mean(tmp_path):
    block = authorization_block(keygen(ClientHome(tmp_path / "home")))
    allow = allow_rules(block)
    assert allow["exec"] and "*" not in allow["exec"]  # something useful, not everything
    assert allow["put"] and not any(p in ("/**", "/*") for p in allow["put"])
    comments = " ".join(
        ln.strip().lstrip("# ") for ln in block.splitlines() if ln.strip().startswith("#")
    )
    assert '"*" would allow any shell command, run as run_as' in comments


def test_keygen_block_grants_what_it_lists_and_nothing_else(tmp_path, daemon_factory):
    """Pasted as printed into a running daemon's config: the listed command runs, an
    unlisted one is refused (exit 126)."""
    home = ClientHome(tmp_path / "home")
    block = authorization_block(keygen(home))
    assert "uptime" in allow_rules(block)["exec"]
    daemon = daemon_factory(yaml.safe_load(block))
    allowed = run_cli(home, "exec", daemon.address, "uptime")
    assert allowed.returncode == 0, allowed.stderr
    refused = run_cli(home, "exec", daemon.address, "id")
    assert refused.returncode == 126, refused.stderr


def install_md_authorization(readme: str) -> str:
    """The clients: example in docs/install.md, section 2."""
    section = readme[readme.index("## 2. Authorize a client") :]
    return re.search(r"```yaml\nclients:\n(.*?)```", section, re.S).group(1)


def test_install_md_shows_the_allow_rules_keygen_prints_and_its_example_passes_check(
    tmp_path, server_identity
):
    docs = install_md_authorization((REPO / "docs" / "install.md").read_text())
    printed = authorization_block(keygen(ClientHome(tmp_path / "home")))
    assert docs[docs.index("    allow:") :] == printed[printed.index("    allow:") :]

    etc = tmp_path / "etc"
    cert_path = re.search(r"cert: (\S+)", docs).group(1)
    (etc / cert_path).parent.mkdir(parents=True)
    shutil.copy(ClientHome(tmp_path / "home").cert, etc / cert_path)
    assert_check_ok(config_with_clients(etc, server_identity, docs))


def test_keygen_refuses_to_overwrite_without_force(tmp_path):
    home = ClientHome(tmp_path / "home")
    assert run_cli(home, "keygen").returncode == 0
    key, cert = home.key.read_bytes(), home.cert.read_bytes()

    again = run_cli(home, "keygen")
    assert again.returncode != 0
    assert b"--force" in again.stderr
    assert b"Traceback" not in again.stderr
    assert home.key.read_bytes() == key
    assert home.cert.read_bytes() == cert


def test_keygen_force_replaces_the_identity(tmp_path):
    home = ClientHome(tmp_path / "home")
    first = run_cli(home, "keygen")
    old_fp = crypto_fingerprint(home.cert)
    forced = run_cli(home, "keygen", "--force")
    assert (first.returncode, forced.returncode) == (0, 0), forced.stderr
    new_fp = crypto_fingerprint(home.cert)
    assert new_fp != old_fp
    assert f"Fingerprint: {new_fp}" in forced.stdout.decode()
    assert mode(home.key) == 0o600


def test_certificates_name_neither_host_nor_user_and_each_subject_is_unique(tmp_path):
    """The daemon shows its certificate to anyone who connects: it must not tell them the
    host name (nor the user's). Trust is by fingerprint; the subject is only unique."""
    certs = []
    for n in (1, 2):
        init = radmind("init", "--dir", str(tmp_path / f"server{n}"))
        assert init.returncode == 0, init.stderr
        certs.append(tmp_path / f"server{n}" / "server.crt")
        home = ClientHome(tmp_path / f"client{n}")
        keygen(home)
        certs.append(home.cert)
    host = socket.gethostname()
    secrets = {host, host.split(".")[0], getpass.getuser()}
    subjects = []
    for path in certs:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        for name in (cert.subject, cert.issuer):
            words = {word for attribute in name for word in str(attribute.value).split()}
            assert not words & secrets, (path, name.rfc4514_string())
        assert not alternative_names(cert) & secrets
        (common_name,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        assert re.fullmatch(r"(radmind|radmin-cli) [0-9a-f]{32}", common_name.value)
        subjects.append(cert.subject)
    assert len(set(subjects)) == len(certs)


def alternative_names(cert: x509.Certificate) -> set[str]:
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return set()
    return {str(getattr(name, "value", name)) for name in extension.value}


def test_identity_is_ed25519_self_signed(tmp_path):
    home = make_client_home(tmp_path / "c")
    cert = x509.load_pem_x509_certificate(home.cert.read_bytes())
    assert isinstance(cert.public_key(), ed25519.Ed25519PublicKey)
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)  # raises if the self-signature is wrong
    key = serialization.load_pem_private_key(home.key.read_bytes(), password=None)
    assert key.public_key() == cert.public_key()


# -- fingerprints agree everywhere ----------------------------------------------------


def test_client_fingerprints_agree_keygen_cli_library_and_cryptography(tmp_path):
    home = ClientHome(tmp_path / "home")
    keygen = run_cli(home, "keygen")
    assert keygen.returncode == 0, keygen.stderr
    (from_keygen,) = set(printed_fingerprints(keygen.stdout.decode()))

    shown = run_cli(home, "fingerprint")
    assert shown.returncode == 0, shown.stderr
    from_cli = shown.stdout.decode().strip()

    from_library = fingerprint(pem_to_der(home.cert.read_bytes()))
    assert from_keygen == from_cli == from_library == crypto_fingerprint(home.cert)
    assert FINGERPRINT.fullmatch(from_cli)


def test_server_fingerprints_agree_init_fingerprint_command_and_cryptography(tmp_path):
    folder = tmp_path / "srv"
    init = radmind("init", "--dir", str(folder))
    (from_init,) = printed_fingerprints(init.stdout)
    from_command = radmind("fingerprint", "-c", str(folder / "radmind.yaml")).stdout.strip()
    assert from_init == from_command == crypto_fingerprint(folder / "server.crt")
    assert from_init == cert_file_fingerprint(folder / "server.crt")


def test_cli_fingerprint_without_identity_says_to_run_keygen(tmp_path):
    result = run_cli(ClientHome(tmp_path / "empty"), "fingerprint")
    assert result.returncode == 1
    assert b"keygen" in result.stderr
    assert b"Traceback" not in result.stderr
    assert result.stdout == b""


def test_fingerprint_of_a_cert_file_with_text_around_the_pem(tmp_path):
    home = make_client_home(tmp_path / "c")
    noisy = tmp_path / "noisy.crt"
    noisy.write_text("Certificate:\n    Data: (openssl x509 -text)\n" + home.cert.read_text())
    assert cert_file_fingerprint(noisy) == crypto_fingerprint(home.cert)


# -- spki_der against cryptography ----------------------------------------------------


def self_signed(key, organization: str = "radmin tests") -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, "test"),
        ]
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
        .not_valid_after(datetime.datetime(2040, 1, 1, tzinfo=datetime.timezone.utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, algorithm)
    )


KEYS = {
    "ed25519": lambda: ed25519.Ed25519PrivateKey.generate(),
    "ec-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ec-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "rsa-2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}


@pytest.mark.parametrize("kind", list(KEYS))
def test_spki_der_matches_cryptography(kind):
    cert = self_signed(KEYS[kind]())
    der = cert.public_bytes(serialization.Encoding.DER)
    expected = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki_der(der) == expected


def test_spki_der_with_long_form_lengths_everywhere():
    # A 1000-character name pushes the issuer/subject lengths past 255 (0x82 form).
    cert = self_signed(ed25519.Ed25519PrivateKey.generate(), "x" * 1000)
    der = cert.public_bytes(serialization.Encoding.DER)
    expected = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki_der(der) == expected


def test_spki_der_of_radmin_identities_matches_cryptography(server_identity, client_home):
    for path in (server_identity / "server.crt", client_home.cert):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        expected = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert spki_der(pem_to_der(path.read_bytes())) == expected


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x30",
        b"garbage, not DER at all",
        b"\x02\x01\x00",  # an INTEGER, not a SEQUENCE
        b"\x30\x80\x00\x00",  # indefinite length: not DER
        b"\x30\x03\x02\x01\x00",  # a SEQUENCE holding an INTEGER, not a tbsCertificate
        b"\x30\x85\x01\x02\x03\x04\x05",  # a 5-byte length
        b"\x30\x7f" + b"\x00" * 10,  # length longer than the data
    ],
    ids=repr,
)
def test_spki_der_raises_value_error_for_garbage(garbage):
    with pytest.raises(ValueError):
        spki_der(garbage)


def test_spki_der_raises_value_error_for_every_truncation_of_a_cert(client_home):
    der = pem_to_der(client_home.cert.read_bytes())
    for length in range(len(der)):
        with pytest.raises(ValueError):
            spki_der(der[:length])


def test_spki_der_never_raises_anything_but_value_error_on_random_bytes(client_home):
    rng = random.Random(7420)
    der = pem_to_der(client_home.cert.read_bytes())
    samples = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64))) for _ in range(300)]
    for _ in range(300):  # real certificates with one byte flipped
        flipped = bytearray(der)
        flipped[rng.randrange(len(der))] ^= 1 << rng.randrange(8)
        samples.append(bytes(flipped))
    for sample in samples:
        try:
            result = spki_der(sample)
        except ValueError:
            continue
        assert isinstance(result, bytes) and result


def test_pem_to_der_raises_value_error_without_a_certificate(server_identity):
    for text in (b"", b"hello", (server_identity / "server.key").read_bytes()):
        with pytest.raises(ValueError):
            pem_to_der(text)
    with pytest.raises(ValueError):
        pem_to_der(b"-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n")


# -- where the client home is ---------------------------------------------------------


@pytest.fixture
def places(tmp_path) -> dict[str, Path]:
    names = ("option", "radmin_home", "xdg", "home")
    folders = {name: tmp_path / name for name in names}
    for folder in folders.values():
        folder.mkdir()
    return folders


def identity_in(folder: Path) -> bool:
    return (folder / "identity.key").is_file() and (folder / "identity.crt").is_file()


def landed(places: dict[str, Path]) -> list[Path]:
    """Every folder under the test places that now holds an identity."""
    return sorted(p.parent for p in places["option"].parent.rglob("identity.key"))


def test_home_option_beats_radmin_home_xdg_and_home(places):
    env = {
        "RADMIN_HOME": str(places["radmin_home"]),
        "XDG_CONFIG_HOME": str(places["xdg"]),
        "HOME": str(places["home"]),
    }
    result = cli_with_env(env, "keygen", "--home", str(places["option"]))
    assert result.returncode == 0, result.stderr
    assert landed(places) == [places["option"]]
    shown = cli_with_env(env, "fingerprint", "--home", str(places["option"]))
    assert shown.stdout.strip() == crypto_fingerprint(places["option"] / "identity.crt")


def test_radmin_home_beats_xdg_and_home(places):
    env = {
        "RADMIN_HOME": str(places["radmin_home"]),
        "XDG_CONFIG_HOME": str(places["xdg"]),
        "HOME": str(places["home"]),
    }
    result = cli_with_env(env, "keygen")
    assert result.returncode == 0, result.stderr
    assert landed(places) == [places["radmin_home"]]
    shown = cli_with_env(env, "fingerprint")
    assert shown.stdout.strip() == crypto_fingerprint(places["radmin_home"] / "identity.crt")


def test_xdg_config_home_radmin_beats_home(places):
    env = {"XDG_CONFIG_HOME": str(places["xdg"]), "HOME": str(places["home"])}
    result = cli_with_env(env, "keygen")
    assert result.returncode == 0, result.stderr
    assert landed(places) == [places["xdg"] / "radmin"]
    shown = cli_with_env(env, "fingerprint")
    assert shown.stdout.strip() == crypto_fingerprint(places["xdg"] / "radmin" / "identity.crt")


def test_home_dot_config_radmin_is_the_last_resort(places):
    env = {"HOME": str(places["home"])}
    result = cli_with_env(env, "keygen")
    assert result.returncode == 0, result.stderr
    assert landed(places) == [places["home"] / ".config" / "radmin"]
    shown = cli_with_env(env, "fingerprint")
    expected = crypto_fingerprint(places["home"] / ".config" / "radmin" / "identity.crt")
    assert shown.stdout.strip() == expected


def test_empty_radmin_home_and_xdg_config_home_count_as_unset(places):
    env = {"RADMIN_HOME": "", "XDG_CONFIG_HOME": "", "HOME": str(places["home"])}
    result = cli_with_env(env, "keygen")
    assert result.returncode == 0, result.stderr
    assert landed(places) == [places["home"] / ".config" / "radmin"]


def test_fingerprint_looks_only_in_the_resolved_home(places):
    env = {"XDG_CONFIG_HOME": str(places["xdg"]), "HOME": str(places["home"])}
    assert cli_with_env(env, "keygen").returncode == 0
    # The identity is in XDG_CONFIG_HOME/radmin; RADMIN_HOME points elsewhere: not found.
    result = cli_with_env({**env, "RADMIN_HOME": str(places["radmin_home"])}, "fingerprint")
    assert result.returncode == 1
    assert str(places["radmin_home"]) in result.stderr


def test_a_relative_xdg_config_home_is_ignored(places):
    env = {"XDG_CONFIG_HOME": "relative-config", "HOME": str(places["home"])}
    result = subprocess.run(
        [RADMIN_CLI, "keygen"],
        capture_output=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        cwd=places["option"],
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert landed(places) == [places["home"] / ".config" / "radmin"]


# -- known_hosts ----------------------------------------------------------------------

FP_A = "SHA256:" + "A" * 43
FP_B = "SHA256:" + "B" * 43
FP_C = "SHA256:" + "C" * 43


def test_known_hosts_records_a_new_host_and_returns_true(tmp_path):
    path = tmp_path / "home" / "known_hosts"  # neither the file nor its folder exists yet
    assert KnownHosts(path).verify("web1:7420", FP_A, strict=False) is True
    assert path.read_text() == f"web1:7420 {FP_A}\n"


def test_known_hosts_appends_new_hosts_after_existing_lines(tmp_path):
    path = tmp_path / "known_hosts"
    path.write_text(f"# my hosts\ndb1:7420 {FP_B}\n")
    assert KnownHosts(path).verify("[::1]:7421", FP_A, strict=False) is True
    assert path.read_text() == f"# my hosts\ndb1:7420 {FP_B}\n[::1]:7421 {FP_A}\n"


def test_known_hosts_accepts_a_known_match_and_writes_nothing(tmp_path):
    path = tmp_path / "known_hosts"
    known = KnownHosts(path)
    known.verify("web1:7420", FP_A, strict=False)
    before = path.read_bytes()
    assert known.verify("web1:7420", FP_A, strict=False) is False
    assert KnownHosts(path).verify("web1:7420", FP_A, strict=True) is False
    assert path.read_bytes() == before


def test_known_hosts_changed_key_raises_naming_the_file_and_line(tmp_path):
    path = tmp_path / "known_hosts"
    text = f"# hosts I trust\n\ndb1:7420 {FP_B}\nweb1:7420 {FP_A}\nweb2:7420 {FP_C}\n"
    path.write_text(text)
    with pytest.raises(HostKeyError) as caught:
        KnownHosts(path).verify("web1:7420", FP_C, strict=False)
    message = str(caught.value)
    assert f"{path}:4" in message
    assert FP_A in message and FP_C in message
    assert "web1:7420" in message
    assert isinstance(caught.value, TransportError)  # so the CLI exits 255
    assert path.read_text() == text  # the known key is not replaced


def test_known_hosts_changed_key_is_refused_even_when_not_strict_and_every_time(tmp_path):
    path = tmp_path / "known_hosts"
    known = KnownHosts(path)
    known.verify("web1:7420", FP_A, strict=False)
    for _ in range(2):
        with pytest.raises(HostKeyError):
            known.verify("web1:7420", FP_B, strict=False)


def test_known_hosts_strict_refuses_an_unknown_host_and_writes_nothing(tmp_path):
    path = tmp_path / "known_hosts"
    path.write_text(f"db1:7420 {FP_B}\n")
    with pytest.raises(HostKeyError) as caught:
        KnownHosts(path).verify("web1:7420", FP_A, strict=True)
    assert "web1:7420" in str(caught.value)
    assert path.read_text() == f"db1:7420 {FP_B}\n"


def test_known_hosts_strict_without_a_file_refuses_and_creates_nothing(tmp_path):
    path = tmp_path / "known_hosts"
    with pytest.raises(HostKeyError):
        KnownHosts(path).verify("web1:7420", FP_A, strict=True)
    assert not path.exists()


def test_known_hosts_are_keyed_by_host_and_port(tmp_path):
    path = tmp_path / "known_hosts"
    known = KnownHosts(path)
    known.verify("web1:7420", FP_A, strict=False)
    assert known.verify("web1:7421", FP_B, strict=False) is True  # another daemon, not a change
    assert known.verify("web1:7420", FP_A, strict=False) is False


def test_known_hosts_ignores_comment_lines(tmp_path):
    path = tmp_path / "known_hosts"
    path.write_text(f"#web1:7420 {FP_B}\n")
    assert KnownHosts(path).verify("web1:7420", FP_A, strict=False) is True


def test_known_hosts_first_contact_from_many_threads_records_one_line(tmp_path):
    path = tmp_path / "known_hosts"
    known = KnownHosts(path)
    results: list[bool] = []
    barrier = threading.Barrier(16)

    def contact() -> None:
        barrier.wait()
        results.append(known.verify("web1:7420", FP_A, strict=False))

    threads = [threading.Thread(target=contact) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 15 + [True]
    assert path.read_text() == f"web1:7420 {FP_A}\n"


def test_known_hosts_records_correctly_after_a_last_line_without_newline(tmp_path):
    path = tmp_path / "known_hosts"
    path.write_text(f"db1:7420 {FP_B}")  # edited by hand, no final newline
    known = KnownHosts(path)
    assert known.verify("web1:7420", FP_A, strict=False) is True
    assert known.verify("db1:7420", FP_B, strict=False) is False
    assert known.verify("web1:7420", FP_A, strict=False) is False
