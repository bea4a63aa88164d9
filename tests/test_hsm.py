"""Keys in an HSM (issue 14 point 1, INTERFACE "Keys in an HSM"): SoftHSM2 as the token.

The module makes its own token in a temporary SOFTHSM2_CONF directory and imports CA keys into
it. The good path runs the real commands in subprocesses (`revoc issuer add --key pkcs11:...`,
`presign --once` whose worker processes open their own sessions, `publish --once`) and lets
OpenSSL verify what they signed; live signing and every algorithm are checked in-process. Every
failure (wrong PIN, missing key, absent token, key of the wrong type) is one line, exit 2, and
nothing is registered or signed.

Skipped only when SoftHSM2 is not installed and cannot be installed here (.ci/run installs it).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from responder.sources import CertRecord, IssuerSigner
from revoc.der.algorithms import ALG_RSA_PSS_SHA256, ALG_RSA_SHA256
from revoc.der.ocsp import cert_id_der
from revoc.model import CertStatus, HashAlgorithm, Issuer, Profile
from revoc.signing import SigningError, open_signer, subject_public_key_bits
from tests.cli_session import fetch
from tests.databases import create_migrated, drop
from tests.pki import Party, make_ca, make_leaf, write_pem_certs, write_private
from tests.sign_oracles import openssl_ocsp, openssl_verify_with_crl, sign_crl, sign_ocsp

TOKEN = "revoc-hsm-test"
PIN = "246810"
MODULE_CANDIDATES = ("/usr/lib/softhsm/libsofthsm2.so",
                     "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                     "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so")
REVOC = str(Path(sys.executable).with_name("revoc"))


def _module_path() -> str | None:
    return next((p for p in MODULE_CANDIDATES if Path(p).exists()), None)


def _ensure_softhsm() -> str:
    """The module path; installs Debian's softhsm2 when missing and possible, else skips."""
    missing = _module_path() is None or shutil.which("softhsm2-util") is None
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "softhsm2"], capture_output=True,
                       timeout=600, check=False)
    module = _module_path()
    if module is None or shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 is not installed and cannot be installed here")
    return module


@dataclass(frozen=True)
class Hsm:
    env: dict[str, str]  # SOFTHSM2_CONF, REVOC_PKCS11_MODULE, REVOC_PKCS11_PIN
    directory: Path
    cas: dict[str, Party]  # label in the token -> CA whose key it holds

    def uri(self, label: str, token: str = TOKEN) -> str:
        return f"pkcs11:token={token};object={label}"


def _import(directory: Path, env: dict[str, str], label: str, key_id: str, key: object) -> None:
    path = directory / f"{label}.p8"
    write_private(path, key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    done = subprocess.run(
        ["softhsm2-util", "--import", str(path), "--token", TOKEN, "--label", label,
         "--id", key_id, "--pin", PIN], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    path.unlink()


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hsm]:
    module = _ensure_softhsm()
    directory = tmp_path_factory.mktemp("softhsm")
    (directory / "tokens").mkdir()
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\n"
                    "objectstore.backend = file\nlog.level = ERROR\n")
    env = {"SOFTHSM2_CONF": str(conf), "REVOC_PKCS11_MODULE": module, "REVOC_PKCS11_PIN": PIN}
    full_env = {**os.environ, **env}
    done = subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", TOKEN, "--pin", PIN,
         "--so-pin", "13579"], env=full_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    cas = {
        "ca-p256": make_ca("HSM CA P-256", "p256"),
        "ca-p384": make_ca("HSM CA P-384", "p384"),
        "ca-rsa": make_ca("HSM CA RSA", key=rsa.generate_private_key(65537, 3072)),
    }
    for index, (label, ca) in enumerate(cas.items(), start=1):
        _import(directory, full_env, label, f"{index:02x}", ca.key)
    # Keys revoc must refuse: an EC key on P-521, and a secret (AES) key.
    _import(directory, full_env, "p521", "10", ec.generate_private_key(ec.SECP521R1()))
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        import pkcs11

        session = pkcs11.lib(module).get_token(token_label=TOKEN).open(user_pin=PIN, rw=True)
        session.generate_key(pkcs11.KeyType.AES, 256, label="aes", id=b"\x11", store=True)
        session.close()
        yield Hsm(env=env, directory=directory, cas=cas)


# ------------------------------------------------------------------ in-process: every key type


@pytest.mark.parametrize(("label", "pss"), [("ca-p256", False), ("ca-p384", False),
                                             ("ca-rsa", False), ("ca-rsa", True)])
def test_hsm_signs_ocsp_and_crl_verified_by_openssl(hsm: Hsm, tmp_path: Path, label: str,
                                                    pss: bool) -> None:
    ca = hsm.cas[label]
    signer = open_signer(hsm.uri(label), rsa_pss=pss)
    assert signer.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == ca.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    leaf = make_leaf(ca, 0x51)
    out = openssl_ocsp(tmp_path, ca, leaf, sign_ocsp(ca, signer, leaf))
    assert "Response verify OK" in out and "ocsp-leaf.pem: good" in out, out
    out = openssl_verify_with_crl(tmp_path, ca, leaf, sign_crl(ca, signer, [0x52]))
    assert out.strip().endswith(": OK"), out


def test_hsm_key_by_id(hsm: Hsm, tmp_path: Path) -> None:
    ca = hsm.cas["ca-p384"]
    signer = open_signer(f"pkcs11:token={TOKEN};id=%02")
    leaf = make_leaf(ca, 0x53)
    out = openssl_ocsp(tmp_path, ca, leaf, sign_ocsp(ca, signer, leaf))
    assert "Response verify OK" in out, out


def test_live_signing_through_hsm(hsm: Hsm, tmp_path: Path) -> None:
    """responder/sources.py signs on demand (nonce requests) with the HSM key."""
    ca = hsm.cas["ca-p256"]
    subject = ca.cert.subject.public_bytes()
    bits = subject_public_key_bits(ca.cert)
    issuer = Issuer(
        id=1, name="hsm-live", cert_der=ca.cert_der, subject_der=subject,
        key_id=b"\x00" * 20,
        name_hashes={a: a.digest(subject) for a in HashAlgorithm},
        key_hashes={a: a.digest(bits) for a in HashAlgorithm},
        key_path=hsm.uri("ca-p256"), ocsp_cert_der=None, ocsp_key_path=None, crl_shards=0,
        profile=Profile.PRIVATE)
    signer = IssuerSigner.for_issuer(issuer, 3600, 60)
    assert signer is not None
    leaf = make_leaf(ca, 0x54)
    cert_id = cert_id_der(HashAlgorithm.SHA256, subject, bits, 0x54)
    record = CertRecord(status=CertStatus.GOOD, revoked_at=None, reason=None)
    der, _this, _next = signer.sign([(cert_id, record)], datetime.now(UTC), b"n" * 16)
    out = openssl_ocsp(tmp_path, ca, leaf, der)
    assert "Response verify OK" in out and "ocsp-leaf.pem: good" in out, out


@pytest.mark.parametrize(("uri", "message"), [
    (f"pkcs11:token={TOKEN};object=missing", "no private key with"),
    ("pkcs11:token=absent-token;object=ca-p256", "no token labelled 'absent-token'"),
    (f"pkcs11:token={TOKEN};object=p521", "is on secp521r1; use P-256 or P-384"),
    (f"pkcs11:token={TOKEN};object=aes", "is a secret key, not an RSA or EC private key"),
    (f"pkcs11:token={TOKEN};object=ca-rsa;pin-value={PIN}", "pin-value is not accepted"),
])
def test_hsm_errors_are_one_line(hsm: Hsm, uri: str, message: str) -> None:
    with pytest.raises(SigningError) as raised:
        open_signer(uri)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert PIN not in str(raised.value)


# ------------------------------------------------------------------ the commands, end to end


@pytest.fixture(scope="module")
def own_db(server_url: str) -> Iterator[str]:
    """A database of this module's own: `presign --once` signs every issuer it finds."""
    dsn = asyncio.run(create_migrated(server_url, "revoc_test_hsm"))
    try:
        yield dsn
    finally:
        asyncio.run(drop(server_url, dsn))


def _revoc(hsm: Hsm, dsn: str, home: Path, *args: str,
           **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **hsm.env, "REVOC_DATABASE_URL": dsn, "REVOC_HOME": str(home),
            "REVOC_PRESIGN_PROCESSES": "2", **env}
    return subprocess.run([REVOC, *args], env=full, capture_output=True, text=True, timeout=180)




def test_issuer_presign_publish_through_hsm(hsm: Hsm, own_db: str, tmp_path: Path) -> None:
    ca = hsm.cas["ca-rsa"]
    ca_pem = write_pem_certs(tmp_path / "ca.pem", ca)
    leaf = make_leaf(ca, 0x61)
    leaf_pem = write_pem_certs(tmp_path / "leaf.pem", leaf)
    home = tmp_path / "home"
    done = _revoc(hsm, own_db, home, "issuer", "add", "--name", "hsm-rsa", "--cert", str(ca_pem),
                  "--key", hsm.uri("ca-rsa"))
    assert done.returncode == 0, done.stderr
    assert fetch(own_db, "SELECT key_path FROM issuers WHERE name = 'hsm-rsa'")[0][0] == \
        hsm.uri("ca-rsa")  # the URI is stored, never the PIN
    assert _revoc(hsm, own_db, home, "cert", "add", "--issuer", "hsm-rsa",
                  str(leaf_pem)).returncode == 0
    # RSA-PSS on request (the rsa_pss setting), through the worker processes' own sessions.
    done = _revoc(hsm, own_db, home, "presign", "--once", REVOC_RSA_PSS="true")
    assert done.returncode == 0, done.stderr
    assert PIN not in done.stderr + done.stdout
    rows = fetch(own_db, "SELECT r.der, r.hash_alg FROM ocsp_responses_served r JOIN issuers i"
                  " ON i.id = r.issuer_id WHERE i.name = 'hsm-rsa'")
    assert {row["hash_alg"] for row in rows} == {HashAlgorithm.SHA1.value,
                                                  HashAlgorithm.SHA256.value}
    for row in rows:
        assert ALG_RSA_PSS_SHA256 in row["der"]
        out = openssl_ocsp(tmp_path, ca, leaf, row["der"], HashAlgorithm(row["hash_alg"]))
        assert "Response verify OK" in out and "ocsp-leaf.pem: good" in out, out
    out_dir = tmp_path / "crl"
    done = _revoc(hsm, own_db, home, "publish", "--once", REVOC_CRL_OUT=str(out_dir))
    assert done.returncode == 0, done.stderr
    crls = [p for p in out_dir.rglob("*.crl") if "hsm-rsa" in str(p)]
    assert crls, list(out_dir.rglob("*"))
    assert ALG_RSA_SHA256 in crls[0].read_bytes()  # PKCS#1 v1.5 unless asked
    out = openssl_verify_with_crl(tmp_path, ca, leaf, crls[0].read_bytes())
    assert out.strip().endswith(": OK"), out


# The other failures take the same path (SigningError -> exit 2); test_hsm_errors_are_one_line
# covers their messages in-process. A wrong PIN needs a fresh process (a login is per process).
@pytest.mark.parametrize(("label", "env", "message"), [
    ("ca-p256", {"REVOC_PKCS11_PIN": "999999"}, "wrong PIN"),
    ("ca-p256", {"_TOKEN": "absent-token"}, "no token labelled 'absent-token'"),
    ("aes", {}, "is a secret key"),
])
def test_issuer_add_refuses_bad_hsm_keys(hsm: Hsm, own_db: str, tmp_path: Path, label: str,
                                         env: dict[str, str], message: str) -> None:
    ca_pem = write_pem_certs(tmp_path / "ca.pem", hsm.cas["ca-p256"])
    name = f"bad-{secrets.token_hex(3)}"
    token = env.pop("_TOKEN", TOKEN) if "_TOKEN" in env else TOKEN
    done = _revoc(hsm, own_db, tmp_path / "home", "issuer", "add", "--name", name, "--cert",
                  str(ca_pem), "--key", hsm.uri(label, token), **env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "999999" not in done.stderr and PIN not in done.stderr
    assert not fetch(own_db, "SELECT 1 FROM issuers WHERE name = $1", name)


def test_wrong_pin_signs_nothing(hsm: Hsm, own_db: str, tmp_path: Path) -> None:
    """A registered HSM issuer whose PIN is wrong at signing time: presign and publish fail
    with one line, exit non-zero, and no response or CRL appears."""
    ca = hsm.cas["ca-p384"]
    ca_pem = write_pem_certs(tmp_path / "ca.pem", ca)
    home = tmp_path / "home"
    assert _revoc(hsm, own_db, home, "issuer", "add", "--name", "hsm-pin", "--cert", str(ca_pem),
                  "--key", hsm.uri("ca-p384")).returncode == 0
    leaf_pem = write_pem_certs(tmp_path / "leaf.pem", make_leaf(ca, 0x71))
    assert _revoc(hsm, own_db, home, "cert", "add", "--issuer", "hsm-pin",
                  str(leaf_pem)).returncode == 0
    wrong = {"REVOC_PKCS11_PIN": "999999"}
    done = _revoc(hsm, own_db, home, "presign", "--once", **wrong)
    assert done.returncode != 0
    assert "wrong PIN" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "999999" not in done.stderr
    out_dir = tmp_path / "crl"
    done = _revoc(hsm, own_db, home, "publish", "--once", REVOC_CRL_OUT=str(out_dir), **wrong)
    assert done.returncode != 0
    assert "wrong PIN" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not fetch(own_db, "SELECT 1 FROM ocsp_responses r JOIN issuers i ON i.id ="
                      " r.issuer_id WHERE i.name = 'hsm-pin'")
    assert not fetch(own_db, "SELECT 1 FROM crls c JOIN issuers i ON i.id = c.issuer_id"
                      " WHERE i.name = 'hsm-pin'")
    assert not [p for p in out_dir.rglob("*.crl") if "hsm-pin" in str(p)]


def test_signer_logs_in_again_when_its_session_dies(hsm: Hsm, tmp_path: Path) -> None:
    """A closed session (as after a token reset) is reopened once, for the same key only."""
    from revoc import hsm as hsm_module

    ca = hsm.cas["ca-p256"]
    signer = open_signer(hsm.uri("ca-p256"))
    for session in list(hsm_module._SESSIONS.values()):
        session.close()
    leaf = make_leaf(ca, 0x55)
    out = openssl_ocsp(tmp_path, ca, leaf, sign_ocsp(ca, signer, leaf))
    assert "Response verify OK" in out, out
