"""Tiny DER helpers: an encoder for the few types OCSP and CRLs need, and a strict TLV reader.

Everything here is pure and small on purpose; the codecs in this package build whole structures by
concatenating the byte strings these functions return, which is both fast and easy to check against
X.690 by eye.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_ENUMERATED = 0x0A
TAG_SEQUENCE = 0x30

DER_NULL = b"\x05\x00"

# UTCTime covers 1950..2049 only (RFC 5280 §4.1.2.5, §5.1.2.4).
_UTC_TIME_FIRST_YEAR = 1950
_UTC_TIME_LAST_YEAR = 2049


class DerError(ValueError):
    """Input is not strict DER (or not the structure we expected)."""


# --- encoding ------------------------------------------------------------------------------------


def der_length(n: int) -> bytes:
    """Definite-length octets, short form below 128, minimal long form otherwise."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, content: bytes) -> bytes:
    """One element: identifier octet (low tag numbers only), length, content."""
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    return bytes((tag,)) + der_length(n) + content


def integer_content(value: int) -> bytes:
    """Minimal two's-complement content octets of an INTEGER (X.690 §8.3.2)."""
    length = (value if value >= 0 else ~value).bit_length() // 8 + 1
    return value.to_bytes(length, "big", signed=True)


def der_integer(value: int) -> bytes:
    return tlv(TAG_INTEGER, integer_content(value))


def der_enumerated(value: int) -> bytes:
    return tlv(TAG_ENUMERATED, integer_content(value))


@lru_cache(maxsize=256)
def der_oid(dotted: str) -> bytes:
    """OBJECT IDENTIFIER TLV from dotted notation, e.g. "1.3.6.1.5.5.7.48.1.1"."""
    arcs = [int(part) for part in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40) or min(arcs) < 0:
        raise ValueError(f"invalid OID {dotted!r}")
    content = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        content.extend(reversed(chunk))
    return tlv(TAG_OID, bytes(content))


def der_octet_string(content: bytes) -> bytes:
    return tlv(TAG_OCTET_STRING, content)


def der_bit_string(content: bytes) -> bytes:
    """BIT STRING of whole octets (unused-bits octet 0), as used for signatures and keys."""
    return tlv(TAG_BIT_STRING, b"\x00" + content)


def der_sequence(*parts: bytes) -> bytes:
    return tlv(TAG_SEQUENCE, b"".join(parts))


def explicit(number: int, content: bytes) -> bytes:
    """[number] EXPLICIT: constructed context tag wrapping a complete element."""
    return tlv(0xA0 | number, content)


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is UTC:
        return dt
    if dt.tzinfo is None:
        # A naive datetime is a bug upstream (clocks are UTC-aware): refuse rather than guess.
        raise ValueError("DER times need a timezone-aware datetime")
    return dt.astimezone(UTC)


def generalized_time(dt: datetime) -> bytes:
    """GeneralizedTime TLV `YYYYMMDDHHMMSSZ`: UTC, whole seconds (fractions truncated)."""
    t = _utc(dt)
    # bytes %-formatting: this runs several times per pre-signed response and per CRL entry.
    return b"\x18\x0f%04d%02d%02d%02d%02d%02dZ" % (
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
    )


def utc_time(dt: datetime) -> bytes:
    """UTCTime TLV `YYMMDDHHMMSSZ`; only valid for 1950..2049."""
    t = _utc(dt)
    if not _UTC_TIME_FIRST_YEAR <= t.year <= _UTC_TIME_LAST_YEAR:
        raise ValueError(f"UTCTime cannot hold year {t.year}")
    return b"\x17\x0d%02d%02d%02d%02d%02d%02dZ" % (
        t.year % 100,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
    )


def utc_or_generalized_time(dt: datetime) -> bytes:
    """X.509 `Time`: UTCTime through 2049, GeneralizedTime otherwise (RFC 5280 §5.1.2.4)."""
    year = _utc(dt).year
    if _UTC_TIME_FIRST_YEAR <= year <= _UTC_TIME_LAST_YEAR:
        return utc_time(dt)
    return generalized_time(dt)


# --- strict reading ------------------------------------------------------------------------------


def read_tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Read the element at `pos` (bounded by `end`): return (tag, content_start, content_end).

    Strict DER: low tag numbers only, definite minimal lengths; indefinite lengths (BER) and
    elements running past `end` raise DerError.
    """
    if pos + 2 > end:
        raise DerError("truncated element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("high tag numbers are not used in OCSP")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DerError("indefinite length (BER) is not DER")
    else:
        count = first & 0x7F
        if count > 4 or pos + count > end:
            raise DerError("bad length octets")
        if data[pos] == 0:
            raise DerError("non-minimal length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80:
            raise DerError("non-minimal length")
        pos += count
    if pos + length > end:
        raise DerError("element runs past its container")
    return tag, pos, pos + length


def expect(data: bytes, pos: int, end: int, tag: int) -> tuple[int, int]:
    """Read an element that must carry `tag`; return (content_start, content_end)."""
    got, start, stop = read_tlv(data, pos, end)
    if got != tag:
        raise DerError(f"expected tag 0x{tag:02x}, found 0x{got:02x}")
    return start, stop


def decode_integer(content: bytes) -> int:
    """INTEGER value; non-minimal padding is tolerated (callers keep raw bytes when it matters)."""
    if not content:
        raise DerError("empty INTEGER")
    return int.from_bytes(content, "big", signed=True)
