"""The process-pool side of the presigner: turn (serial, status, times) rows into signed DER.

Workers are separate processes so that signing uses every core the presigner is given. What
crosses the process boundary is kept small on purpose: an `IssuerSigning` description (paths and
public certificates, a few hundred bytes), one `ResponseTimes` per chunk, a list of `CertRow`
tuples going in and DER bytes coming back. Each worker loads an issuer's key from its file once and
keeps the encoded template for the rest of its life (`_issuer_templates` is cached per process).

The DER itself comes from `revoc.der.ocsp_batch.PresignTemplate`, the batch fast path.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from revoc.der.ocsp import cert_id_prefix, responder_key_hash
from revoc.der.ocsp_batch import CertRow, PresignTemplate, ResponseTimes
from revoc.model import HashAlgorithm
from revoc.signing import FileKeySigner, Signer, subject_public_key_bits


@dataclass(frozen=True, slots=True)
class IssuerSigning:
    """Everything a worker needs to sign for one issuer; hashable, so it keys the worker cache.

    `key_mtime_ns` is part of the key on purpose: a key file replaced in place (rotation) gives a
    new cache entry instead of signing on with the old key.
    """

    issuer_id: int
    issuer_subject_der: bytes
    issuer_cert_der: bytes
    key_path: str
    key_mtime_ns: int
    # Delegated responder certificate (embedded in `certs`), or None when the CA key signs.
    responder_cert_der: bytes | None
    hash_algorithms: tuple[HashAlgorithm, ...]


@dataclass(frozen=True, slots=True)
class IssuerTemplates:
    template: PresignTemplate
    prefixes: tuple[bytes, ...]


def build_issuer_templates(spec: IssuerSigning, signer: Signer | None = None) -> IssuerTemplates:
    """Template and CertID prefixes for one issuer; loads the key unless a signer is given."""
    signer = signer or FileKeySigner.from_file(spec.key_path)
    issuer_cert = x509.load_der_x509_certificate(spec.issuer_cert_der)
    if spec.responder_cert_der is not None:
        responder = x509.load_der_x509_certificate(spec.responder_cert_der)
        certs: tuple[bytes, ...] = (spec.responder_cert_der,)
    else:
        # The CA signs: certs stays empty, never the CA's own certificate (OCSP-SIGNER-8).
        responder = issuer_cert
        certs = ()
    template = PresignTemplate(
        signer=signer, responder_key_hash=responder_key_hash(responder), certs=certs
    )
    key_bits = subject_public_key_bits(issuer_cert)
    prefixes = tuple(
        cert_id_prefix(alg, spec.issuer_subject_der, key_bits) for alg in spec.hash_algorithms
    )
    return IssuerTemplates(template=template, prefixes=prefixes)


@functools.lru_cache(maxsize=64)
def _issuer_templates(spec: IssuerSigning) -> IssuerTemplates:
    # Per worker process: the key file is read once per (issuer, key file version).
    return build_issuer_templates(spec)


def sign_chunk(spec: IssuerSigning, times: ResponseTimes, rows: Sequence[CertRow]) -> list[bytes]:
    """Pool entry point: DER responses for `rows`, row-major over `spec.hash_algorithms`."""
    templates = _issuer_templates(spec)
    return templates.template.build_chunk(templates.prefixes, rows, times)


def warm_up() -> None:
    """Run once in each new worker so the first real chunk does not pay for imports.

    Also: ignore SIGINT. A terminal's Ctrl-C reaches the whole process group, workers included;
    the parent stops them in order, and a worker's own KeyboardInterrupt would only print a
    traceback.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
