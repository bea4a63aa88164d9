"""CRL codec (RFC 5280 §5): revokedCertificates entries, extensions and the tbsCertList pieces.

The entry encoder runs once per revoked row (a million at import time), so the extension
prefixes are precomputed and an entry is a few byte concatenations.
"""

from __future__ import annotations

from datetime import datetime

from revoc.der.asn1 import (
    der_enumerated,
    der_integer,
    der_length,
    der_oid,
    der_sequence,
    generalized_time,
    integer_content,
    tlv,
    utc_or_generalized_time,
)
from revoc.der.types import Reason

OID_CRL_REASON = "2.5.29.21"
OID_INVALIDITY_DATE = "2.5.29.24"

# Extension ::= SEQUENCE { extnID, critical DEFAULT FALSE (omitted: both are non-critical),
# extnValue OCTET STRING }. A reasonCode is always 12 octets; an invalidityDate always 26.
_REASON_EXTENSION: dict[Reason, bytes] = {
    r: der_sequence(der_oid(OID_CRL_REASON), tlv(0x04, der_enumerated(r.value)))
    for r in Reason
    if r is not Reason.unspecified  # unspecified is expressed by omission (CRL-10)
}
_INVALIDITY_PREFIX = b"\x30\x18" + der_oid(OID_INVALIDITY_DATE) + b"\x04\x11"


def encode_crl_entry(
    serial: int,
    revoked_at: datetime,
    reason: Reason | None = None,
    invalidity_date: datetime | None = None,
) -> bytes:
    """DER of one revokedCertificates entry (RFC 5280 §5.1.2.6).

    reasonCode only for a reason other than unspecified (CRL-10); invalidityDate as
    GeneralizedTime when given (CRL-11); crlEntryExtensions omitted when there are none.
    """
    extensions = b""
    if reason is not None and reason is not Reason.unspecified:
        extensions = _REASON_EXTENSION[reason]
    if invalidity_date is not None:
        extensions += _INVALIDITY_PREFIX + generalized_time(invalidity_date)
    body = der_integer(serial) + utc_or_generalized_time(revoked_at)
    if extensions:
        body += tlv(0x30, extensions)
    return tlv(0x30, body)


# --- CRL assembly (RFC 5280 §5.1, §5.2) -----------------------------------------------------------
#
# A CRL is assembled from three byte strings so that a million entries never pass through a
# Python loop: everything before the entries (`tbs_cert_list_head`), the entries themselves
# (pre-encoded, concatenated), and the crlExtensions after them. The helpers below encode the
# pieces; crl_publisher.builder arranges them in one buffer and signs.

OID_AUTHORITY_KEY_IDENTIFIER = "2.5.29.35"
OID_CRL_NUMBER = "2.5.29.20"
OID_DELTA_CRL_INDICATOR = "2.5.29.27"
OID_ISSUING_DISTRIBUTION_POINT = "2.5.29.28"
OID_FRESHEST_CRL = "2.5.29.46"

_VERSION_V2 = b"\x02\x01\x01"  # CRL-1: version v2, encoded as INTEGER 1
_MAX_CRL_NUMBER_OCTETS = 20  # CRL-9 / RFC 5280 §5.2.3


def encode_extension(oid: str, value: bytes, *, critical: bool = False) -> bytes:
    """Extension ::= SEQUENCE { extnID, critical DEFAULT FALSE, extnValue OCTET STRING }.

    A FALSE `critical` is omitted, as DER requires for a DEFAULT value.
    """
    flag = b"\x01\x01\xff" if critical else b""
    return der_sequence(der_oid(oid), flag, tlv(0x04, value))


def authority_key_identifier_extension(key_id: bytes) -> bytes:
    """AKI with keyIdentifier only (CRL-8: OpenSSL mishandles the issuer+serial form)."""
    return encode_extension(OID_AUTHORITY_KEY_IDENTIFIER, der_sequence(tlv(0x80, key_id)))


def _crl_number_content(number: int) -> bytes:
    if number < 0:
        raise ValueError("a CRL number is never negative")
    if len(integer_content(number)) > _MAX_CRL_NUMBER_OCTETS:
        raise ValueError("a CRL number has at most 20 octets (RFC 5280 §5.2.3)")
    return der_integer(number)


def crl_number_extension(number: int) -> bytes:
    """cRLNumber, non-critical (CRL-9)."""
    return encode_extension(OID_CRL_NUMBER, _crl_number_content(number))


def delta_crl_indicator_extension(base_number: int) -> bytes:
    """deltaCRLIndicator naming the complete CRL this delta updates; always critical (DELTA-1)."""
    return encode_extension(OID_DELTA_CRL_INDICATOR, _crl_number_content(base_number),
                            critical=True)


def _full_name(urls: tuple[str, ...] | list[str]) -> bytes:
    """DistributionPointName.fullName of URIs: [0] { [0] IMPLICIT GeneralNames { [6] URI... } }.

    DistributionPointName is a CHOICE, so its [0] tag is explicit (constructed A0) even in an
    IMPLICIT-tagged module; fullName is [0] IMPLICIT GeneralNames (A0 again).
    """
    if not urls:
        raise ValueError("a distribution point needs at least one URL")
    names = b"".join(tlv(0x86, url.encode("ascii")) for url in urls)
    return tlv(0xA0, tlv(0xA0, names))


def issuing_distribution_point_extension(urls: tuple[str, ...] | list[str]) -> bytes:
    """IDP with distributionPoint fullName only, critical (CRL-14, SHARD-1).

    Every boolean is FALSE and therefore omitted (DER DEFAULT); no onlySomeReasons (SHARD-3).
    The URLs are written byte for byte as given: they must equal the certificates' CDP URIs.
    """
    return encode_extension(OID_ISSUING_DISTRIBUTION_POINT, der_sequence(_full_name(urls)),
                            critical=True)


def freshest_crl_extension(url: str) -> bytes:
    """freshestCRL (CRLDistributionPoints syntax) naming the delta CRL, non-critical (DELTA-6)."""
    return encode_extension(OID_FRESHEST_CRL, der_sequence(der_sequence(_full_name([url]))))


def crl_extensions(extensions: list[bytes]) -> bytes:
    """crlExtensions [0] EXPLICIT Extensions."""
    return tlv(0xA0, der_sequence(*extensions))


def tbs_cert_list_head(
    signature_algorithm: bytes,
    issuer_name: bytes,
    this_update: datetime,
    next_update: datetime,
) -> bytes:
    """The fixed middle of tbsCertList: version, signature, issuer, thisUpdate, nextUpdate.

    `signature_algorithm` is the signer's exact AlgorithmIdentifier, repeated byte for byte in the
    outer signatureAlgorithm (CRL-2); `issuer_name` is the CA's subject DER, copied, never
    re-encoded (CRL-3). Times are UTCTime through 2049 (CRL-4).
    """
    if next_update <= this_update:
        raise ValueError("nextUpdate must be after thisUpdate (RFC 5280 §5.1.2.5)")
    return (_VERSION_V2 + signature_algorithm + issuer_name
            + utc_or_generalized_time(this_update) + utc_or_generalized_time(next_update))


def revoked_certificates_header(entries_length: int) -> bytes:
    """Tag and length of revokedCertificates; empty when there are no entries (CRL-5)."""
    if entries_length == 0:
        return b""
    return b"\x30" + der_length(entries_length)


def sequence_header(content_length: int) -> bytes:
    """Tag and length of a SEQUENCE whose content is assembled elsewhere."""
    return b"\x30" + der_length(content_length)
