"""`revoc audit` on a million certificates: time and peak memory.

Certificates (10% revoked) are made by SQL, two pre-signed responses each by the presigner's
batch encoder with a constant signature (the audit parses responses but does not verify their
signatures, so real ones would only slow the set-up), the full CRL by the real publisher. Then
`revoc audit` runs in a process of its own, so its peak memory is its own.

    PYTHONPATH=. python bench/audit_bench.py [N] [--keep]    # N certificates, default 1000000

REVOC_BENCH_SERVER (default postgresql://postgres@127.0.0.1:5432/test) names the server; the
database revoc_audit_bench is made afresh and dropped at the end unless --keep.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from crl_publisher.publisher import publish_round
from revoc import admin
from revoc.db import upgrade
from revoc.der.ocsp import cert_id_prefix, responder_key_hash
from revoc.der.ocsp_batch import PresignTemplate, ResponseTimes
from revoc.model import HashAlgorithm
from revoc.settings import Settings
from revoc.signing import FileKeySigner, subject_public_key_bits
from tests.pki import make_ca

N = int(next((a for a in sys.argv[1:] if a.isdigit()), 1_000_000))
SERVER = os.environ.get("REVOC_BENCH_SERVER", "postgresql://postgres@127.0.0.1:5432/test")
DB = "revoc_audit_bench"
WORK = Path("/tmp/revoc-audit-bench")
HASHES = (HashAlgorithm.SHA1, HashAlgorithm.SHA256)
COLUMNS = ("issuer_id", "serial", "hash_alg", "der", "produced_at", "this_update",
           "next_update", "cert_change_seq")


class ConstantSigner:
    """The real key's algorithm identifier, a constant (invalid) ECDSA signature."""

    def __init__(self, real: FileKeySigner) -> None:
        self.algorithm_identifier = real.algorithm_identifier
        self._real = real

    def public_key(self) -> Any:
        return self._real.public_key()

    def sign(self, data: bytes) -> bytes:
        return b"\x30\x06\x02\x01\x01\x02\x01\x01"


async def build(dsn: str) -> None:
    """Certificates, responses and the full CRL in the (empty) bench database."""
    conn = await asyncpg.connect(dsn)
    await upgrade(conn)
    (WORK / "pki").mkdir(parents=True, exist_ok=True)
    ca = make_ca("bench CA", "p256")
    cert_path, key_path = ca.write(WORK / "pki")
    await admin.add_issuer(conn, admin.IssuerRequest(name="bench", cert_path=str(cert_path),
                                                     key_path=str(key_path)))
    started = time.perf_counter()
    # Serials 0x01 + four octets: positive, minimal; every tenth revoked (unspecified: the CRL
    # entry carries no reasonCode) with its CRL entry.
    await conn.execute("""
        INSERT INTO certificates (issuer_id, serial, not_after)
        SELECT 1, '\\x01'::bytea || int4send(i), now() + interval '1 year'
          FROM generate_series(1, $1) i""", N)
    await conn.execute("""
        UPDATE certificates SET status = 'revoked', revoked_at = '2026-01-01Z', reason = 0,
               change_seq = nextval('cert_change_seq'),
               crl_entry = '\\x3016020501'::bytea || substring(serial from 2)
                           || '\\x170d'::bytea || convert_to('260101000000Z', 'UTF8')
         WHERE get_byte(serial, 4) % 10 = 0""")
    await conn.execute("UPDATE certificates SET changed_at = changed_at - interval '1 hour'")
    print(f"certificates: {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    template = PresignTemplate(signer=ConstantSigner(FileKeySigner(ca.key)),
                               responder_key_hash=responder_key_hash(ca.cert))
    prefixes = [cert_id_prefix(a, ca.cert.subject.public_bytes(),
                               subject_public_key_bits(ca.cert)) for a in HASHES]
    now = datetime.now(UTC).replace(microsecond=0)
    later = now + timedelta(days=4)
    times = ResponseTimes(now, now, later)
    revoked_at = datetime(2026, 1, 1, tzinfo=UTC)
    after = b""
    while True:
        rows = await conn.fetch("SELECT serial, status, change_seq FROM certificates"
                                " WHERE serial > $1 ORDER BY serial LIMIT 50000", after)
        if not rows:
            break
        after = rows[-1]["serial"]
        revoked = [r["status"] == "revoked" for r in rows]
        ders = template.build_chunk(
            prefixes, [(r["serial"], revoked_at if gone else None, 0 if gone else None, None)
                       for r, gone in zip(rows, revoked, strict=True)], times)
        records = [(1, r["serial"], alg.value, ders[len(HASHES) * i + h], now, now, later,
                    r["change_seq"])
                   for i, r in enumerate(rows) for h, alg in enumerate(HASHES)]
        await conn.copy_records_to_table("ocsp_responses", records=records, columns=COLUMNS)
    print(f"responses: {time.perf_counter() - started:.1f} s", flush=True)
    await conn.execute("VACUUM ANALYZE")
    await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    report = await publish_round(pool, Settings(crl_out=WORK / "out"))
    await pool.close()
    assert report.ok, report.failures


def run_audit(dsn: str) -> tuple[int, int, str]:
    """`revoc audit` in a child process: exit status, its own peak RSS (KiB), its output."""
    with subprocess.Popen([sys.executable, "-m", "revoc.cli", "audit", "--database-url", dsn],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as child:
        assert child.stdout is not None
        output = child.stdout.read().decode()
        _pid, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_maxrss, output


async def main() -> None:
    dsn = SERVER.rsplit("/", 1)[0] + "/" + DB
    if "--build" in sys.argv:
        await build(dsn)
        return
    server = await asyncpg.connect(SERVER)
    await server.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    await server.execute(f'CREATE DATABASE "{DB}"')
    await server.close()
    try:
        # The set-up in a process of its own: a child forked from a big process would count the
        # parent's pages in its peak RSS until it execs.
        await asyncio.to_thread(subprocess.run, [sys.executable, __file__, "--build", str(N)],
                                check=True)
        started = time.perf_counter()
        code, peak, output = await asyncio.to_thread(run_audit, dsn)
        seconds = time.perf_counter() - started
        print(f"revoc audit: exit {code}, {seconds:.1f} s, peak RSS {peak / 1024:.0f} MB")
        print(output.strip()[:2000])
    finally:
        if "--keep" not in sys.argv:
            server = await asyncpg.connect(SERVER)
            await server.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
            await server.close()


if __name__ == "__main__":
    asyncio.run(main())
