"""CRL build+sign benchmark: revoc's streaming assembler vs cryptography's builder (not a test).

For 10k, 100k and 1M revoked rows in PostgreSQL (loaded with COPY), each measurement runs in a
fresh subprocess so its peak RSS (ru_maxrss) is its own:

- ours: COPY of the pre-encoded entries (hex, decoded per chunk in C) into one buffer,
  one signature, the final DER as bytes — what `revoc publish` does for a full CRL, reading from
  PostgreSQL included; the relying-party check (re-parse + verify) is timed separately.
- cryptography: the same rows fetched from PostgreSQL, turned into RevokedCertificate objects
  and given to CertificateRevocationListBuilder's constructor (not chained
  add_revoked_certificate, which is quadratic), then signed.

    REVOC_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test python bench/crl_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crl_publisher.builder import CrlAssembler, CrlKind, CrlParams  # noqa: E402
from crl_publisher.publisher import (  # noqa: E402
    Scope,
    check_crl,
    stream_full_entries,
)
from revoc import db  # noqa: E402
from revoc.der.asn1 import integer_content  # noqa: E402
from revoc.der.crl import encode_crl_entry  # noqa: E402
from revoc.model import Issuer, Profile, Reason  # noqa: E402
from revoc.signing import FileKeySigner  # noqa: E402

SIZES = (10_000, 100_000, 1_000_000)
NOW = datetime(2026, 3, 1, tzinfo=UTC)
KEY_PATH = Path("/tmp/revoc-crl-bench.key")
REASONS = [Reason.unspecified, Reason.keyCompromise, Reason.superseded,
           Reason.cessationOfOperation]


_FLAGS = {int(Reason.keyCompromise): x509.ReasonFlags.key_compromise,
          int(Reason.superseded): x509.ReasonFlags.superseded,
          int(Reason.cessationOfOperation): x509.ReasonFlags.cessation_of_operation}


def _bench_dsn(server_dsn: str) -> str:
    """A database of its own (`revoc_bench`) on the given server, created when missing."""
    from urllib.parse import urlsplit, urlunsplit

    async def create() -> None:
        conn = await asyncpg.connect(server_dsn)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'revoc_bench'"):
                await conn.execute("CREATE DATABASE revoc_bench")
        finally:
            await conn.close()

    asyncio.run(create())
    return urlunsplit(urlsplit(server_dsn)._replace(path="/revoc_bench"))


def _rss_mb() -> float:
    """Peak RSS of this process (VmHWM: unlike ru_maxrss it does not inherit the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    from cryptography.hazmat.primitives import serialization

    if KEY_PATH.exists():
        key = serialization.load_pem_private_key(KEY_PATH.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        fd = os.open(KEY_PATH, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=900))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


async def _load(dsn: str, n: int) -> int:
    """A fresh issuer with n revoked certificates; returns its id."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from revoc.queries import queries

    _key, cert = _ca()
    conn = await asyncpg.connect(dsn)
    try:
        await db.upgrade(conn)
        name = f"bench{n}"
        old = await conn.fetchval("SELECT id FROM issuers WHERE name = $1", name)
        if old is not None:
            count = await conn.fetchval(
                "SELECT count(*) FROM certificates WHERE issuer_id = $1", old)
            if count == n:
                return int(old)
            await conn.execute("DELETE FROM crls WHERE issuer_id = $1", old)
            await conn.execute("DELETE FROM certificates WHERE issuer_id = $1", old)
            await conn.execute("DELETE FROM issuers WHERE id = $1", old)
        subject = cert.subject.public_bytes()
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        issuer_id: int = await conn.fetchval(
            queries()["issuer_insert"], name, cert.public_bytes(Encoding.DER), subject, ski,
            *([b"\x00" * 20] * 8), str(KEY_PATH), None, None, 0, Profile.PRIVATE.value)
        records = []
        for i in range(n):
            serial = 0x1000_0000_0000_0000 + i * 7919
            revoked_at = NOW - timedelta(seconds=i)
            reason = REASONS[i % len(REASONS)]
            records.append((issuer_id, integer_content(serial), NOW + timedelta(days=365),
                            "revoked", revoked_at, int(reason),
                            encode_crl_entry(serial, revoked_at, reason)))
        await conn.copy_records_to_table(
            "certificates", records=records,
            columns=["issuer_id", "serial", "not_after", "status", "revoked_at", "reason",
                     "crl_entry"])
        await conn.execute("ANALYZE certificates")
        return issuer_id
    finally:
        await conn.close()


def _issuer(issuer_id: int) -> Issuer:
    _key, cert = _ca()
    return Issuer(id=issuer_id, name="bench", cert_der=cert.public_bytes(
        __import__("cryptography.hazmat.primitives.serialization",
                   fromlist=["Encoding"]).Encoding.DER),
        subject_der=cert.subject.public_bytes(),
        key_id=cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest,
        name_hashes={}, key_hashes={}, key_path=str(KEY_PATH), ocsp_cert_der=None,
        ocsp_key_path=None, crl_shards=0, profile=Profile.PRIVATE)


async def measure_ours(dsn: str, issuer_id: int) -> dict[str, Any]:
    issuer = _issuer(issuer_id)
    signer = FileKeySigner.from_file(KEY_PATH)
    conn = await asyncpg.connect(dsn)
    base_rss = _rss_mb()
    try:
        started = time.perf_counter()
        async with conn.transaction(isolation="repeatable_read"):
            scope = Scope(issuer, -1)
            cutoff = datetime(1, 1, 1, tzinfo=UTC)
            params = CrlParams(CrlKind.FULL, issuer.subject_der, issuer.key_id,
                               time.time_ns(), NOW, NOW + timedelta(days=7))
            assembler = CrlAssembler(params, signer.algorithm_identifier)
            count = await stream_full_entries(conn, scope, cutoff, assembler)
            der = assembler.sign(signer)
        build = time.perf_counter() - started
        rss_build = _rss_mb()
        started = time.perf_counter()
        check_crl(der, ca_public_key=signer.public_key,  # type: ignore[arg-type]
                  subject_der=issuer.subject_der, number=params.number, above=None,
                  entries=count, base_number=None)
        check = time.perf_counter() - started
    finally:
        await conn.close()
    return {"seconds": build, "check_seconds": check, "bytes": len(der), "entries": count,
            "rss_mb": rss_build, "base_rss_mb": base_rss, "rss_after_check_mb": _rss_mb()}


async def measure_cryptography(dsn: str, issuer_id: int) -> dict[str, Any]:
    key, cert = _ca()
    conn = await asyncpg.connect(dsn)
    base_rss = _rss_mb()
    try:
        started = time.perf_counter()
        rows = await conn.fetch(
            "SELECT serial, revoked_at, reason FROM certificates "
            "WHERE issuer_id = $1 AND status = 'revoked' ORDER BY serial", issuer_id)
        fetched = time.perf_counter() - started
        revoked = []
        for row in rows:
            builder = (x509.RevokedCertificateBuilder()
                       .serial_number(int.from_bytes(row["serial"], "big", signed=True))
                       .revocation_date(row["revoked_at"]))
            if row["reason"]:
                builder = builder.add_extension(
                    x509.CRLReason(_FLAGS[row["reason"]]), critical=False)
            revoked.append(builder.build())
        crl = x509.CertificateRevocationListBuilder(
            issuer_name=cert.subject, last_update=NOW, next_update=NOW + timedelta(days=7),
            revoked_certificates=revoked,
            extensions=[x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(1))],
        ).sign(key, hashes.SHA256())
        der = crl.public_bytes(__import__("cryptography.hazmat.primitives.serialization",
                                          fromlist=["Encoding"]).Encoding.DER)
        total = time.perf_counter() - started
    finally:
        await conn.close()
    return {"seconds": total, "fetch_seconds": fetched, "bytes": len(der),
            "entries": len(revoked), "rss_mb": _rss_mb(), "base_rss_mb": base_rss}


def _child(args: argparse.Namespace) -> None:
    measure = measure_ours if args.measure == "ours" else measure_cryptography
    print(json.dumps(asyncio.run(measure(args.dsn, args.issuer_id))))


def _run_child(dsn: str, which: str, issuer_id: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--measure", which, "--dsn", dsn,
                          "--issuer-id", str(issuer_id)], capture_output=True, text=True,
                         check=False)
    if out.returncode:
        raise SystemExit(f"{which} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get(
        "REVOC_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--measure", choices=["ours", "cryptography"])
    parser.add_argument("--issuer-id", type=int)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.measure:
        _child(args)
        return
    print("| revoked rows | CRL bytes | ours: s (best of N) | ours: peak RSS MB (interp) | "
          "ours: check s | cryptography: s | cryptography: peak RSS MB | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    dsn = _bench_dsn(args.dsn)
    for n in (int(s) for s in args.sizes.split(",")):
        issuer_id = asyncio.run(_load(dsn, n))
        ours = min((_run_child(dsn, "ours", issuer_id) for _ in range(args.repeat)),
                   key=lambda r: r["seconds"])
        theirs = _run_child(dsn, "cryptography", issuer_id)
        print(f"| {n:,} | {ours['bytes']:,} | {ours['seconds']:.3f} | {ours['rss_mb']:.0f} "
              f"({ours['base_rss_mb']:.0f}) | {ours['check_seconds']:.3f} | "
              f"{theirs['seconds']:.2f} | {theirs['rss_mb']:.0f} | "
              f"{theirs['seconds'] / ours['seconds']:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
