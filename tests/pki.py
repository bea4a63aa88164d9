"""Test PKIs built with cryptography's CertificateBuilder: CAs, leaves and delegated responders.

Shared by every test module: each helper returns a small `Party` holding the certificate and key,
which can write itself as PEM files (keys mode 0600, as FileKeySigner.from_file insists).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

KeyType = Literal["p256", "p384", "rsa2048", "rsa3072", "rsa4096", "ed25519", "mldsa44",
                  "mldsa65", "mldsa87"]
KEY_TYPES: tuple[KeyType, ...] = ("p256", "p384", "rsa2048", "ed25519")
# Every algorithm revoc signs with (issue 14): tests/test_algorithms.py runs each through an
# outside verifier.
ALL_KEY_TYPES: tuple[KeyType, ...] = ("p256", "p384", "rsa2048", "rsa3072", "rsa4096", "ed25519",
                                      "mldsa44", "mldsa65", "mldsa87")

# Fixed validity so tests that pin a clock inside it are reproducible.
NOT_BEFORE = datetime(2025, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2035, 1, 1, tzinfo=UTC)


def new_key(key_type: KeyType) -> CertificateIssuerPrivateKeyTypes:
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "mldsa44":
        return mldsa.MLDSA44PrivateKey.generate()
    if key_type == "mldsa65":
        return mldsa.MLDSA65PrivateKey.generate()
    if key_type == "mldsa87":
        return mldsa.MLDSA87PrivateKey.generate()
    raise ValueError(f"unknown key type {key_type!r}")


@cache
def cached_key(key_type: KeyType, slot: int = 0) -> CertificateIssuerPrivateKeyTypes:
    """A key reused across tests: RSA generation is slow and tests rarely need fresh keys."""
    return new_key(key_type)


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey | mldsa.MLDSA44PrivateKey
                  | mldsa.MLDSA65PrivateKey | mldsa.MLDSA87PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return hashes.SHA384()
    return hashes.SHA256()


@dataclass(frozen=True)
class Party:
    """A certificate with its private key; `name` is used for file names."""

    name: str
    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        """Write `<name>.pem` and `<name>.key` (mode 0600) into directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = directory / f"{self.name}.pem"
        key_path = directory / f"{self.name}.key"
        cert_path.write_bytes(self.cert_pem)
        write_private(key_path, self.key_pem)
        return cert_path, key_path


def write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)  # in case the file existed with a looser mode


def write_pem_certs(path: str | Path, *parties: Party) -> Path:
    """Write several certificates into one PEM bundle (e.g. a -CAfile)."""
    path = Path(path)
    path.write_bytes(b"".join(p.cert_pem for p in parties))
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "revoc tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ski(key: CertificateIssuerPrivateKeyTypes) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def make_ca(
    name: str = "Test CA",
    key_type: KeyType = "p256",
    *,
    key: CertificateIssuerPrivateKeyTypes | None = None,
    issuer: Party | None = None,
    digital_signature: bool = True,
    crl_sign: bool = True,
    serial: int = 1,
    not_before: datetime = NOT_BEFORE,
    not_after: datetime = NOT_AFTER,
) -> Party:
    """A CA certificate, self-signed unless `issuer` is given (then an intermediate)."""
    key = key or new_key(key_type)
    subject = _name(name)
    signing = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=crl_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_ski(key), critical=False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    cert = builder.sign(signing, _hash_for(signing))
    return Party(name=_file_name(name), cert=cert, key=key)


def make_leaf(
    ca: Party,
    serial: int,
    *,
    name: str | None = None,
    key_type: KeyType = "p256",
    key: CertificateIssuerPrivateKeyTypes | None = None,
    ocsp_url: str | None = None,
    crl_url: str | None = None,
    not_before: datetime = NOT_BEFORE,
    not_after: datetime = NOT_AFTER,
) -> Party:
    """An end-entity TLS server certificate issued by `ca` with the given serial."""
    key = key or cached_key(key_type)
    common_name = name or f"leaf-{serial:x}.example"
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
    )
    if ocsp_url:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier(ocsp_url),
                    )
                ]
            ),
            critical=False,
        )
    if crl_url:
        builder = builder.add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        [x509.UniformResourceIdentifier(crl_url)], None, None, None
                    )
                ]
            ),
            critical=False,
        )
    cert = builder.sign(ca.key, _hash_for(ca.key))
    return Party(name=_file_name(common_name), cert=cert, key=key)


def make_ocsp_responder(
    ca: Party,
    *,
    name: str | None = None,
    key_type: KeyType = "p256",
    key: CertificateIssuerPrivateKeyTypes | None = None,
    serial: int = 0x0C5B,
    not_before: datetime = NOT_BEFORE,
    not_after: datetime = NOT_AFTER,
) -> Party:
    """A delegated OCSP responder issued directly by `ca`: EKU OCSPSigning only, noCheck,
    digitalSignature only (CONFORMANCE OCSP-SIGNER-2..4)."""
    key = key or new_key(key_type)
    common_name = name or "OCSP responder"
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .add_extension(_ski(key), critical=False)
        .sign(ca.key, _hash_for(ca.key))
    )
    return Party(name=_file_name(common_name), cert=cert, key=key)


def _file_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in label).strip("_") or "party"


def verify(public_key: PublicKeyTypes, signature: bytes, data: bytes) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        digest = hashes.SHA384() if public_key.curve.name == "secp384r1" else hashes.SHA256()
        public_key.verify(signature, data, ec.ECDSA(digest))
    elif isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        public_key.verify(signature, data)
    else:
        raise AssertionError(f"unexpected key {public_key!r}")
