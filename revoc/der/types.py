"""The wire-level vocabulary of the codecs: certificate statuses, CRL reasons, CertID hash
algorithms, OCSP response statuses, and what a signer must offer to sign a response.

Defined here, inside revoc/der/, so the codecs import nothing from the rest of revoc (pure DER
in, DER out); revoc/model.py re-exports the enums for everything else.
"""

from __future__ import annotations

import enum
import hashlib
from typing import Protocol


class CertStatus(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


class Reason(enum.IntEnum):
    """CRLReason (RFC 5280 §5.3.1). Value 7 is unused by the standard."""

    unspecified = 0
    keyCompromise = 1
    cACompromise = 2
    affiliationChanged = 3
    superseded = 4
    cessationOfOperation = 5
    certificateHold = 6
    removeFromCRL = 8
    privilegeWithdrawn = 9
    aACompromise = 10

    @classmethod
    def from_name(cls, name: str) -> Reason:
        """Look a reason up by its RFC 5280 name, case-insensitively."""
        for member in cls:
            if member.name.lower() == name.lower():
                return member
        raise ValueError(f"unknown revocation reason {name!r}; expected one of: {reason_names()}")


def reason_names() -> str:
    return ", ".join(r.name for r in Reason if r is not Reason.removeFromCRL)


class HashAlgorithm(enum.Enum):
    """CertID hash algorithms (CONFORMANCE OCSP-REQ-2). Value is the database code."""

    SHA1 = 1
    SHA256 = 2
    SHA384 = 3
    SHA512 = 4

    @property
    def oid(self) -> str:
        return _HASH_OIDS[self]

    @property
    def hashlib_name(self) -> str:
        return self.name.lower()

    def digest(self, data: bytes) -> bytes:
        return hashlib.new(self.hashlib_name, data).digest()

    @classmethod
    def from_name(cls, name: str) -> HashAlgorithm:
        key = name.strip().upper().replace("-", "")
        try:
            return cls[key]
        except KeyError:
            raise ValueError(
                f"unknown hash algorithm {name!r}; expected sha1, sha256, sha384 or sha512"
            ) from None


_HASH_OIDS: dict[HashAlgorithm, str] = {
    HashAlgorithm.SHA1: "1.3.14.3.2.26",
    HashAlgorithm.SHA256: "2.16.840.1.101.3.4.2.1",
    HashAlgorithm.SHA384: "2.16.840.1.101.3.4.2.2",
    HashAlgorithm.SHA512: "2.16.840.1.101.3.4.2.3",
}


class OcspResponseStatus(enum.IntEnum):
    """OCSPResponseStatus (RFC 6960 §4.2.1). Value 4 is unused."""

    successful = 0
    malformedRequest = 1
    internalError = 2
    tryLater = 3
    sigRequired = 5
    unauthorized = 6


class Signer(Protocol):
    """What the codecs need of a signing key (revoc/signing.py's Signer offers more)."""

    @property
    def algorithm_identifier(self) -> bytes:
        """DER AlgorithmIdentifier of the signatures this signer produces."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Signature value octets (for ECDSA the DER Ecdsa-Sig-Value)."""
        ...
