"""Full, delta and shard CRLs from pre-encoded entries: pure, no I/O, no clock.

Why a buffer and not a builder object per entry: a full CRL of a million entries is ~40 MB of
entries that PostgreSQL already holds pre-encoded (`certificates.crl_entry`). The fastest and
leanest CRL is therefore those bytes laid end to end in one `bytearray`, with the tbsCertList
head written in front of them once their total length is known, and one signature over the
whole tbsCertList. `CrlAssembler` reserves room for the head at the front of the buffer, appends
entry chunks as they stream in, then fills in the head, signs a zero-copy view of tbsCertList and
trims the unused front (CPython deletes from a bytearray's front without moving the data). Peak
memory is the entries once plus the final `bytes` once.

What goes into each kind (CONFORMANCE §5-§7):

- full, unsharded: AKI (keyIdentifier), cRLNumber and, when deltas are published, a non-critical
  freshestCRL naming the delta. No IDP (CRL-13), so constrained clients that refuse unknown
  critical extensions (mbedTLS, INTEROP-10) accept it.
- full, shard: the same plus a critical IDP whose fullName carries the shard's URLs byte for byte
  (SHARD-1, CRL-14).
- delta: AKI, cRLNumber, critical deltaCRLIndicator (DELTA-1), the base's IDP when the base has
  one (DELTA-5), never freshestCRL (DELTA-4).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from revoc.der.asn1 import der_bit_string, der_length
from revoc.der.crl import (
    authority_key_identifier_extension,
    crl_extensions,
    crl_number_extension,
    delta_crl_indicator_extension,
    freshest_crl_extension,
    issuing_distribution_point_extension,
    revoked_certificates_header,
    sequence_header,
    tbs_cert_list_head,
)
from revoc.signing import Signer

# Room for a SEQUENCE header of any length up to 2**32: tag, 0x84, four length octets.
_MAX_HEADER = 6


class CrlKind(Enum):
    FULL = "full"
    DELTA = "delta"


@dataclass(frozen=True, slots=True)
class CrlParams:
    """Everything about one CRL except its entries and signature."""

    kind: CrlKind
    issuer_name: bytes
    key_id: bytes
    number: int
    this_update: datetime
    next_update: datetime
    base_number: int | None = None
    idp_urls: tuple[str, ...] = ()
    freshest_url: str | None = None

    def __post_init__(self) -> None:
        if (self.kind is CrlKind.DELTA) != (self.base_number is not None):
            raise ValueError("a delta CRL, and only a delta CRL, names a base CRL number")
        if self.kind is CrlKind.DELTA and self.freshest_url is not None:
            raise ValueError("a delta CRL never carries freshestCRL (RFC 5280 §5.2.6)")
        if self.base_number is not None and self.base_number >= self.number:
            raise ValueError("a delta CRL's number must exceed its base's (RFC 5280 §5.2.4)")


def encode_crl_extensions(params: CrlParams) -> bytes:
    """crlExtensions for `params`, in a fixed order: AKI, cRLNumber, delta, IDP, freshest."""
    extensions = [authority_key_identifier_extension(params.key_id),
                  crl_number_extension(params.number)]
    if params.base_number is not None:
        extensions.append(delta_crl_indicator_extension(params.base_number))
    if params.idp_urls:
        extensions.append(issuing_distribution_point_extension(params.idp_urls))
    if params.freshest_url is not None:
        extensions.append(freshest_crl_extension(params.freshest_url))
    return crl_extensions(extensions)


class CrlAssembler:
    """Collects concatenated DER entries, then produces the signed CertificateList.

    Entries must already be in the order wanted (by serial, CRL-6), each serial once; the
    assembler only counts and lays out bytes. Use once: `add` any number of times, then `sign`.
    """

    __slots__ = ("_buffer", "_extensions", "_head", "_reserved", "_signature_algorithm",
                 "_signed")

    def __init__(self, params: CrlParams, signature_algorithm: bytes) -> None:
        self._signature_algorithm = signature_algorithm
        self._head = tbs_cert_list_head(signature_algorithm, params.issuer_name,
                                        params.this_update, params.next_update)
        self._extensions = encode_crl_extensions(params)
        # Outer CertificateList header + tbsCertList header + head + revokedCertificates header.
        self._reserved = 3 * _MAX_HEADER + len(self._head)
        self._buffer = bytearray(self._reserved)
        self._signed = False

    def add(self, entries: bytes | bytearray | memoryview) -> None:
        """Append one or more complete, concatenated revokedCertificates entries."""
        if self._signed:
            raise RuntimeError("this CRL is signed already")
        self._buffer += entries

    @property
    def entries_length(self) -> int:
        return len(self._buffer) - self._reserved

    def sign(self, signer: Signer) -> bytes:
        """Lay out tbsCertList around the entries, sign it, and return the CRL's DER."""
        if self._signed:
            raise RuntimeError("this CRL is signed already")
        if signer.algorithm_identifier != self._signature_algorithm:
            raise ValueError("the signer's AlgorithmIdentifier differs from the one in tbs")
        self._signed = True
        buffer = self._buffer
        entries_length = self.entries_length
        revoked_header = revoked_certificates_header(entries_length)
        tbs_content_length = (len(self._head) + len(revoked_header) + entries_length
                              + len(self._extensions))
        front = sequence_header(tbs_content_length) + self._head + revoked_header
        start = self._reserved - len(front)
        buffer[start:self._reserved] = front
        buffer += self._extensions
        with memoryview(buffer) as view, view[start:] as tbs:
            signature = signer.sign(tbs)  # type: ignore[arg-type]  # any buffer works
        tail = self._signature_algorithm + der_bit_string(signature)
        outer = b"\x30" + der_length(len(buffer) - start + len(tail))
        start -= len(outer)
        buffer[start:start + len(outer)] = outer
        buffer += tail
        del buffer[:start]  # O(1) in CPython: moves the start pointer, not the data
        self._buffer = bytearray()
        der = bytes(buffer)
        return der
