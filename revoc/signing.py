"""Signing keys for OCSP responses and CRLs: the Signer protocol and a PEM-file implementation.

Only algorithms every relying party can verify are accepted (CONFORMANCE OCSP-RESP-17): RSA
PKCS#1 v1.5 with SHA-256, ECDSA P-256/SHA-256 and P-384/SHA-384, and Ed25519. SHA-1 is never used.
The AlgorithmIdentifier bytes are the byte-exact encodings of CA/B Forum BR §7.1.3.2.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from revoc.der.keys import subject_public_key_bits as subject_public_key_bits  # re-exported

# BR §7.1.3.2.1: sha256WithRSAEncryption WITH explicit NULL parameters.
ALG_RSA_SHA256 = bytes.fromhex("300d06092a864886f70d01010b0500")
# BR §7.1.3.2.2: ecdsa-with-SHA256 / -SHA384, parameters absent.
ALG_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
ALG_ECDSA_SHA384 = bytes.fromhex("300a06082a8648ce3d040303")
# RFC 8410 §3: id-Ed25519, parameters absent.
ALG_ED25519 = bytes.fromhex("300506032b6570")

MIN_RSA_BITS = 2048


class SigningError(Exception):
    """A key cannot be used for signing; the message says what to do about it."""


class Signer(Protocol):
    @property
    def algorithm_identifier(self) -> bytes:
        """DER AlgorithmIdentifier of the signatures this signer produces."""
        ...

    @property
    def public_key(self) -> PublicKeyTypes: ...

    def sign(self, data: bytes) -> bytes:
        """Signature value octets (for ECDSA the DER Ecdsa-Sig-Value)."""
        ...


class FileKeySigner:
    """A Signer backed by a private key held in memory (loaded from a PEM file)."""

    __slots__ = ("_algorithm_identifier", "_key", "_public_key", "sign")

    sign: Callable[[bytes], bytes]

    def __init__(self, private_key: PrivateKeyTypes) -> None:
        self._key = private_key
        # The signing closure is built once: sign() is on the pre-sign hot path, so it must not
        # re-create padding/hash objects per call.
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            if isinstance(private_key.curve, ec.SECP256R1):
                ecdsa = ec.ECDSA(hashes.SHA256())
                self._algorithm_identifier = ALG_ECDSA_SHA256
            elif isinstance(private_key.curve, ec.SECP384R1):
                ecdsa = ec.ECDSA(hashes.SHA384())
                self._algorithm_identifier = ALG_ECDSA_SHA384
            else:
                raise SigningError(
                    f"EC curve {private_key.curve.name} is not allowed; use P-256 or P-384"
                )
            ec_sign = private_key.sign
            self.sign = lambda data: ec_sign(data, ecdsa)
        elif isinstance(private_key, rsa.RSAPrivateKey):
            if private_key.key_size < MIN_RSA_BITS:
                raise SigningError(
                    f"RSA key of {private_key.key_size} bits is too small; use at least "
                    f"{MIN_RSA_BITS}"
                )
            pkcs1 = padding.PKCS1v15()
            sha256 = hashes.SHA256()
            rsa_sign = private_key.sign
            self.sign = lambda data: rsa_sign(data, pkcs1, sha256)
            self._algorithm_identifier = ALG_RSA_SHA256
        elif isinstance(private_key, ed25519.Ed25519PrivateKey):
            self.sign = private_key.sign
            self._algorithm_identifier = ALG_ED25519
        else:
            raise SigningError(
                f"{type(private_key).__name__} keys are not supported; use EC P-256/P-384, "
                "RSA >= 2048 or Ed25519"
            )
        self._public_key: PublicKeyTypes = private_key.public_key()

    @property
    def algorithm_identifier(self) -> bytes:
        return self._algorithm_identifier

    @property
    def public_key(self) -> PublicKeyTypes:
        return self._public_key

    @classmethod
    def from_file(cls, path: str | Path) -> FileKeySigner:
        """Load an unencrypted PEM private key (PKCS#8 or traditional) that only its owner reads."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise SigningError(f"cannot read key file {path}: {exc.strerror}") from exc
        if mode & 0o077:
            raise SigningError(
                f"key file {path} is readable by others (mode {stat.S_IMODE(mode):04o}); "
                f"chmod 600 it"
            )
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SigningError(f"cannot read key file {path}: {exc.strerror}") from exc
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError as exc:  # encrypted key, no password given
            raise SigningError(f"key file {path} is encrypted; store it unencrypted") from exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise SigningError(f"key file {path} is not a PEM private key") from exc
        return cls(key)


def _spki_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_matches(signer: Signer, cert: x509.Certificate) -> bool:
    """True when the certificate certifies the signer's key (compared as DER SPKI)."""
    return _spki_der(signer.public_key) == _spki_der(cert.public_key())
