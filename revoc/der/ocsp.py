"""OCSP codec (RFC 6960): strict request parsing and fast response assembly. Pure: bytes in/out.

Parsing is a hand-written strict DER reader rather than asn1crypto because the request is untrusted
input on the hot path: we read only the fields we need, keep the exact bytes of every CertID for
the echo (CONFORMANCE OCSP-RESP-9), and turn every failure into MalformedRequest (OCSP-REQ-1).

Responses are assembled by concatenating precomputed byte strings (ResponseTemplate); only the
serial, status, times and signature change between responses of one issuer.
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
    DerError,
    decode_integer,
    der_enumerated,
    der_integer,
    der_octet_string,
    der_oid,
    der_sequence,
    expect,
    generalized_time,
    integer_content,
    read_tlv,
    tlv,
)
from revoc.der.crl import OID_INVALIDITY_DATE
from revoc.model import CertStatus, HashAlgorithm, OcspResponseStatus, Reason
from revoc.signing import Signer, subject_public_key_bits

# RFC 9654 (which obsoletes RFC 8954) gives the nonce `OCTET STRING (SIZE(1..128))`. We take the
# larger RFC 9654 limit deliberately (CONFORMANCE OCSP-REQ-9): it accepts every RFC 8954 client
# (<= 32 octets) and the newer ones, and 128 octets cannot hurt a response's size.
MAX_NONCE_LENGTH = 128
# Pre-signed answers cover single requests; a handful more is plenty for online signing, and a cap
# bounds the work one request can cause (CONFORMANCE OCSP-REQ-11).
MAX_CERT_IDS = 16
# Serials are at most 20 octets (RFC 5280 §4.1.2.2); legacy CAs issued a few longer ones.
MAX_SERIAL_OCTETS = 64

OID_PKIX_OCSP_BASIC = "1.3.6.1.5.5.7.48.1.1"
OID_PKIX_OCSP_NONCE = "1.3.6.1.5.5.7.48.1.2"
OID_PKIX_OCSP_EXTENDED_REVOKE = "1.3.6.1.5.5.7.48.1.9"

_NONCE_OID_CONTENT = der_oid(OID_PKIX_OCSP_NONCE)[2:]
_HASH_BY_OID_CONTENT: dict[bytes, HashAlgorithm] = {
    der_oid(alg.oid)[2:]: alg for alg in HashAlgorithm
}


class MalformedRequest(ValueError):
    """The body is not a well-formed DER OCSPRequest we can answer (-> malformedRequest)."""


@dataclass(frozen=True, slots=True)
class CertIdRequest:
    raw: bytes  # exact DER of the CertID SEQUENCE as received, echoed in the response
    hash_algorithm: HashAlgorithm | None  # None: unsupported hash OID or odd params -> unauthorized
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int

    @property
    def serial_bytes(self) -> bytes:
        """Minimal two's-complement serial octets: the database key, whatever padding was sent."""
        return integer_content(self.serial)


@dataclass(frozen=True, slots=True)
class OcspRequest:
    cert_ids: tuple[CertIdRequest, ...]
    # Contents of the nonce extension's inner OCTET STRING (RFC 9654 §2.1, OCSP-REQ-10). Legacy
    # RFC 6960 clients that put the nonce bytes directly into extnValue are accepted too: when
    # extnValue is not exactly one DER OCTET STRING, the whole extnValue is the nonce.
    nonce: bytes | None


# --- request parsing -----------------------------------------------------------------------------


def parse_ocsp_request(der: bytes) -> OcspRequest:
    """Parse a DER OCSPRequest strictly; any problem raises MalformedRequest and nothing else.

    The request signature, requestorName and unknown extensions (critical or not) are ignored
    (OCSP-REQ-6, OCSP-REQ-8): a responder that only pre-signs cannot act on them anyway.
    """
    try:
        return _parse_ocsp_request(bytes(der))
    except MalformedRequest:
        raise
    except Exception as exc:  # robustness: untrusted input must never surface another error
        raise MalformedRequest(f"malformed OCSP request: {exc}") from exc


def _parse_ocsp_request(data: bytes) -> OcspRequest:
    size = len(data)
    start, end = expect(data, 0, size, 0x30)  # OCSPRequest
    if end != size:
        raise MalformedRequest("trailing bytes after OCSPRequest")
    tbs_start, tbs_end = expect(data, start, end, 0x30)  # TBSRequest
    if tbs_end != end:
        tag, sig_start, sig_end = read_tlv(data, tbs_end, end)
        if tag != 0xA0 or sig_end != end:  # optionalSignature [0] EXPLICIT Signature
            raise MalformedRequest("unexpected element after tbsRequest")
        expect(data, sig_start, sig_end, 0x30)  # ignored, but must be a Signature SEQUENCE

    pos = tbs_start
    tag, c_start, c_end = read_tlv(data, pos, tbs_end)
    if tag == 0xA0:  # version [0] EXPLICIT INTEGER DEFAULT v1
        v_start, v_end = expect(data, c_start, c_end, 0x02)
        if v_end != c_end or decode_integer(data[v_start:v_end]) != 0:
            raise MalformedRequest("OCSPRequest version is not v1")
        pos = c_end
        tag, c_start, c_end = read_tlv(data, pos, tbs_end)
    if tag == 0xA1:  # requestorName [1] EXPLICIT GeneralName: ignored (OCSP-REQ-6)
        pos = c_end
        tag, c_start, c_end = read_tlv(data, pos, tbs_end)
    if tag != 0x30:
        raise MalformedRequest("requestList missing")
    cert_ids = _parse_request_list(data, c_start, c_end)
    pos = c_end

    nonce: bytes | None = None
    if pos != tbs_end:
        tag, e_start, e_end = read_tlv(data, pos, tbs_end)
        if tag != 0xA2 or e_end != tbs_end:  # requestExtensions [2] EXPLICIT Extensions
            raise MalformedRequest("unexpected element in tbsRequest")
        extensions = _parse_extensions(data, e_start, e_end)
        nonce_value = extensions.get(_NONCE_OID_CONTENT)
        if nonce_value is not None:
            nonce = _nonce_from_extn_value(nonce_value)
    return OcspRequest(cert_ids=cert_ids, nonce=nonce)


def _parse_request_list(data: bytes, pos: int, end: int) -> tuple[CertIdRequest, ...]:
    cert_ids: list[CertIdRequest] = []
    while pos < end:
        r_start, r_end = expect(data, pos, end, 0x30)  # Request
        if len(cert_ids) == MAX_CERT_IDS:
            raise MalformedRequest(f"more than {MAX_CERT_IDS} CertIDs in one request")
        _tag, cid_start, cid_end = read_tlv(data, r_start, r_end)
        cert_ids.append(_parse_cert_id(data, r_start, cid_start, cid_end))
        if cid_end != r_end:
            tag, e_start, e_end = read_tlv(data, cid_end, r_end)
            if tag != 0xA0 or e_end != r_end:  # singleRequestExtensions [0] EXPLICIT
                raise MalformedRequest("unexpected element in Request")
            _parse_extensions(data, e_start, e_end)  # checked for shape, then ignored
        pos = r_end
    if not cert_ids:
        raise MalformedRequest("empty requestList")
    return tuple(cert_ids)


def _parse_cert_id(data: bytes, tlv_start: int, start: int, end: int) -> CertIdRequest:
    if data[tlv_start] != 0x30:
        raise MalformedRequest("CertID is not a SEQUENCE")
    a_start, a_end = expect(data, start, end, 0x30)  # hashAlgorithm AlgorithmIdentifier
    o_start, o_end = expect(data, a_start, a_end, 0x06)
    params = data[o_end:a_end]
    hash_algorithm = _HASH_BY_OID_CONTENT.get(data[o_start:o_end])
    if params not in (b"", DER_NULL):  # OCSP-REQ-2: NULL and absent parameters are both fine
        hash_algorithm = None
    n_start, n_end = expect(data, a_end, end, 0x04)  # issuerNameHash
    k_start, k_end = expect(data, n_end, end, 0x04)  # issuerKeyHash
    s_start, s_end = expect(data, k_end, end, 0x02)  # serialNumber
    if s_end != end:
        raise MalformedRequest("trailing element in CertID")
    if s_end - s_start > MAX_SERIAL_OCTETS:
        raise MalformedRequest("serial number too long")
    return CertIdRequest(
        raw=data[tlv_start:end],
        hash_algorithm=hash_algorithm,
        issuer_name_hash=data[n_start:n_end],
        issuer_key_hash=data[k_start:k_end],
        serial=decode_integer(data[s_start:s_end]),
    )


def _parse_extensions(data: bytes, start: int, end: int) -> dict[bytes, bytes]:
    """Extensions inside an EXPLICIT wrapper: map OID content octets -> extnValue contents."""
    s_start, s_end = expect(data, start, end, 0x30)
    if s_end != end or s_start == s_end:
        raise MalformedRequest("Extensions must be one non-empty SEQUENCE")
    found: dict[bytes, bytes] = {}
    pos = s_start
    while pos < s_end:
        x_start, x_end = expect(data, pos, s_end, 0x30)  # Extension
        o_start, o_end = expect(data, x_start, x_end, 0x06)
        tag, v_start, v_end = read_tlv(data, o_end, x_end)
        if tag == 0x01:  # critical BOOLEAN (ignored: we act on no extension but the nonce)
            if v_end - v_start != 1:
                raise MalformedRequest("bad BOOLEAN in Extension")
            tag, v_start, v_end = read_tlv(data, v_end, x_end)
        if tag != 0x04 or v_end != x_end:
            raise MalformedRequest("bad extnValue")
        oid = data[o_start:o_end]
        if oid in found:  # X.509: an extension appears at most once; which nonce would we echo?
            raise MalformedRequest("duplicate extension")
        found[oid] = data[v_start:v_end]
        pos = x_end
    return found


def _nonce_from_extn_value(value: bytes) -> bytes:
    nonce = value
    try:
        n_start, n_end = expect(value, 0, len(value), 0x04)
        if n_end == len(value):
            nonce = value[n_start:n_end]
    except DerError:
        pass  # legacy client: the raw extnValue is the nonce (see OcspRequest.nonce)
    if not 1 <= len(nonce) <= MAX_NONCE_LENGTH:
        raise MalformedRequest(f"nonce must be 1..{MAX_NONCE_LENGTH} octets, got {len(nonce)}")
    return nonce


# --- building requests and CertIDs (presign, tests) ----------------------------------------------


def cert_id_prefix(
    hash_algorithm: HashAlgorithm,
    issuer_name_der: bytes,
    issuer_key_bits: bytes,
    *,
    null_params: bool = True,
) -> bytes:
    """CertID contents before serialNumber: hashAlgorithm, issuerNameHash, issuerKeyHash."""
    algorithm = der_sequence(der_oid(hash_algorithm.oid), DER_NULL if null_params else b"")
    return (
        algorithm
        + der_octet_string(hash_algorithm.digest(issuer_name_der))
        + der_octet_string(hash_algorithm.digest(issuer_key_bits))
    )


def cert_id_der(
    hash_algorithm: HashAlgorithm,
    issuer_name_der: bytes,
    issuer_key_bits: bytes,
    serial: int,
    *,
    null_params: bool = True,
) -> bytes:
    """DER CertID for an issuer (subject DER, subjectPublicKey bits) and serial (OCSP-REQ-3)."""
    prefix = cert_id_prefix(hash_algorithm, issuer_name_der, issuer_key_bits,
                            null_params=null_params)
    return tlv(0x30, prefix + der_integer(serial))


def encode_ocsp_request(cert_ids: Sequence[bytes], *, nonce: bytes | None = None) -> bytes:
    """An unsigned DER OCSPRequest for the given CertID DERs (for tests and tools)."""
    request_list = der_sequence(*(der_sequence(cid) for cid in cert_ids))
    extensions = b""
    if nonce is not None:
        extensions = tlv(0xA2, der_sequence(_nonce_extension(nonce)))
    return der_sequence(der_sequence(request_list, extensions))


# --- responses -----------------------------------------------------------------------------------


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


def _nonce_extension(nonce: bytes) -> bytes:
    # extnValue holds a DER OCTET STRING wrapping the nonce (RFC 9654 §2.1).
    return der_sequence(der_oid(OID_PKIX_OCSP_NONCE), der_octet_string(der_octet_string(nonce)))


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
            extensions += _nonce_extension(nonce)
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
