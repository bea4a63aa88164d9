"""Signer: BR byte-exact AlgorithmIdentifiers, key policy, key-file loading, key bits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from asn1crypto import keys as asn1_keys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa, x25519
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
