"""Every signature algorithm revoc signs OCSP responses and CRLs with (issue 14 point 2), each
judged by an outside verifier: OpenSSL (`openssl ocsp -respin`, `openssl verify -crl_check`) for
the classical ones, cryptography's bundled OpenSSL over the exact tbs bytes for ML-DSA (Debian's
OpenSSL 3.0 does not know it), and pkilint where it understands the algorithm.
CONFORMANCE OCSP-RESP-16/17, CRL-2, OCSP-REQ-2.
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509 import ocsp as x509_ocsp

from revoc.der.algorithms import NAMES
from revoc.model import HashAlgorithm
from revoc.signing import FileKeySigner
from tests.pki import KeyType, Party, cached_key, make_ca, make_leaf
from tests.sign_oracles import (
    crl_signature_parts,
    ocsp_signature_parts,
    openssl_ocsp,
    openssl_verify_with_crl,
    sign_crl,
    sign_ocsp,
    verify_with_cryptography,
)

# (key type, RSA-PSS) -> the AlgorithmIdentifier, byte for byte: BR §7.1.3.2 for RSA and ECDSA,
# RFC 8410 for Ed25519, the LAMPS ML-DSA profile (id-ml-dsa-44/65/87, parameters absent).
RSA_PKCS1 = "300d06092a864886f70d01010b0500"
RSA_PSS = ("304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a8648"
           "86f70d010108300d06096086480165030402010500a203020120")
CASES: dict[str, tuple[KeyType, bool, str]] = {
    "p256": ("p256", False, "300a06082a8648ce3d040302"),
    "p384": ("p384", False, "300a06082a8648ce3d040303"),
    "rsa2048": ("rsa2048", False, RSA_PKCS1),
    "rsa3072": ("rsa3072", False, RSA_PKCS1),
    "rsa4096": ("rsa4096", False, RSA_PKCS1),
    "rsa2048-pss": ("rsa2048", True, RSA_PSS),
    "rsa4096-pss": ("rsa4096", True, RSA_PSS),
    "ed25519": ("ed25519", False, "300506032b6570"),
    "mldsa44": ("mldsa44", False, "300b0609608648016503040311"),
    "mldsa65": ("mldsa65", False, "300b0609608648016503040312"),
    "mldsa87": ("mldsa87", False, "300b0609608648016503040313"),
}
CLASSICAL = [name for name in CASES if not name.startswith("mldsa")]
ML_DSA = [name for name in CASES if name.startswith("mldsa")]


@cache
def _pki(key_type: KeyType) -> tuple[Party, Party]:
    ca = make_ca(f"CA {key_type}", key=cached_key(key_type))
    return ca, make_leaf(ca, 0x1D2C3B4A)


def _signer(case: str) -> tuple[FileKeySigner, Party, Party]:
    key_type, pss, _alg = CASES[case]
    ca, leaf = _pki(key_type)
    return FileKeySigner(ca.key, rsa_pss=pss), ca, leaf


def _tamper(der: bytes, signature: bytes) -> bytes:
    """The same document with the signature's middle octet flipped."""
    at = der.rindex(signature) + len(signature) // 2
    return der[:at] + bytes([der[at] ^ 0x01]) + der[at + 1:]


@pytest.mark.parametrize("case", CASES)
def test_algorithm_identifier_is_byte_exact_OCSP_RESP_17(case: str) -> None:
    signer, _ca, _leaf = _signer(case)
    assert signer.algorithm_identifier.hex() == CASES[case][2]
    assert signer.algorithm_identifier in NAMES


@pytest.mark.parametrize("case", CLASSICAL)
def test_openssl_verifies_ocsp_response_and_crl_OCSP_RESP_16(case: str, tmp_path: Path) -> None:
    signer, ca, leaf = _signer(case)
    response = sign_ocsp(ca, signer, leaf)
    out = openssl_ocsp(tmp_path, ca, leaf, response)
    assert "Response verify OK" in out, out
    assert "ocsp-leaf.pem: good" in out, out
    crl = sign_crl(ca, signer, [0x99, 0x1D2C3B4B])
    out = openssl_verify_with_crl(tmp_path, ca, leaf, crl)
    assert out.strip().endswith(": OK"), out
    # The same bytes signed for the algorithm in the certificate's view too.
    assert x509.load_der_x509_crl(crl).is_signature_valid(ca.cert.public_key())


@pytest.mark.parametrize("case", ["p256", "rsa2048-pss", "ed25519"])
def test_openssl_rejects_a_tampered_signature(case: str, tmp_path: Path) -> None:
    """The oracle can fail: one flipped signature bit and OpenSSL refuses both documents."""
    signer, ca, leaf = _signer(case)
    response = sign_ocsp(ca, signer, leaf)
    out = openssl_ocsp(tmp_path, ca, leaf, _tamper(response, ocsp_signature_parts(response)[0]))
    assert "Response verify OK" not in out and "Response Verify Failure" in out, out
    crl = sign_crl(ca, signer, [0x99])
    out = openssl_verify_with_crl(tmp_path, ca, leaf, _tamper(crl, crl_signature_parts(crl)[0]))
    assert "CRL signature failure" in out, out


@pytest.mark.parametrize("case", ML_DSA)
def test_ml_dsa_verified_over_exact_tbs_bytes(case: str) -> None:
    """FIPS 204 pure ML-DSA: cryptography (OpenSSL 3.5+ inside) verifies what we signed, and a
    flipped bit fails; the OID is the LAMPS one."""
    signer, ca, leaf = _signer(case)
    public_key = ca.cert.public_key()
    response = sign_ocsp(ca, signer, leaf)
    parsed = x509_ocsp.load_der_ocsp_response(response)
    assert parsed.signature_algorithm_oid == ca.cert.signature_algorithm_oid
    signature, tbs = ocsp_signature_parts(response)
    verify_with_cryptography(public_key, signature, tbs, signer.algorithm_identifier)
    with pytest.raises(InvalidSignature):
        verify_with_cryptography(public_key, signature, tbs[:-1] + b"\x00",
                                 signer.algorithm_identifier)
    crl_der = sign_crl(ca, signer, [0x99])
    crl = x509.load_der_x509_crl(crl_der)
    assert crl.signature_algorithm_oid == ca.cert.signature_algorithm_oid
    assert crl.is_signature_valid(public_key)
    signature, tbs = crl_signature_parts(crl_der)
    verify_with_cryptography(public_key, signature, tbs, signer.algorithm_identifier)
    tampered = x509.load_der_x509_crl(_tamper(crl_der, signature))
    assert not tampered.is_signature_valid(public_key)


@pytest.mark.parametrize("case", ["p384", "rsa2048", "ed25519", "mldsa65"])
def test_pkilint_finds_nothing_OCSP_RESP_17(case: str, tmp_path: Path) -> None:
    """pkilint checks structure and the signature AlgorithmIdentifier (it knows the ML-DSA
    OIDs; it checks no signatures)."""
    signer, ca, leaf = _signer(case)
    response = tmp_path / "resp.der"
    response.write_bytes(sign_ocsp(ca, signer, leaf))
    crl = tmp_path / "crl.der"
    crl.write_bytes(sign_crl(ca, signer, [0x99]))
    for args in (["lint_ocsp_response", "lint", "-s", "WARNING", str(response)],
                 ["lint_crl", "lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", str(crl)]):
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, (args[0], done.stdout + done.stderr)


@pytest.mark.parametrize("hash_algorithm", [HashAlgorithm.SHA384, HashAlgorithm.SHA512])
@pytest.mark.parametrize("case", ["p384", "rsa3072"])
def test_cert_id_sha384_sha512_OCSP_REQ_2(case: str, hash_algorithm: HashAlgorithm,
                                         tmp_path: Path) -> None:
    signer, ca, leaf = _signer(case)
    response = sign_ocsp(ca, signer, leaf, hash_algorithm)
    out = openssl_ocsp(tmp_path, ca, leaf, response, hash_algorithm)
    assert "Response verify OK" in out and "ocsp-leaf.pem: good" in out, out
