"""responder/request_shapes.py: parsing by shape gives exactly what the strict parser gives.

Requests of every shape the parser accepts or refuses (serials of several lengths, padded
serials, each hash, nonces, several CertIDs, extensions, mutated bytes) go through one
`RequestShapes` in a seeded random order: each result, or the exception type, equals
`parse_ocsp_request`'s for the same bytes, and the shortcut is taken for repeated shapes.
"""

from __future__ import annotations

import random

import pytest

from responder import request_shapes
from responder.request_shapes import RequestShapes
from revoc.der.asn1 import der_integer, der_sequence, read_tlv
from revoc.der.ocsp import MalformedRequest, cert_id_der, encode_ocsp_request, parse_ocsp_request
from revoc.model import HashAlgorithm

NAME = der_sequence(b"\x31\x0b\x30\x09\x06\x03\x55\x04\x03\x0c\x02CA")
KEY = b"\x04" + bytes(range(64))


def outcome(parse: object, der: bytes) -> object:
    try:
        return parse(der)  # type: ignore[operator]
    except MalformedRequest:
        return MalformedRequest


def requests(rng: random.Random) -> list[bytes]:
    found: list[bytes] = []
    for _ in range(300):
        algorithm = rng.choice(list(HashAlgorithm))
        serial = rng.choice([rng.randrange(1, 256), rng.randrange(1, 1 << 64),
                             rng.randrange(1 << 150, 1 << 159), -rng.randrange(1, 1 << 40)])
        cert_id = cert_id_der(algorithm, NAME, KEY, serial)
        choice = rng.randrange(6)
        if choice == 0:
            der = encode_ocsp_request([cert_id], nonce=rng.randbytes(rng.randrange(1, 40)))
        elif choice == 1:
            der = encode_ocsp_request([cert_id, cert_id_der(algorithm, NAME, KEY, serial + 1)])
        elif choice == 2:  # padded serial: same value, another encoding
            body = der_integer(serial)
            padded = cert_id[:-len(body)] + b"\x02" + bytes([body[1] + 1]) + (
                b"\x00" if serial >= 0 else b"\xff") + body[2:]
            der = encode_ocsp_request([der_sequence(*_cert_id_parts(padded))])
        else:
            der = encode_ocsp_request([cert_id])
        if rng.random() < 0.3:  # mutate a byte, drop or add one
            mutated = bytearray(der)
            where = rng.randrange(len(mutated))
            action = rng.randrange(3)
            if action == 0:
                mutated[where] = rng.randrange(256)
            elif action == 1:
                del mutated[where]
            else:
                mutated.insert(where, rng.randrange(256))
            der = bytes(mutated)
        found.append(der)
    return found


def _cert_id_parts(cert_id_body: bytes) -> list[bytes]:
    """The elements inside a CertID whose outer header is stale (recomputed by the caller)."""
    _tag, start, _end = read_tlv(cert_id_body, 0, len(cert_id_body) + 1)
    parts = []
    pos = start
    while pos < len(cert_id_body):
        _tag, _c, stop = read_tlv(cert_id_body, pos, len(cert_id_body))
        parts.append(cert_id_body[pos:stop])
        pos = stop
    return parts


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shapes_parse_exactly_like_the_parser(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(request_shapes, "MAX_SHAPES", 16)  # exercise forgetting too
    rng = random.Random(seed)
    shapes = RequestShapes()
    shortcuts = 0
    calls = 0

    def counting(der: bytes) -> object:
        nonlocal calls
        calls += 1
        return parse_ocsp_request(der)

    monkeypatch.setattr(request_shapes, "parse_ocsp_request", counting)
    corpus = requests(rng)
    for der in rng.choices(corpus, k=2000):
        before = calls
        got = outcome(shapes.parse, der)
        shortcuts += calls == before
        assert got == outcome(parse_ocsp_request, der), der.hex()
    assert shortcuts > 100, shortcuts


def test_a_known_shape_with_another_serial() -> None:
    shapes = RequestShapes()
    first = encode_ocsp_request([cert_id_der(HashAlgorithm.SHA1, NAME, KEY, 0x1234)])
    second = encode_ocsp_request([cert_id_der(HashAlgorithm.SHA1, NAME, KEY, 0x4321)])
    assert shapes.parse(first) == parse_ocsp_request(first)
    request = shapes.parse(second)
    assert request == parse_ocsp_request(second)
    assert request.cert_ids[0].serial == 0x4321
    assert request.cert_ids[0].raw == second[len(second) - len(request.cert_ids[0].raw):]
    # Same length, another issuer key hash: not the shape, parsed in full (and equal).
    other = encode_ocsp_request([cert_id_der(HashAlgorithm.SHA1, NAME, KEY[::-1], 0x4321)])
    assert len(other) == len(second) and shapes.parse(other) == parse_ocsp_request(other)
