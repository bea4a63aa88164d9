"""OCSP responses (RFC 6960 §4.2): assembled by concatenating precomputed byte strings
(ResponseTemplate); only the serial, status, times and signature change between responses of one
issuer. The error responses are built once, at import. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from types import MappingProxyType

from cryptography import x509

from revoc.der.asn1 import (
    DER_NULL,
    der_enumerated,
    der_octet_string,
    der_oid,
    der_sequence,
    generalized_time,
    tlv,
)
from revoc.der.crl import OID_INVALIDITY_DATE
from revoc.der.keys import subject_public_key_bits
from revoc.der.ocsp_request import (
    MAX_NONCE_LENGTH,
    OID_PKIX_OCSP_BASIC,
    OID_PKIX_OCSP_EXTENDED_REVOKE,
    nonce_extension,
)
from revoc.der.types import CertStatus, OcspResponseStatus, Reason, Signer


@dataclass(frozen=True, slots=True)
class SingleResponse:
    cert_id_der: bytes  # echoed byte for byte (OCSP-RESP-9)
    status: CertStatus
    this_update: datetime
    next_update: datetime  # always present (OCSP-RESP-7)
    revocation_time: datetime | None = None
    # Omitted when None or unspecified (OCSP-RESP-12); never a reasonCode singleExtension (BR-12).
    revocation_reason: Reason | None = None
    # When recorded for a revoked certificate: an invalidityDate singleExtension, the CRL entry
    # extension of RFC 5280 §5.3.2 as RFC 6960 §4.4.5 allows, so OCSP and the CRL agree.
    invalidity_date: datetime | None = None


def responder_key_hash(cert: x509.Certificate) -> bytes:
    """ResponderID byKey value: SHA-1 of subjectPublicKey bits, always SHA-1 (OCSP-RESP-5)."""
    return hashlib.sha1(subject_public_key_bits(cert)).digest()


def error_response(status: OcspResponseStatus) -> bytes:
    """Bare OCSPResponse for an error status: no responseBytes, no signature (OCSP-RESP-1)."""
    status = OcspResponseStatus(status)
    if status is OcspResponseStatus.successful:
        raise ValueError("a successful OCSPResponse needs responseBytes; use build_ocsp_response")
    return b"\x30\x03\x0a\x01" + bytes((status,))


ERROR_RESPONSES: Mapping[OcspResponseStatus, bytes] = MappingProxyType(
    {s: error_response(s) for s in OcspResponseStatus if s is not OcspResponseStatus.successful}
)

# Pre-signing encodes the same few instants (producedAt, thisUpdate, nextUpdate) thousands of
# times in a row, so a small cache removes most of the time formatting from the hot path.
_time = lru_cache(maxsize=64)(generalized_time)

CERT_STATUS_GOOD = b"\x80\x00"  # good [0] IMPLICIT NULL
CERT_STATUS_UNKNOWN = b"\x82\x00"  # unknown [2] IMPLICIT NULL
BASIC_RESPONSE_TYPE = der_oid(OID_PKIX_OCSP_BASIC)
RESPONSE_STATUS_SUCCESSFUL = b"\x0a\x01\x00"
_EXTENDED_REVOKE = der_sequence(der_oid(OID_PKIX_OCSP_EXTENDED_REVOKE), der_octet_string(DER_NULL))
# [0] EXPLICIT CRLReason for each reason worth stating (unspecified is expressed by omission).
REVOKED_REASON_FIELD: dict[Reason, bytes] = {
    r: tlv(0xA0, der_enumerated(r.value)) for r in Reason if r is not Reason.unspecified
}


# singleExtensions [1] EXPLICIT Extensions holding one invalidityDate: always 30 octets, the
# same as in a CRL entry (revoc/der/crl.py): 30 18 06 03 55 1D 18 04 11 GeneralizedTime.
_INVALIDITY_SINGLE_PREFIX = (b"\xa1\x1c\x30\x1a\x30\x18" + der_oid(OID_INVALIDITY_DATE)
                             + b"\x04\x11")


def invalidity_single_extensions(invalidity_date: datetime) -> bytes:
    """singleExtensions carrying invalidityDate (RFC 6960 §4.4.5, RFC 5280 §5.3.2)."""
    return _INVALIDITY_SINGLE_PREFIX + generalized_time(invalidity_date)


def _single_response(single: SingleResponse) -> bytes:
    if single.next_update <= single.this_update:
        raise ValueError("nextUpdate must be later than thisUpdate (OCSP-RESP-6)")
    status = single.status
    if status is CertStatus.GOOD:
        cert_status = CERT_STATUS_GOOD
    elif status is CertStatus.UNKNOWN:
        cert_status = CERT_STATUS_UNKNOWN
    else:
        if single.revocation_time is None:
            raise ValueError("a revoked SingleResponse needs revocation_time")
        reason = single.revocation_reason
        info = _time(single.revocation_time)
        if reason is not None and reason is not Reason.unspecified:
            info += REVOKED_REASON_FIELD[reason]
        cert_status = tlv(0xA1, info)  # revoked [1] IMPLICIT RevokedInfo
    extensions = b""
    if status is CertStatus.REVOKED and single.invalidity_date is not None:
        extensions = invalidity_single_extensions(single.invalidity_date)
    return tlv(
        0x30,
        single.cert_id_der
        + cert_status
        + _time(single.this_update)
        + b"\xa0\x11"  # nextUpdate [0] EXPLICIT GeneralizedTime (always 17 octets)
        + _time(single.next_update)
        + extensions,
    )


class ResponseTemplate:
    """Everything constant about one signer's responses, encoded once; build() fills the rest.

    This is the pre-sign fast path: per response only the SingleResponse, producedAt and the
    signature are encoded.
    """

    __slots__ = ("_certs_block", "_responder_id", "_sign", "_signature_algorithm")

    def __init__(
        self, *, signer: Signer, responder_key_hash: bytes, certs: Sequence[bytes] = ()
    ) -> None:
        if len(responder_key_hash) != 20:
            raise ValueError("responder_key_hash must be the 20-octet SHA-1 key hash")
        self._sign = signer.sign
        self._signature_algorithm = signer.algorithm_identifier
        self._responder_id = tlv(0xA2, der_octet_string(responder_key_hash))  # byKey [2] EXPLICIT
        # certs [0] EXPLICIT SEQUENCE OF Certificate; absent when the CA signs (OCSP-SIGNER-8).
        self._certs_block = tlv(0xA0, der_sequence(*certs)) if certs else b""

    # Read-only views for batch encoders (revoc.der.ocsp_batch) that reuse the constant parts.
    @property
    def responder_id(self) -> bytes:
        return self._responder_id

    @property
    def signature_algorithm(self) -> bytes:
        return self._signature_algorithm

    @property
    def certs_block(self) -> bytes:
        return self._certs_block

    def sign(self, tbs: bytes) -> bytes:
        return self._sign(tbs)

    def build(self, single: SingleResponse, produced_at: datetime) -> bytes:
        """A complete signed DER OCSPResponse for one CertID, without nonce."""
        return self._assemble(_single_response(single), produced_at, b"")

    def build_many(
        self,
        singles: Sequence[SingleResponse],
        produced_at: datetime,
        *,
        nonce: bytes | None = None,
        extended_revoke: bool = False,
    ) -> bytes:
        if not singles:
            raise ValueError("a response needs at least one SingleResponse")
        extensions = b""
        if nonce is not None:
            if not 1 <= len(nonce) <= MAX_NONCE_LENGTH:
                raise ValueError(f"nonce must be 1..{MAX_NONCE_LENGTH} octets")
            extensions += nonce_extension(nonce)
        if extended_revoke:
            extensions += _EXTENDED_REVOKE
        if extensions:
            extensions = tlv(0xA1, tlv(0x30, extensions))  # responseExtensions [1] EXPLICIT
        responses = b"".join(_single_response(s) for s in singles)
        return self._assemble(responses, produced_at, extensions)

    def _assemble(self, responses: bytes, produced_at: datetime, extensions: bytes) -> bytes:
        # ResponseData: version omitted (v1 is the DEFAULT, OCSP-RESP-4).
        tbs = tlv(
            0x30,
            self._responder_id + _time(produced_at) + tlv(0x30, responses) + extensions,
        )
        signature = self._sign(tbs)
        basic = tlv(
            0x30,
            tbs + self._signature_algorithm + tlv(0x03, b"\x00" + signature) + self._certs_block,
        )
        response_bytes = tlv(0x30, BASIC_RESPONSE_TYPE + tlv(0x04, basic))
        return tlv(0x30, RESPONSE_STATUS_SUCCESSFUL + tlv(0xA0, response_bytes))


def build_ocsp_response(
    singles: Sequence[SingleResponse],
    *,
    signer: Signer,
    responder_key_hash: bytes,
    produced_at: datetime,
    certs: Sequence[bytes] = (),
    nonce: bytes | None = None,
    extended_revoke: bool = False,
) -> bytes:
    """A complete successful DER OCSPResponse with a signed BasicOCSPResponse (OCSP-RESP-3)."""
    template = ResponseTemplate(signer=signer, responder_key_hash=responder_key_hash, certs=certs)
    return template.build_many(singles, produced_at, nonce=nonce, extended_revoke=extended_revoke)
