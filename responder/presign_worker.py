"""The process-pool side of the presigner: turn (serial, status, times) rows into signed DER.

Workers are separate processes so that signing uses every core the presigner is given. What
crosses the process boundary is kept small on purpose: an `IssuerSigning` description (paths and
public certificates, a few hundred bytes), one `ResponseTimes` per chunk, a list of `CertRow`
tuples going in and DER bytes coming back. Each worker loads an issuer's key from its file (or
logs in to the HSM: the spec carries the pkcs11: URI, never a session) once and keeps the encoded
template for the rest of its life (`_issuer_templates` is cached per process).

The DER itself comes from `revoc.der.ocsp_batch.PresignTemplate`, the batch fast path. A delegated
responder's certificate is left out of what workers return: rows are stored without it
(`ocsp_responses.certs_id`, revoc/der/ocsp_certs.py) and the responder splices it back in.
`sign_rows` is what the presigner calls: one row the encoder cannot handle (a time it cannot
represent, a reason code it does not know) fails alone and is reported back with its error; every
other row of the chunk is signed.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from revoc.der.ocsp import cert_id_prefix, responder_key_hash
from revoc.der.ocsp_batch import CertRow, PresignTemplate, ResponseTimes
from revoc.der.ocsp_certs import certs_block
from revoc.model import HashAlgorithm
from revoc.signing import Signer, open_signer, subject_public_key_bits


@dataclass(frozen=True, slots=True)
class IssuerSigning:
    """Everything a worker needs to sign for one issuer; hashable, so it keys the worker cache.

    `key_mtime_ns` is part of the key on purpose: a key file replaced in place (rotation) gives a
    new cache entry instead of signing on with the old key.
    """

    issuer_id: int
    issuer_subject_der: bytes
    issuer_cert_der: bytes
    key_path: str  # a PEM file, or a pkcs11: URI (each worker opens its own HSM session)
    key_mtime_ns: int  # 0 for a pkcs11: URI
    # Delegated responder certificate (embedded in `certs`), or None when the CA key signs.
    responder_cert_der: bytes | None
    hash_algorithms: tuple[HashAlgorithm, ...]
    rsa_pss: bool = False

    def certs_block(self) -> bytes | None:
        """The certs element spliced into every response of this issuer (None: the CA signs)."""
        return None if self.responder_cert_der is None else certs_block([self.responder_cert_der])


@dataclass(frozen=True, slots=True)
class IssuerTemplates:
    template: PresignTemplate
    prefixes: tuple[bytes, ...]


def build_issuer_templates(spec: IssuerSigning, signer: Signer | None = None) -> IssuerTemplates:
    """Template and CertID prefixes for one issuer; loads the key unless a signer is given."""
    signer = signer or open_signer(spec.key_path, rsa_pss=spec.rsa_pss)
    issuer_cert = x509.load_der_x509_certificate(spec.issuer_cert_der)
    if spec.responder_cert_der is not None:
        responder = x509.load_der_x509_certificate(spec.responder_cert_der)
    else:
        responder = issuer_cert
    # Stems: no certs field. The delegated responder's certificate (OCSP-SIGNER-8) is stored once
    # in responder_certs and spliced in when served; when the CA signs there is none to add.
    template = PresignTemplate(signer=signer, responder_key_hash=responder_key_hash(responder))
    key_bits = subject_public_key_bits(issuer_cert)
    prefixes = tuple(
        cert_id_prefix(alg, spec.issuer_subject_der, key_bits) for alg in spec.hash_algorithms
    )
    return IssuerTemplates(template=template, prefixes=prefixes)


@functools.lru_cache(maxsize=64)
def _issuer_templates(spec: IssuerSigning) -> IssuerTemplates:
    # Per worker process: the key file is read once per (issuer, key file version).
    return build_issuer_templates(spec)


# A good row any signer and encoder can sign: tells a bad row from a broken signer.
_PROBE: CertRow = (b"\x01", None, None, None)


@dataclass(frozen=True, slots=True)
class SignedRows:
    """What `sign_rows` returns: DER stems (no certs field) for the rows that encoded (row-major
    over the hash algorithms, in input order) and (index into the input, error text) for the
    others."""

    ders: list[bytes]
    failures: list[tuple[int, str]]


def sign_rows(spec: IssuerSigning, times: ResponseTimes, rows: Sequence[CertRow]) -> SignedRows:
    """Pool entry point: DER responses for `rows`; a row that raises is left out and reported.

    The whole chunk is tried first (the fast path); only when it raises is each row signed on
    its own to find the culprits. What is no row's fault raises instead: a key that does not
    load, or a signer or times that fail even for a plain good row (`_PROBE`), so a broken key
    fails the round (retried) rather than quarantining every certificate.
    """
    templates = _issuer_templates(spec)
    build = templates.template.build_chunk
    try:
        return SignedRows(build(templates.prefixes, rows, times), [])
    except Exception:  # any encoder failure: isolated row by row below
        build(templates.prefixes, [_PROBE], times)  # raises when no row can be signed
    ders: list[bytes] = []
    failures: list[tuple[int, str]] = []
    for index, row in enumerate(rows):
        try:
            ders += build(templates.prefixes, [row], times)
        except Exception as exc:  # reported; the presigner quarantines
            failures.append((index, f"{type(exc).__name__}: {exc}"))
    return SignedRows(ders, failures)


def warm_up() -> None:
    """Run once in each new worker so the first real chunk does not pay for imports.

    Also: ignore SIGINT. A terminal's Ctrl-C reaches the whole process group, workers included;
    the parent stops them in order, and a worker's own KeyboardInterrupt would only print a
    traceback.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
