"""Signing keys for OCSP responses and CRLs: the Signer protocol, a PEM-file implementation, and
`open_signer`, which also opens keys in an HSM (`pkcs11:` URIs, revoc/hsm.py).

Accepted (CONFORMANCE OCSP-RESP-17): RSA >= 2048 bits with SHA-256, PKCS#1 v1.5 or, on request
(`rsa_pss`), RSASSA-PSS; ECDSA P-256/SHA-256 and P-384/SHA-384; Ed25519; ML-DSA-44/65/87 (FIPS
204). SHA-1 is never used. The AlgorithmIdentifier bytes are in revoc/der/algorithms.py.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from revoc.der.algorithms import (
    ALG_ECDSA_SHA256,
    ALG_ECDSA_SHA384,
    ALG_ED25519,
    ALG_ML_DSA_44,
    ALG_ML_DSA_65,
    ALG_ML_DSA_87,
    ALG_RSA_PSS_SHA256,
    ALG_RSA_SHA256,
)
from revoc.der.keys import subject_public_key_bits as subject_public_key_bits  # re-exported

try:  # cryptography >= 47 with an OpenSSL that has ML-DSA (the wheels bundle one)
    from cryptography.hazmat.primitives.asymmetric import mldsa
except ImportError:  # pragma: no cover - older cryptography: ML-DSA keys are refused below
    mldsa = None  # type: ignore[assignment]

__all__ = [
    "ALG_ECDSA_SHA256", "ALG_ECDSA_SHA384", "ALG_ED25519", "ALG_ML_DSA_44", "ALG_ML_DSA_65",
    "ALG_ML_DSA_87", "ALG_RSA_PSS_SHA256", "ALG_RSA_SHA256", "FileKeySigner", "Signer",
    "SigningError", "is_pkcs11_uri", "open_signer", "public_key_matches", "subject_public_key_bits",
]

from revoc.key_policy import MIN_RSA_BITS, PSS_SALT_LENGTH, SigningError


def _ml_dsa_algorithm(key: object) -> bytes | None:
    """The AlgorithmIdentifier of an ML-DSA private key, None for any other key."""
    if mldsa is None:
        return None
    if isinstance(key, mldsa.MLDSA44PrivateKey):
        return ALG_ML_DSA_44
    if isinstance(key, mldsa.MLDSA65PrivateKey):
        return ALG_ML_DSA_65
    if isinstance(key, mldsa.MLDSA87PrivateKey):
        return ALG_ML_DSA_87
    return None


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

    def __init__(self, private_key: PrivateKeyTypes, *, rsa_pss: bool = False) -> None:
        """`rsa_pss`: sign with RSASSA-PSS instead of PKCS#1 v1.5 (RSA keys only; ignored for
        others)."""
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
            rsa_padding: padding.AsymmetricPadding
            if rsa_pss:
                rsa_padding = padding.PSS(padding.MGF1(hashes.SHA256()), PSS_SALT_LENGTH)
                self._algorithm_identifier = ALG_RSA_PSS_SHA256
            else:
                rsa_padding = padding.PKCS1v15()
                self._algorithm_identifier = ALG_RSA_SHA256
            sha256 = hashes.SHA256()
            rsa_sign = private_key.sign
            self.sign = lambda data: rsa_sign(data, rsa_padding, sha256)
        elif isinstance(private_key, ed25519.Ed25519PrivateKey):
            self.sign = private_key.sign
            self._algorithm_identifier = ALG_ED25519
        elif (ml_dsa := _ml_dsa_algorithm(private_key)) is not None:
            # Pure ML-DSA with an empty context, as the LAMPS X.509 profile requires.
            # The three key classes share sign(data); one of them names the type for mypy.
            self.sign = cast("mldsa.MLDSA44PrivateKey", private_key).sign
            self._algorithm_identifier = ml_dsa
        else:
            raise SigningError(
                f"{type(private_key).__name__} keys are not supported; use EC P-256/P-384, "
                "RSA >= 2048, Ed25519 or ML-DSA-44/65/87"
            )
        self._public_key: PublicKeyTypes = private_key.public_key()

    @property
    def algorithm_identifier(self) -> bytes:
        return self._algorithm_identifier

    @property
    def public_key(self) -> PublicKeyTypes:
        return self._public_key

    @classmethod
    def from_file(cls, path: str | Path, *, rsa_pss: bool = False) -> FileKeySigner:
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
        return cls(key, rsa_pss=rsa_pss)


def is_pkcs11_uri(key_ref: str) -> bool:
    """True for an RFC 7512 `pkcs11:` URI (a key in an HSM), False for a key file path."""
    return key_ref[:7].lower() == "pkcs11:"


def open_signer(key_ref: str, *, rsa_pss: bool = False) -> Signer:
    """The signer a `--key`/`--ocsp-key` value names: a PEM file, or a key in an HSM given by
    an RFC 7512 `pkcs11:` URI (module and PIN from the environment, see revoc/hsm.py).

    Every failure is a SigningError with a one-line message.
    """
    if is_pkcs11_uri(key_ref):
        from revoc import hsm  # needs the optional `hsm` extra; imported only when used

        return hsm.open_pkcs11_signer(key_ref, rsa_pss=rsa_pss)
    return FileKeySigner.from_file(key_ref, rsa_pss=rsa_pss)


def _spki_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_matches(signer: Signer, cert: x509.Certificate) -> bool:
    """True when the certificate certifies the signer's key (compared as DER SPKI)."""
    return _spki_der(signer.public_key) == _spki_der(cert.public_key())
