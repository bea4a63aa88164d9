"""Batch encoding of pre-signed OCSP responses: the presigner's fast path.

Between responses of one issuer only the serial, the status and the signature change (the times
change per chunk). So per chunk the time fields and producedAt are encoded once, the
tbsResponseData up to the serial once per (CertID hash, serial length), and everything around
tbs once per (tbs length, signature length); a good response then costs three concatenations
and the signature. The output is byte-for-byte what `ResponseTemplate.build` produces for the
same inputs (tests/test_presigner.py checks this).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from revoc.der.asn1 import der_length, generalized_time
from revoc.der.ocsp import (
    BASIC_RESPONSE_TYPE,
    CERT_STATUS_GOOD,
    RESPONSE_STATUS_SUCCESSFUL,
    REVOKED_REASON_FIELD,
    ResponseTemplate,
    invalidity_single_extensions,
)
from revoc.der.types import Reason

# What one certificate contributes to a chunk: minimal serial content octets (the database key),
# revocation time (None while good), CRLReason code (None or 0: omitted, OCSP-RESP-12) and
# invalidity date (None: none recorded; else an invalidityDate singleExtension when revoked).
CertRow = tuple[bytes, datetime | None, int | None, datetime | None]


@dataclass(frozen=True, slots=True)
class ResponseTimes:
    """The times shared by every response of a chunk (whole seconds, UTC)."""

    produced_at: datetime
    this_update: datetime
    next_update: datetime


def _header(tag: int, length: int) -> bytes:
    """DER identifier and length octets."""
    return bytes((tag,)) + der_length(length)


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
        data_head = self.responder_id + generalized_time(times.produced_at)
        good_tail = CERT_STATUS_GOOD + times_block
        sign = self.sign
        # Everything around tbsResponseData depends only on the lengths of the tbs and of the
        # signature (ECDSA signatures vary by a few octets), so it is encoded once per pair.
        signature_head = self.signature_algorithm
        certs_block = self.certs_block
        envelopes: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        # tbs bytes before the serial octets, per (CertID prefix, serial length), for good rows.
        heads: dict[tuple[int, int], bytes] = {}
        out: list[bytes] = []
        append = out.append
        for serial, revoked_at, reason, invalidity_date in rows:
            serial_len = len(serial)
            if revoked_at is None:
                tail = good_tail
            else:
                info = generalized_time(revoked_at)
                if reason:  # None and unspecified (0) are expressed by omission (OCSP-RESP-12)
                    info += REVOKED_REASON_FIELD[Reason(reason)]
                tail = _header(0xA1, len(info)) + info + times_block
                if invalidity_date is not None:
                    tail += invalidity_single_extensions(invalidity_date)
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
    response_bytes_len = len(BASIC_RESPONSE_TYPE) + len(octets_head) + octets_len
    response_bytes_sequence = _header(0x30, response_bytes_len)
    response_bytes_head = response_bytes_sequence + BASIC_RESPONSE_TYPE + octets_head
    # responseBytes [0] EXPLICIT wraps the whole ResponseBytes SEQUENCE, header included.
    explicit_len = len(response_bytes_sequence) + response_bytes_len
    explicit_head = _header(0xA0, explicit_len)
    body_len = len(RESPONSE_STATUS_SUCCESSFUL) + len(explicit_head) + explicit_len
    head = (_header(0x30, body_len) + RESPONSE_STATUS_SUCCESSFUL + explicit_head
            + response_bytes_head + basic_head)
    return head, signature_algorithm + bit_string_head
