"""Pre-signed OCSP responses stored without their `certs`, and spliced back together exactly.

A BasicOCSPResponse is `SEQUENCE { tbsResponseData, signatureAlgorithm, signature,
certs [0] EXPLICIT SEQUENCE OF Certificate OPTIONAL }`. Only tbsResponseData is signed, and a
delegated responder's certificate (OCSP-SIGNER-8) is the same in every response of an issuer: two
thirds of each stored row. So `ocsp_responses.der` holds the *stem* (the OCSPResponse with the
`certs` field left out, itself a well-formed OCSPResponse) and `certs_id` names the one
`responder_certs` row holding the `certs` element; `splice_certs` puts it back, byte for byte
what the signer produced (tests/test_ocsp_certs.py). Only the lengths of the five enclosing
elements change; the signature covers none of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from revoc.der.asn1 import DerError, der_length, der_sequence, tlv
from revoc.der.ocsp_response import BASIC_RESPONSE_TYPE, RESPONSE_STATUS_SUCCESSFUL

# OCSPResponse content up to responseBytes: responseStatus successful (the only status stored).
_STATUS = RESPONSE_STATUS_SUCCESSFUL
_CERTS_TAG = 0xA0


def certs_block(certs: Sequence[bytes]) -> bytes:
    """The `certs [0] EXPLICIT SEQUENCE OF Certificate` element for these DER certificates."""
    if not certs:
        raise ValueError("no certificates: a CA-signed response has no certs field")
    return tlv(_CERTS_TAG, der_sequence(*certs))


def certs_id(block: bytes) -> int:
    """The `responder_certs.id` of a certs element: its SHA-256's first 8 octets, as a signed
    bigint (a key any presigner computes alone; the store refuses a different block under it)."""
    return int.from_bytes(hashlib.sha256(block).digest()[:8], "big", signed=True)


def _header(data: bytes, pos: int, tag: int) -> tuple[int, int]:
    """(content start, content end) of the element at `pos`, which must carry `tag` (no
    minimality checks: the input is our own signed DER; `split_certs` checks the shape)."""
    if data[pos] != tag:
        raise DerError(f"expected tag 0x{tag:02x} at {pos}, found 0x{data[pos]:02x}")
    first = data[pos + 1]
    if first < 0x80:
        return pos + 2, pos + 2 + first
    count = first & 0x7F
    start = pos + 2 + count
    return start, start + int.from_bytes(data[pos + 2:start], "big")


def _basic_content(der: bytes) -> tuple[int, int]:
    """(start, end) of the BasicOCSPResponse's content inside an OCSPResponse."""
    start, end = _header(der, 0, 0x30)
    if end != len(der) or der[start:start + 3] != _STATUS:
        raise DerError("not a successful OCSPResponse")
    start, _ = _header(der, start + 3, 0xA0)  # responseBytes [0] EXPLICIT
    start, _ = _header(der, start, 0x30)  # ResponseBytes
    if der[start:start + len(BASIC_RESPONSE_TYPE)] != BASIC_RESPONSE_TYPE:
        raise DerError("responseType is not id-pkix-ocsp-basic")
    start, _ = _header(der, start + len(BASIC_RESPONSE_TYPE), 0x04)
    start, end = _header(der, start, 0x30)  # BasicOCSPResponse
    if end != len(der):
        raise DerError("trailing octets after the BasicOCSPResponse")
    return start, end


def _heads(stem: bytes, block_len: int) -> tuple[bytes, bytes]:
    """(the stem's octets before the BasicOCSPResponse content, the full response's octets before
    it with a certs element of `block_len` octets appended to that content)."""
    start, end = _basic_content(stem)
    basic_len = end - start + block_len
    basic_head = b"\x30" + der_length(basic_len)
    octets_len = len(basic_head) + basic_len
    octets_head = b"\x04" + der_length(octets_len)
    bytes_len = len(BASIC_RESPONSE_TYPE) + len(octets_head) + octets_len
    bytes_head = b"\x30" + der_length(bytes_len)
    explicit_len = len(bytes_head) + bytes_len
    explicit_head = b"\xa0" + der_length(explicit_len)
    outer_len = len(_STATUS) + len(explicit_head) + explicit_len
    full_head = b"".join((b"\x30", der_length(outer_len), _STATUS, explicit_head, bytes_head,
                          BASIC_RESPONSE_TYPE, octets_head, basic_head))
    return stem[:start], full_head


# (stem length, certs element length) -> _heads. The head octets are a function of the lengths
# alone (each enclosing length follows from the content's, and a longer stem has a longer
# content), so responses of one issuer share a few dozen entries; each use checks the stem's head.
_HEADS: dict[tuple[int, int], tuple[bytes, bytes]] = {}
_HEADS_MAX = 4096


def splice_certs(stem: bytes, block: bytes) -> bytes:
    """The full OCSPResponse: `stem` (stored without certs) with the `certs` element `block`
    appended to its BasicOCSPResponse, and the five enclosing lengths rewritten. The responder's
    miss path: a dictionary lookup, a prefix check and one join."""
    key = (len(stem), len(block))
    heads = _HEADS.get(key)
    if heads is None:
        if len(_HEADS) >= _HEADS_MAX:
            _HEADS.clear()
        heads = _HEADS[key] = _heads(stem, len(block))
    stem_head, full_head = heads
    if not stem.startswith(stem_head):
        stem_head, full_head = _heads(stem, len(block))  # raises unless a well-formed stem
    return b"".join((full_head, memoryview(stem)[len(stem_head):], block))


def split_certs(der: bytes) -> tuple[bytes, bytes | None]:
    """(stem, certs element) of a full OCSPResponse; (der, None) when it carries no certs.
    `splice_certs(stem, block) == der` holds for whatever this returns (checked here)."""
    start, end = _basic_content(der)
    pos = start
    for tag in (0x30, 0x30, 0x03):  # tbsResponseData, signatureAlgorithm, signature
        pos = _header(der, pos, tag)[1]
    if pos == end:
        return der, None
    block = der[pos:end]
    if _header(der, pos, _CERTS_TAG)[1] != end:
        raise DerError("unexpected octets after the certs field")
    basic = der[start:pos]
    stem_basic = b"\x30" + der_length(len(basic)) + basic
    octets = b"\x04" + der_length(len(stem_basic)) + stem_basic
    body = der_sequence(BASIC_RESPONSE_TYPE + octets)
    stem = der_sequence(_STATUS + tlv(0xA0, body))
    if splice_certs(stem, block) != der:
        raise DerError("the response does not round-trip without its certs")
    return stem, block
