"""Signature algorithms and HSM keys: sizes and signing rates (not a test).

Two tables, printed as Markdown:

1. Per algorithm (file keys): the DER size of a pre-signed `good` OCSP response (SHA-1 CertID,
   CA-signed, no certs: what a device receives), the size of an empty CRL and the bytes each
   revoked entry adds (entries are not signed one by one, so this does not depend on the
   algorithm), and pre-signed responses per second on one core (`PresignTemplate.build_chunk`,
   the presign workers' path, 256 certificates per chunk).
2. SoftHSM2 next to file keys of the same type, in the same run: OCSP responses per second and
   the time to sign a CRL of N entries (assembly + one signature).

Rounds are interleaved (A, B, A, B, ...) and the median is reported, so a shared machine slows
both sides alike; compare the ratios, not the absolute numbers.

    python bench/sign_bench.py [--seconds 1.0] [--rounds 5] [--crl-entries 100000]

The HSM table needs softhsm2 (softhsm2-util) and python-pkcs11 (the `hsm` extra); the bench makes
its own token in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402

from crl_publisher.builder import CrlKind, CrlParams, build_crl  # noqa: E402
from revoc.der.algorithms import NAMES  # noqa: E402
from revoc.der.crl import encode_crl_entry  # noqa: E402
from revoc.der.ocsp import (  # noqa: E402
    ResponseTemplate,
    SingleResponse,
    cert_id_der,
    cert_id_prefix,
    responder_key_hash,
)
from revoc.der.ocsp_batch import CertRow, PresignTemplate, ResponseTimes  # noqa: E402
from revoc.model import CertStatus, HashAlgorithm, Reason  # noqa: E402
from revoc.signing import FileKeySigner, Signer, subject_public_key_bits  # noqa: E402
from tests.pki import KeyType, Party, make_ca  # noqa: E402

NOW = datetime(2026, 6, 1, tzinfo=UTC)
CASES: list[tuple[str, KeyType, bool]] = [
    ("ECDSA P-256 / SHA-256", "p256", False),
    ("ECDSA P-384 / SHA-384", "p384", False),
    ("RSA-2048 PKCS#1 v1.5", "rsa2048", False),
    ("RSA-3072 PKCS#1 v1.5", "rsa3072", False),
    ("RSA-4096 PKCS#1 v1.5", "rsa4096", False),
    ("RSA-2048 PSS", "rsa2048", True),
    ("Ed25519", "ed25519", False),
    ("ML-DSA-44", "mldsa44", False),
    ("ML-DSA-65", "mldsa65", False),
    ("ML-DSA-87", "mldsa87", False),
]


def template_for(ca: Party, signer: Signer) -> tuple[ResponseTemplate, SingleResponse]:
    cert_id = cert_id_der(HashAlgorithm.SHA1, ca.cert.subject.public_bytes(),
                          subject_public_key_bits(ca.cert), 0x0123456789ABCDEF0123456789ABCDEF)
    single = SingleResponse(cert_id, CertStatus.GOOD, NOW, NOW + timedelta(days=4))
    return ResponseTemplate(signer=signer, responder_key_hash=responder_key_hash(ca.cert)), single


CHUNK = 256


def presign_rate(ca: Party, signer: Signer, seconds: float) -> float:
    """Pre-signed responses per second, one SHA-1 CertID per certificate, chunks of CHUNK."""
    template = PresignTemplate(signer=signer, responder_key_hash=responder_key_hash(ca.cert))
    prefixes = [cert_id_prefix(HashAlgorithm.SHA1, ca.cert.subject.public_bytes(),
                               subject_public_key_bits(ca.cert))]
    rows: list[CertRow] = [((0x4000_0000_0000_0000 + i).to_bytes(9, "big"), None, None)
                           for i in range(CHUNK)]
    times = ResponseTimes(NOW, NOW, NOW + timedelta(days=4))
    return CHUNK * rate(lambda: template.build_chunk(prefixes, rows, times), seconds, batch=1)


def crl(ca: Party, signer: Signer, entries: list[bytes]) -> bytes:
    from cryptography import x509

    params = CrlParams(
        kind=CrlKind.FULL, issuer_name=ca.cert.subject.public_bytes(),
        key_id=ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest,
        number=12345, this_update=NOW, next_update=NOW + timedelta(days=7))
    return build_crl(params, entries, signer)


def entries(n: int) -> list[bytes]:
    # 16-octet serials (typical random serials), keyCompromise: a realistic entry.
    base = 0x4000_0000_0000_0000_0000_0000_0000_0000
    return [encode_crl_entry(base + i, NOW - timedelta(days=1), Reason.keyCompromise)
            for i in range(n)]


def rate(work: Callable[[], object], seconds: float, batch: int = 8) -> float:
    """Calls per second of `work` for about `seconds`."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            work()
        count += batch
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def interleaved(works: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(rounds):
        for name, work in works.items():
            samples[name].append(work())
    return {name: statistics.median(values) for name, values in samples.items()}


def algorithms_table(args: argparse.Namespace) -> None:
    rows = []
    ten = entries(1000)
    works: dict[str, Callable[[], float]] = {}
    for label, key_type, pss in CASES:
        ca = make_ca(f"bench {label}", key_type)
        signer = FileKeySigner(ca.key, rsa_pss=pss)
        template, single = template_for(ca, signer)
        response = template.build(single, NOW)
        empty = crl(ca, signer, [])
        full = crl(ca, signer, ten)
        rows.append((label, NAMES[signer.algorithm_identifier], len(response), len(empty),
                     (len(full) - len(empty)) / len(ten)))
        works[label] = (lambda c=ca, g=signer: presign_rate(c, g, args.seconds))
    rates = interleaved(works, args.rounds)
    print("| algorithm | AlgorithmIdentifier | OCSP response (bytes) | empty CRL (bytes) "
          "| bytes per CRL entry | responses/s, one core | vs P-256 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    baseline = rates[CASES[0][0]]
    for label, alg, response_len, empty_len, per_entry in rows:
        print(f"| {label} | {alg} | {response_len} | {empty_len} | {per_entry:.0f} "
              f"| {rates[label]:,.0f} | {rates[label] / baseline:.2f} |")


def softhsm_token(directory: Path) -> tuple[dict[str, str], str] | None:
    module = next((p for p in ("/usr/lib/softhsm/libsofthsm2.so",
                               "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
                   if Path(p).exists()), None)
    if module is None or shutil.which("softhsm2-util") is None:
        return None
    (directory / "tokens").mkdir()
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\n"
                    "objectstore.backend = file\nlog.level = ERROR\n")
    env = {"SOFTHSM2_CONF": str(conf), "REVOC_PKCS11_MODULE": module,
           "REVOC_PKCS11_PIN": "1234"}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "bench", "--pin", "1234",
                    "--so-pin", "5678"], env={**os.environ, **env}, check=True,
                   capture_output=True)
    return env, "bench"


def hsm_table(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        token = softhsm_token(Path(tmp))
        if token is None:
            print("\n(SoftHSM2 not installed: no HSM table)")
            return
        env, label = token
        os.environ.update(env)
        from revoc.signing import open_signer

        works: dict[str, Callable[[], float]] = {}
        crl_works: dict[str, Callable[[], float]] = {}
        many = entries(args.crl_entries)
        kinds: list[tuple[str, KeyType]] = [("P-256", "p256"), ("RSA-2048", "rsa2048"),
                                            ("RSA-3072", "rsa3072")]
        for name, key_type in kinds:
            ca = make_ca(f"bench hsm {name}", key_type)
            path = Path(tmp) / f"{key_type}.p8"
            path.write_bytes(ca.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
            subprocess.run(["softhsm2-util", "--import", str(path), "--token", label, "--label",
                            key_type, "--id", f"{len(works) + 1:02x}", "--pin", "1234"],
                           env={**os.environ, **env}, check=True, capture_output=True)
            for where, signer in (("file", FileKeySigner(ca.key)),
                                  ("SoftHSM2", open_signer(
                                      f"pkcs11:token={label};object={key_type}"))):
                key = f"{name} {where}"
                works[key] = (lambda c=ca, g=signer: presign_rate(c, g, args.seconds))
                crl_works[key] = (lambda c=ca, g=signer: _timed(lambda: crl(c, g, many)))
        rates = interleaved(works, args.rounds)
        crl_times = interleaved(crl_works, args.rounds)
        print(f"\n| key | where | OCSP responses/s, one core | vs file | sign a CRL of "
              f"{args.crl_entries:,} entries (ms) | vs file |")
        print("|---|---|---:|---:|---:|---:|")
        for name, _key_type in kinds:
            for where in ("file", "SoftHSM2"):
                key, base = f"{name} {where}", f"{name} file"
                print(f"| {name} | {where} | {rates[key]:,.0f} | {rates[key] / rates[base]:.2f} "
                      f"| {crl_times[key] * 1000:.1f} "
                      f"| {crl_times[key] / crl_times[base]:.2f} |")


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per rate sample")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved samples (median)")
    parser.add_argument("--crl-entries", type=int, default=100_000)
    parser.add_argument("--only", choices=["algorithms", "hsm"], default=None)
    args = parser.parse_args()
    print(f"# sign_bench {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores "
          "(shared machine: compare ratios)\n")
    if args.only in (None, "algorithms"):
        algorithms_table(args)
    if args.only in (None, "hsm"):
        hsm_table(args)


if __name__ == "__main__":
    main()
