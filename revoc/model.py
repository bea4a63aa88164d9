"""Plain types shared by every part of revoc: statuses, reasons, hash algorithms, issuers.

The wire-level enums live in revoc/der/types.py (the codecs import nothing else of revoc) and
are re-exported here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from revoc.der.types import CertStatus, HashAlgorithm, OcspResponseStatus, Reason, reason_names

__all__ = [
    "BR_ALLOWED_REASONS",
    "CertStatus",
    "HashAlgorithm",
    "Issuer",
    "OcspResponseStatus",
    "Profile",
    "Reason",
    "reason_names",
]

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
