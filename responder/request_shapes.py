"""OCSP requests parsed by shape: a request that differs from one parsed before only in its serial
number's octets is not walked again.

One client library sends one shape: the same CertID hash, issuer hashes and encoding, no
extensions, only the serial changes (a cold responder parses a request per miss, about 4 us of
its CPU). When `parse_ocsp_request` (revoc/der/ocsp_request.py) has parsed a request with one
CertID, no nonce, no extensions and no signature, so that the serialNumber's contents are the
request's last octets, `RequestShapes` remembers its length and everything before those octets.
A request of the same length that starts with the same octets has the same tags, lengths, hash
algorithm and issuer hashes at the same places: its strict parse would take the same steps and
differ only in the serial, read from its last octets (the same length, so the same size checks
hold). Anything else is parsed in full. At most one shape per request length, at most
`MAX_SHAPES` lengths.
"""

from __future__ import annotations

from revoc.der.asn1 import expect, read_tlv
from revoc.der.ocsp import CertIdRequest, OcspRequest, parse_ocsp_request

MAX_SHAPES = 64


class _Shape:
    __slots__ = ("cert_id_start", "hash_algorithm", "issuer_key_hash", "issuer_name_hash",
                 "prefix", "serial_start")

    def __init__(self, der: bytes, cert_id: CertIdRequest, serial_start: int) -> None:
        self.prefix = der[:serial_start]
        self.serial_start = serial_start
        self.cert_id_start = len(der) - len(cert_id.raw)
        self.hash_algorithm = cert_id.hash_algorithm
        self.issuer_name_hash = cert_id.issuer_name_hash
        self.issuer_key_hash = cert_id.issuer_key_hash


class RequestShapes:
    """`parse`: `parse_ocsp_request` with the shapes of requests it parsed remembered."""

    __slots__ = ("_by_length",)

    def __init__(self) -> None:
        self._by_length: dict[int, _Shape] = {}

    def parse(self, der: bytes) -> OcspRequest:
        """What `parse_ocsp_request(der)` returns (or raises)."""
        shape = self._by_length.get(len(der))
        if shape is not None and der.startswith(shape.prefix):
            return OcspRequest(cert_ids=(CertIdRequest(
                raw=der[shape.cert_id_start:],
                hash_algorithm=shape.hash_algorithm,
                issuer_name_hash=shape.issuer_name_hash,
                issuer_key_hash=shape.issuer_key_hash,
                serial=int.from_bytes(der[shape.serial_start:], "big", signed=True)),),
                nonce=None)
        request = parse_ocsp_request(der)
        if len(request.cert_ids) == 1 and request.nonce is None:
            self._learn(bytes(der), request.cert_ids[0])
        return request

    def _learn(self, der: bytes, cert_id: CertIdRequest) -> None:
        raw = cert_id.raw
        if not der.endswith(raw):
            return  # extensions or a signature after the CertID
        # The serialNumber's contents inside the (already validated) CertID.
        size = len(raw)
        _tag, start, end = read_tlv(raw, 0, size)
        _a, pos = expect(raw, start, end, 0x30)
        _n, pos = expect(raw, pos, end, 0x04)
        _k, pos = expect(raw, pos, end, 0x04)
        serial_start, serial_end = expect(raw, pos, end, 0x02)
        if serial_end != size:
            return
        shapes = self._by_length
        if len(shapes) >= MAX_SHAPES and len(der) not in shapes:
            shapes.clear()
        shapes[len(der)] = _Shape(der, cert_id, len(der) - size + serial_start)
