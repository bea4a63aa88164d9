"""OCSP requests (RFC 6960 §4.1): strict parsing of what clients send, and the encoders of
requests and CertIDs (the presigner's templates, tests). Pure: bytes in, bytes out.

Parsing is a hand-written strict DER reader rather than asn1crypto because the request is untrusted
input on the hot path: we read only the fields we need, keep the exact bytes of every CertID for
the echo (CONFORMANCE OCSP-RESP-9), and turn every failure into MalformedRequest (OCSP-REQ-1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from revoc.der.asn1 import (
    DER_NULL,
    DerError,
    decode_integer,
    der_integer,
    der_octet_string,
    der_oid,
    der_sequence,
    expect,
    integer_content,
    read_tlv,
    tlv,
)
from revoc.der.types import HashAlgorithm

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


def nonce_extension(nonce: bytes) -> bytes:
    # extnValue holds a DER OCTET STRING wrapping the nonce (RFC 9654 §2.1).
    return der_sequence(der_oid(OID_PKIX_OCSP_NONCE), der_octet_string(der_octet_string(nonce)))


def encode_ocsp_request(cert_ids: Sequence[bytes], *, nonce: bytes | None = None) -> bytes:
    """An unsigned DER OCSPRequest for the given CertID DERs (for tests and tools)."""
    request_list = der_sequence(*(der_sequence(cid) for cid in cert_ids))
    extensions = b""
    if nonce is not None:
        extensions = tlv(0xA2, der_sequence(nonce_extension(nonce)))
    return der_sequence(der_sequence(request_list, extensions))
