"""Signer: BR byte-exact AlgorithmIdentifiers, key policy, key-file loading, key bits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from asn1crypto import keys as asn1_keys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, mldsa, padding, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from revoc.signing import (
    FileKeySigner,
    SigningError,
    public_key_matches,
    subject_public_key_bits,
)
from tests.pki import KEY_TYPES, KeyType, cached_key, make_ca, verify, write_private

# CA/B Forum BR §7.1.3.2 byte-exact encodings (RFC 8410 for Ed25519).
EXPECTED_ALGORITHM_IDENTIFIER: dict[KeyType, str] = {
    "rsa2048": "300d06092a864886f70d01010b0500",
    "p256": "300a06082a8648ce3d040302",
    "p384": "300a06082a8648ce3d040303",
    "ed25519": "300506032b6570",
}


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_algorithm_identifier_is_br_byte_exact_OCSP_RESP_17(key_type: KeyType) -> None:
    signer = FileKeySigner(cached_key(key_type))
    assert signer.algorithm_identifier.hex() == EXPECTED_ALGORITHM_IDENTIFIER[key_type]
    signature = signer.sign(b"tbs bytes")
    verify(signer.public_key, signature, b"tbs bytes")


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(ec.generate_private_key(ec.SECP521R1()), id="p521"),
        pytest.param(ec.generate_private_key(ec.SECP256K1()), id="secp256k1"),
        pytest.param(rsa.generate_private_key(65537, 1024), id="rsa1024"),
        pytest.param(ed448.Ed448PrivateKey.generate(), id="ed448"),
        pytest.param(x25519.X25519PrivateKey.generate(), id="x25519"),
    ],
)
def test_unsupported_keys_are_refused_OCSP_RESP_17(key: PrivateKeyTypes) -> None:
    with pytest.raises(SigningError):
        FileKeySigner(key)


def _pem(key: PrivateKeyTypes, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


@pytest.mark.parametrize(
    "fmt", [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL]
)
@pytest.mark.parametrize("key_type", ["p256", "rsa2048"])
def test_from_file_loads_pkcs8_and_traditional(
    tmp_path: Path, key_type: KeyType, fmt: serialization.PrivateFormat
) -> None:
    key = cached_key(key_type)
    path = tmp_path / "signer.key"
    write_private(path, _pem(key, fmt))
    signer = FileKeySigner.from_file(str(path))
    assert signer.algorithm_identifier.hex() == EXPECTED_ALGORITHM_IDENTIFIER[key_type]
    verify(key.public_key(), signer.sign(b"x"), b"x")


def test_from_file_refuses_group_or_world_readable_key(tmp_path: Path) -> None:
    path = tmp_path / "loose.key"
    write_private(path, _pem(cached_key("p256"), serialization.PrivateFormat.PKCS8))
    os.chmod(path, 0o644)
    with pytest.raises(SigningError, match=r"readable by others \(mode 0644\); chmod 600"):
        FileKeySigner.from_file(path)
    os.chmod(path, 0o640)
    with pytest.raises(SigningError, match="0640"):
        FileKeySigner.from_file(path)


def test_from_file_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    with pytest.raises(SigningError, match=r"missing\.key"):
        FileKeySigner.from_file(missing)
    garbage = tmp_path / "garbage.key"
    write_private(garbage, b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(SigningError, match=r"garbage\.key"):
        FileKeySigner.from_file(garbage)
    encrypted = tmp_path / "encrypted.key"
    pem = cached_key("p256").private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    write_private(encrypted, pem)
    with pytest.raises(SigningError, match="encrypted"):
        FileKeySigner.from_file(encrypted)


def test_public_key_matches() -> None:
    ca = make_ca("Match CA", key=cached_key("p256"))
    other = make_ca("Other CA", key=cached_key("p256", 1))
    signer = FileKeySigner(cached_key("p256"))
    assert public_key_matches(signer, ca.cert)
    assert not public_key_matches(signer, other.cert)


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_subject_public_key_bits_match_asn1crypto_OCSP_REQ_3(key_type: KeyType) -> None:
    ca = make_ca("Bits CA", key=cached_key(key_type))
    spki = ca.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = asn1_keys.PublicKeyInfo.load(spki)["public_key"].contents[1:]  # drop unused-bits
    assert subject_public_key_bits(ca.cert) == expected
    assert subject_public_key_bits(spki) == expected
    assert subject_public_key_bits(ca.cert.public_key()) == expected


def test_subject_public_key_bits_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        subject_public_key_bits(b"\x30\x03\x02\x01\x00")
    with pytest.raises(ValueError):
        subject_public_key_bits(b"\x30\x80")


# --- pkcs11: URIs and the HSM environment (no token needed; tests/test_hsm.py has SoftHSM2) ---


def test_pkcs11_uri_parsing_rfc7512() -> None:
    from revoc.hsm import parse_pkcs11_uri

    uri = parse_pkcs11_uri("pkcs11:token=My%20Token;id=%01%a0;type=private?module-path=/x.so")
    assert (uri.token, uri.object, uri.id) == ("My Token", None, b"\x01\xa0")
    assert parse_pkcs11_uri("PKCS11:token=t;object=k").object == "k"


@pytest.mark.parametrize(("uri", "message"), [
    ("pkcs11:object=k", "give token=LABEL"),
    ("pkcs11:token=t", "give object=KEYLABEL or id="),
    ("pkcs11:token=t;object=k;pin-value=1234", "pin-value is not accepted"),
    ("pkcs11:token=t;object=k?pin-source=file:/p", "pin-source is not accepted"),
    ("pkcs11:token=t;object=k;type=public", "does not name a private key"),
    ("pkcs11:token=t;object=k;colour=red", "unknown attribute 'colour'"),
    ("pkcs11:token=t;object=k;object=j", "given twice"),
])
def test_pkcs11_uri_errors_are_one_line(uri: str, message: str) -> None:
    from revoc.hsm import parse_pkcs11_uri

    with pytest.raises(SigningError) as raised:
        parse_pkcs11_uri(uri)
    assert message in str(raised.value) and "1234" not in str(raised.value)


def test_pkcs11_needs_module_and_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    from revoc.signing import open_signer

    for name in ("REVOC_PKCS11_MODULE", "REVOC_PKCS11_PIN", "REVOC_PKCS11_PIN_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SigningError, match="REVOC_PKCS11_MODULE"):
        open_signer("pkcs11:token=t;object=k")
    monkeypatch.setenv("REVOC_PKCS11_MODULE", "/nonexistent/libpkcs11.so")
    with pytest.raises(SigningError, match="no PIN"):
        open_signer("pkcs11:token=t;object=k")
    monkeypatch.setenv("REVOC_PKCS11_PIN", "1234")
    with pytest.raises(SigningError, match="cannot load PKCS#11 module /nonexistent"):
        open_signer("pkcs11:token=t;object=k")


def test_pin_file_is_read_and_never_shown(tmp_path: Path) -> None:
    from revoc.settings import SettingsError, hsm_environment

    pin_file = tmp_path / "pin"
    write_private(pin_file, b"s3cret\n")
    env = hsm_environment({"REVOC_PKCS11_MODULE": "/m.so", "REVOC_PKCS11_PIN_FILE": str(pin_file)})
    assert (env.module, env.pin) == ("/m.so", "s3cret")
    assert "s3cret" not in repr(env)
    # REVOC_PKCS11_PIN wins over the file.
    assert hsm_environment({"REVOC_PKCS11_PIN": "a", "REVOC_PKCS11_PIN_FILE": "/none"}).pin == "a"
    with pytest.raises(SettingsError, match="REVOC_PKCS11_PIN_FILE=/none: cannot read it"):
        hsm_environment({"REVOC_PKCS11_PIN_FILE": "/none"})


def test_rsa_pss_and_ml_dsa_file_keys() -> None:
    """RSA-PSS on request only; ML-DSA keys sign pure ML-DSA (tests/test_algorithms.py has the
    outside verifiers)."""

    from revoc.signing import ALG_ML_DSA_44, ALG_RSA_PSS_SHA256

    key = cached_key("rsa2048")
    assert FileKeySigner(key).algorithm_identifier == bytes.fromhex(
        EXPECTED_ALGORITHM_IDENTIFIER["rsa2048"])
    pss = FileKeySigner(key, rsa_pss=True)
    assert pss.algorithm_identifier == ALG_RSA_PSS_SHA256
    key.public_key().verify(pss.sign(b"tbs"), b"tbs",
                            padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    ml = mldsa.MLDSA44PrivateKey.generate()
    signer = FileKeySigner(ml, rsa_pss=True)  # rsa_pss means nothing for other keys
    assert signer.algorithm_identifier == ALG_ML_DSA_44
    ml.public_key().verify(signer.sign(b"tbs"), b"tbs")
