"""Sign an OCSP response and a CRL with any Signer through revoc's own encoders, then let outside
verifiers judge them: OpenSSL for the classical algorithms, cryptography's bundled OpenSSL for
ML-DSA (Debian's OpenSSL 3.0 does not know it), over the exact tbs bytes.

Shared by tests/test_algorithms.py (every algorithm) and tests/test_hsm.py (keys in SoftHSM2).
"""

from __future__ import annotations

import hashlib
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509 import ocsp as x509_ocsp

from crl_publisher.builder import CrlAssembler, CrlKind, CrlParams
from revoc.der.algorithms import ALG_RSA_PSS_SHA256
from revoc.der.crl import encode_crl_entry
from revoc.der.ocsp import SingleResponse, build_ocsp_response, cert_id_der, responder_key_hash
from revoc.model import CertStatus, HashAlgorithm, Reason
from revoc.signing import Signer, subject_public_key_bits
from tests.pki import Party, write_pem_certs

# Inside the test PKI's validity (tests/pki.py NOT_BEFORE..NOT_AFTER) and around now, so OpenSSL's
# freshness checks pass without a fixed clock.
NOW = datetime.now(UTC).replace(microsecond=0)


def sign_ocsp(ca: Party, signer: Signer, leaf: Party,
              hash_algorithm: HashAlgorithm = HashAlgorithm.SHA256) -> bytes:
    """A `good` response for `leaf`, signed by the CA's key through `signer`."""
    cert_id = cert_id_der(hash_algorithm, ca.cert.subject.public_bytes(),
                          subject_public_key_bits(ca.cert), leaf.cert.serial_number)
    single = SingleResponse(cert_id, CertStatus.GOOD, NOW - timedelta(hours=1),
                            NOW + timedelta(days=1))
    return build_ocsp_response([single], signer=signer,
                               responder_key_hash=responder_key_hash(ca.cert), produced_at=NOW)


def sign_crl(ca: Party, signer: Signer, revoked: list[int], number: int = 7) -> bytes:
    """A full CRL with the given serials revoked (keyCompromise)."""
    params = CrlParams(
        kind=CrlKind.FULL, issuer_name=ca.cert.subject.public_bytes(),
        key_id=ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest,
        number=number, this_update=NOW - timedelta(hours=1), next_update=NOW + timedelta(days=1))
    entries = [encode_crl_entry(serial, NOW - timedelta(hours=2), Reason.keyCompromise)
               for serial in sorted(revoked)]
    assembler = CrlAssembler(params, signer.algorithm_identifier)
    for entry in entries:
        assembler.add(entry)
    return assembler.sign(signer)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def openssl_ocsp(tmp: Path, ca: Party, leaf: Party, der: bytes,
                 hash_algorithm: HashAlgorithm = HashAlgorithm.SHA256) -> str:
    """`openssl ocsp -respin` output (stdout + stderr) for the leaf, CA as trust anchor."""
    resp = tmp / f"resp-{hashlib.sha256(der).hexdigest()[:12]}.der"
    resp.write_bytes(der)
    ca_pem = write_pem_certs(tmp / "ocsp-ca.pem", ca)
    leaf_pem = write_pem_certs(tmp / "ocsp-leaf.pem", leaf)
    done = _run("openssl", "ocsp", "-respin", str(resp), "-issuer", str(ca_pem),
                f"-{hash_algorithm.name.lower()}", "-cert", str(leaf_pem), "-CAfile", str(ca_pem),
                "-no_nonce")
    return done.stdout + done.stderr


def openssl_verify_with_crl(tmp: Path, ca: Party, leaf: Party, crl_der: bytes) -> str:
    """`openssl verify -crl_check` of the leaf against the CRL: error 8 = bad CRL signature."""
    crl = tmp / f"crl-{hashlib.sha256(crl_der).hexdigest()[:12]}.der"
    crl.write_bytes(crl_der)
    crl_pem = crl.with_suffix(".pem")
    converted = _run("openssl", "crl", "-inform", "DER", "-in", str(crl), "-out", str(crl_pem))
    assert converted.returncode == 0, converted.stderr
    ca_pem = write_pem_certs(tmp / "crl-ca.pem", ca)
    leaf_pem = write_pem_certs(tmp / "crl-leaf.pem", leaf)
    done = _run("openssl", "verify", "-crl_check", "-CAfile", str(ca_pem), "-CRLfile",
                str(crl_pem), str(leaf_pem))
    return done.stdout + done.stderr


def verify_with_cryptography(public_key: PublicKeyTypes, signature: bytes, tbs: bytes,
                             algorithm_identifier: bytes) -> None:
    """cryptography's own verifier (its bundled OpenSSL) over the exact tbs bytes; raises
    InvalidSignature."""
    if isinstance(public_key, mldsa.MLDSA44PublicKey | mldsa.MLDSA65PublicKey
                  | mldsa.MLDSA87PublicKey | ed25519.Ed25519PublicKey):
        public_key.verify(signature, tbs)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        digest = hashes.SHA384() if public_key.curve.name == "secp384r1" else hashes.SHA256()
        public_key.verify(signature, tbs, ec.ECDSA(digest))
    elif isinstance(public_key, rsa.RSAPublicKey):
        pad: padding.AsymmetricPadding = (
            padding.PSS(padding.MGF1(hashes.SHA256()), 32)
            if algorithm_identifier == ALG_RSA_PSS_SHA256 else padding.PKCS1v15())
        public_key.verify(signature, tbs, pad, hashes.SHA256())
    else:
        raise AssertionError(f"unexpected key {public_key!r}")


def ocsp_signature_parts(der: bytes) -> tuple[bytes, bytes]:
    """(signature, tbsResponseData DER) as cryptography parses them."""
    response = x509_ocsp.load_der_ocsp_response(der)
    return response.signature, response.tbs_response_bytes


def crl_signature_parts(der: bytes) -> tuple[bytes, bytes]:
    crl = x509.load_der_x509_crl(der)
    return crl.signature, crl.tbs_certlist_bytes
