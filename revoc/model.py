"""Plain types shared by every part of revoc: statuses, reasons, hash algorithms."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import datetime


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


# Reasons the CA/Browser Forum Baseline Requirements allow (CONFORMANCE BR-10); None of them is
# certificateHold (BR-11). "unspecified" is allowed as the absence of a reasonCode.
BR_ALLOWED_REASONS: frozenset[Reason] = frozenset(
    {
        Reason.unspecified,
        Reason.keyCompromise,
        Reason.affiliationChanged,
        Reason.superseded,
        Reason.cessationOfOperation,
        Reason.privilegeWithdrawn,
    }
)


class Profile(enum.Enum):
    """Per-issuer revocation policy: `br` follows the TLS Baseline Requirements."""

    BR = "br"
    PRIVATE = "private"


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
    def from_oid(cls, oid: str) -> HashAlgorithm | None:
        return _OID_HASHES.get(oid)

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
_OID_HASHES: dict[str, HashAlgorithm] = {v: k for k, v in _HASH_OIDS.items()}


class OcspResponseStatus(enum.IntEnum):
    """OCSPResponseStatus (RFC 6960 §4.2.1). Value 4 is unused."""

    successful = 0
    malformedRequest = 1
    internalError = 2
    tryLater = 3
    sigRequired = 5
    unauthorized = 6


@dataclass(frozen=True, slots=True)
class Revocation:
    """What the database knows about one revoked certificate."""

    revoked_at: datetime
    reason: Reason
    invalidity_date: datetime | None = None


@dataclass(frozen=True, slots=True)
class Issuer:
    """A registered issuing CA as stored in `issuers` (keys are paths, never key material)."""

    id: int
    name: str
    cert_der: bytes
    subject_der: bytes
    key_id: bytes
    name_hashes: dict[HashAlgorithm, bytes]
    key_hashes: dict[HashAlgorithm, bytes]
    key_path: str | None
    ocsp_cert_der: bytes | None
    ocsp_key_path: str | None
    crl_shards: int
    profile: Profile

    @property
    def ocsp_key(self) -> str | None:
        """The key that signs this issuer's OCSP responses: the delegate's, else the CA's."""
        return self.ocsp_key_path or self.key_path
