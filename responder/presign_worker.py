"""The process-pool side of the presigner: turn (serial, status, times) rows into signed DER.

Workers are separate processes so that signing uses every core the presigner is given. What
crosses the process boundary is kept small on purpose: an `IssuerSigning` description (paths and
public certificates, a few hundred bytes), one `ResponseTimes` per chunk, a list of `CertRow`
tuples going in and DER bytes coming back. Each worker loads an issuer's key from its file once and
keeps the encoded template for the rest of its life (`_issuer_templates` is cached per process).

`PresignTemplate` is `ResponseTemplate` with a batch fast path: between responses of one issuer
only the serial, the status and the signature change (the times change per chunk). So per chunk
the time fields and producedAt are encoded once, the tbsResponseData up to the serial once per
(CertID hash, serial length), and everything around tbs once per (tbs length, signature length);
a good response then costs three concatenations and the signature. Its output is byte-for-byte
what `ResponseTemplate.build` produces for the same inputs (tests/test_presigner.py checks this).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from revoc.der.asn1 import der_oid, der_sequence, generalized_time, tlv
from revoc.der.ocsp import ResponseTemplate, responder_key_hash
from revoc.model import HashAlgorithm, Reason
from revoc.signing import FileKeySigner, Signer, subject_public_key_bits

# What one certificate contributes to a chunk: minimal serial content octets (the database key),
# revocation time (None while good) and CRLReason code (None or 0: omitted, OCSP-RESP-12).
CertRow = tuple[bytes, datetime | None, int | None]

_DER_NULL = b"\x05\x00"
_GOOD = b"\x80\x00"  # good [0] IMPLICIT NULL
_SUCCESSFUL = b"\x0a\x01\x00"
_BASIC_OID = der_oid("1.3.6.1.5.5.7.48.1.1")
_REASON_FIELD: dict[int, bytes] = {
    int(r): tlv(0xA0, b"\x0a\x01" + bytes((int(r),))) for r in Reason if r is not Reason.unspecified
}


@dataclass(frozen=True, slots=True)
class IssuerSigning:
    """Everything a worker needs to sign for one issuer; hashable, so it keys the worker cache.

    `key_mtime_ns` is part of the key on purpose: a key file replaced in place (rotation) gives a
    new cache entry instead of signing on with the old key.
    """

    issuer_id: int
    issuer_subject_der: bytes
    issuer_cert_der: bytes
    key_path: str
    key_mtime_ns: int
    # Delegated responder certificate (embedded in `certs`), or None when the CA key signs.
    responder_cert_der: bytes | None
    hash_algorithms: tuple[HashAlgorithm, ...]


@dataclass(frozen=True, slots=True)
class ResponseTimes:
    """The times shared by every response of a chunk (whole seconds, UTC)."""

    produced_at: datetime
    this_update: datetime
    next_update: datetime


def _header(tag: int, length: int) -> bytes:
    """DER identifier and length octets; OCSP responses stay far below 16 MiB."""
    if length < 0x80:
        return bytes((tag, length))
    if length < 0x100:
        return bytes((tag, 0x81, length))
    if length < 0x10000:
        return bytes((tag, 0x82, length >> 8, length & 0xFF))
    return bytes((tag, 0x83, length >> 16, (length >> 8) & 0xFF, length & 0xFF))


class PresignTemplate(ResponseTemplate):
    """ResponseTemplate plus `build_chunk`, the pre-sign fast path (see module docstring)."""

    __slots__ = ()

    def build_chunk(
        self, cert_id_prefixes: Sequence[bytes], rows: Sequence[CertRow], times: ResponseTimes
    ) -> list[bytes]:
        """Signed DER OCSPResponses, row-major: for each row, one per CertID prefix.

        A CertID prefix is the encoded `hashAlgorithm, issuerNameHash, issuerKeyHash` (contents of
        the CertID SEQUENCE before the serial), see `cert_id_prefix`.
        """
        if times.next_update <= times.this_update:
            raise ValueError("nextUpdate must be later than thisUpdate (OCSP-RESP-6)")
        # thisUpdate + nextUpdate [0] EXPLICIT, identical in every SingleResponse of the chunk.
        times_block = (
            generalized_time(times.this_update) + b"\xa0\x11" + generalized_time(times.next_update)
        )
        # ResponseData content starts with responderID and producedAt, also shared.
        data_head = self._responder_id + generalized_time(times.produced_at)
        good_tail = _GOOD + times_block
        sign = self._sign
        # Everything around tbsResponseData depends only on the lengths of the tbs and of the
        # signature (ECDSA signatures vary by a few octets), so it is encoded once per pair.
        signature_head = self._signature_algorithm
        certs_block = self._certs_block
        envelopes: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        # tbs bytes before the serial octets, per (CertID prefix, serial length), for good rows.
        heads: dict[tuple[int, int], bytes] = {}
        out: list[bytes] = []
        append = out.append
        for serial, revoked_at, reason in rows:
            serial_len = len(serial)
            if revoked_at is None:
                tail = good_tail
            else:
                info = generalized_time(revoked_at)
                if reason:  # None and unspecified (0) are expressed by omission (OCSP-RESP-12)
                    info += _REASON_FIELD[reason]
                tail = _header(0xA1, len(info)) + info + times_block
            for index, prefix in enumerate(cert_id_prefixes):
                head = heads.get((index, serial_len)) if tail is good_tail else None
                if head is None:
                    head = _tbs_head(data_head, prefix, serial_len, len(tail))
                    if tail is good_tail:
                        heads[index, serial_len] = head
                tbs = head + serial + tail
                signature = sign(tbs)
                lengths = (len(tbs), len(signature))
                envelope = envelopes.get(lengths)
                if envelope is None:
                    envelope = envelopes[lengths] = _envelope(
                        lengths[0], signature_head, lengths[1], len(certs_block)
                    )
                append(envelope[0] + tbs + envelope[1] + signature + certs_block)
        return out


def _tbs_head(data_head: bytes, prefix: bytes, serial_len: int, tail_len: int) -> bytes:
    """tbsResponseData up to the serial's content octets (the serial and status/times follow)."""
    serial_header = _header(0x02, serial_len)
    cert_id_len = len(prefix) + len(serial_header) + serial_len
    cert_id_head = _header(0x30, cert_id_len) + prefix + serial_header
    single_len = len(cert_id_head) - len(prefix) - len(serial_header) + cert_id_len + tail_len
    single_head = _header(0x30, single_len)
    responses_len = len(single_head) + single_len
    responses_head = _header(0x30, responses_len)  # SEQUENCE OF SingleResponse
    data_len = len(data_head) + len(responses_head) + responses_len
    return _header(0x30, data_len) + data_head + responses_head + single_head + cert_id_head


def _envelope(
    tbs_len: int, signature_algorithm: bytes, signature_len: int, certs_len: int
) -> tuple[bytes, bytes]:
    """(bytes before tbs, bytes between tbs and the signature octets) of an OCSPResponse."""
    bit_string_head = _header(0x03, signature_len + 1) + b"\x00"
    basic_len = tbs_len + len(signature_algorithm) + len(bit_string_head) + signature_len
    basic_len += certs_len
    basic_head = _header(0x30, basic_len)
    octets_len = len(basic_head) + basic_len
    octets_head = _header(0x04, octets_len)
    response_bytes_len = len(_BASIC_OID) + len(octets_head) + octets_len
    response_bytes_sequence = _header(0x30, response_bytes_len)
    response_bytes_head = response_bytes_sequence + _BASIC_OID + octets_head
    # responseBytes [0] EXPLICIT wraps the whole ResponseBytes SEQUENCE, header included.
    explicit_len = len(response_bytes_sequence) + response_bytes_len
    explicit_head = _header(0xA0, explicit_len)
    body_len = len(_SUCCESSFUL) + len(explicit_head) + explicit_len
    head = _header(0x30, body_len) + _SUCCESSFUL + explicit_head + response_bytes_head + basic_head
    return head, signature_algorithm + bit_string_head


def cert_id_prefix(
    hash_algorithm: HashAlgorithm, issuer_subject_der: bytes, issuer_key_bits: bytes
) -> bytes:
    """CertID contents before serialNumber, hash parameters NULL (the form OpenSSL sends)."""
    return (
        der_sequence(der_oid(hash_algorithm.oid), _DER_NULL)
        + tlv(0x04, hash_algorithm.digest(issuer_subject_der))
        + tlv(0x04, hash_algorithm.digest(issuer_key_bits))
    )


@dataclass(frozen=True, slots=True)
class IssuerTemplates:
    template: PresignTemplate
    prefixes: tuple[bytes, ...]


def build_issuer_templates(spec: IssuerSigning, signer: Signer | None = None) -> IssuerTemplates:
    """Template and CertID prefixes for one issuer; loads the key unless a signer is given."""
    signer = signer or FileKeySigner.from_file(spec.key_path)
    issuer_cert = x509.load_der_x509_certificate(spec.issuer_cert_der)
    if spec.responder_cert_der is not None:
        responder = x509.load_der_x509_certificate(spec.responder_cert_der)
        certs: tuple[bytes, ...] = (spec.responder_cert_der,)
    else:
        # The CA signs: certs stays empty, never the CA's own certificate (OCSP-SIGNER-8).
        responder = issuer_cert
        certs = ()
    template = PresignTemplate(
        signer=signer, responder_key_hash=responder_key_hash(responder), certs=certs
    )
    key_bits = subject_public_key_bits(issuer_cert)
    prefixes = tuple(
        cert_id_prefix(alg, spec.issuer_subject_der, key_bits) for alg in spec.hash_algorithms
    )
    return IssuerTemplates(template=template, prefixes=prefixes)


@functools.lru_cache(maxsize=64)
def _issuer_templates(spec: IssuerSigning) -> IssuerTemplates:
    # Per worker process: the key file is read once per (issuer, key file version).
    return build_issuer_templates(spec)


def sign_chunk(spec: IssuerSigning, times: ResponseTimes, rows: Sequence[CertRow]) -> list[bytes]:
    """Pool entry point: DER responses for `rows`, row-major over `spec.hash_algorithms`."""
    templates = _issuer_templates(spec)
    return templates.template.build_chunk(templates.prefixes, rows, times)


def warm_up() -> None:
    """Run once in each new worker so the first real chunk does not pay for imports."""
