"""SubjectPublicKeyInfo bits: what CertID issuerKeyHash and ResponderID byKey hash.

Pure (no I/O): a certificate, a public key object or DER SPKI in, the key's bit string out.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from revoc.der.asn1 import DerError, expect


def _spki_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def subject_public_key_bits(source: x509.Certificate | PublicKeyTypes | bytes) -> bytes:
    """Contents of the subjectPublicKey BIT STRING: no tag, length or unused-bits octet.

    This is what CertID issuerKeyHash and ResponderID byKey hash (RFC 6960 §4.1.1, §4.2.1;
    CONFORMANCE OCSP-REQ-3 — never the SKI extension). `source` may be a certificate, a public
    key object, or a DER SubjectPublicKeyInfo.
    """
    if isinstance(source, x509.Certificate):
        spki = _spki_der(source.public_key())
    elif isinstance(source, bytes | bytearray | memoryview):
        spki = bytes(source)
    else:
        spki = _spki_der(source)
    try:
        start, end = expect(spki, 0, len(spki), 0x30)
        if end != len(spki):
            raise DerError("trailing bytes after SubjectPublicKeyInfo")
        _alg_start, alg_end = expect(spki, start, end, 0x30)
        bits_start, bits_end = expect(spki, alg_end, end, 0x03)
    except DerError as exc:
        raise ValueError(f"not a SubjectPublicKeyInfo: {exc}") from exc
    if bits_end != end or bits_start == bits_end or spki[bits_start] != 0:
        raise ValueError("subjectPublicKey is not a whole-octet BIT STRING")
    return spki[bits_start + 1 : bits_end]
