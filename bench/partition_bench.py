"""Hot queries on plain tables against the same data hash-partitioned (issue 15 point 5).

Two throwaway databases on the server of REVOC_DATABASE_URL with the same rows (N certificates
of one issuer, 1% revoked, two stored responses each, a queue of 1,000 changes); the second is
converted with `revoc.partition.partition` (the conversion's time is printed). Then, interleaved
(plain, partitioned, plain, ...), each of the hot named queries runs as the daemons run it
(prepared, through asyncpg):

- responder_ocsp_response_batch with 100 random certificates (the responder's miss batch),
- responder_cert_status for one random certificate (the live signer), 500 times,
- presign_pending_claim of 100 changes, rolled back (the presigner's queue drain),
- crl_full_entries_issuer (the publisher's revoked scan of the issuer).

Reported: the median per-round time of each, and the partitioned/plain ratio of the medians.
The host is shared and drifts; ratios of interleaved medians are what to read.

    python bench/partition_bench.py [--certificates 200000] [--partitions 16] [--rounds 9]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from revoc.partition import partition
from revoc.queries import queries
from tests.databases import create_migrated, drop

ISSUER = ("INSERT INTO issuers (name, cert_der, subject_der, key_id, name_sha1, key_sha1,"
          " name_sha256, key_sha256, name_sha384, key_sha384, name_sha512, key_sha512)"
          " VALUES ('bench', '\\x00', '\\x01', '\\x02', '\\x03', '\\x04', '\\x05', '\\x06',"
          " '\\x07', '\\x08', '\\x09', '\\x0a') RETURNING id")


async def _fill(conn: asyncpg.Connection, n: int) -> int:
    issuer_id: int = await conn.fetchval(ISSUER)
    await conn.execute(
        "INSERT INTO certificates (issuer_id, serial, not_after, status, revoked_at, reason,"
        " crl_entry)"
        " SELECT $1, '\\x01'::bytea || int8send(g), now() + interval '1 year',"
        "  CASE WHEN g % 100 = 0 THEN 'revoked' ELSE 'good' END,"
        "  CASE WHEN g % 100 = 0 THEN now() END, CASE WHEN g % 100 = 0 THEN 1 END,"
        "  CASE WHEN g % 100 = 0 THEN decode(repeat('ab', 24), 'hex') END"
        " FROM generate_series(1, $2) AS g", issuer_id, n)
    await conn.execute(
        "INSERT INTO ocsp_responses SELECT issuer_id, serial, h, decode(repeat('ab', 380), 'hex'),"
        " now(), now(), now() + interval '4 days', change_seq FROM certificates"
        " CROSS JOIN (VALUES (1::smallint), (2::smallint)) AS v(h)")
    await conn.execute(
        "TRUNCATE ocsp_pending; INSERT INTO ocsp_pending"
        " SELECT issuer_id, serial, change_seq, now() - random() * interval '1 hour'"
        " FROM certificates WHERE status = 'good' ORDER BY random() LIMIT 1000")
    await conn.execute("VACUUM ANALYZE")
    return issuer_id


def _serial(g: int) -> bytes:
    return b"\x01" + g.to_bytes(8, "big")


async def _round(conn: asyncpg.Connection, issuer_id: int, n: int,
                 rng: random.Random) -> dict[str, float]:
    q = queries()
    times: dict[str, float] = {}
    keys = [_serial(rng.randint(1, n)) for _ in range(100)]
    started = time.perf_counter()
    for _ in range(20):
        await conn.fetch(q.responder_ocsp_response_batch, [issuer_id] * 100, keys, [2] * 100)
    times["store batch of 100 (x20)"] = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(500):
        await conn.fetchrow(q.responder_cert_status, issuer_id, _serial(rng.randint(1, n)))
    times["cert status (x500)"] = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(20):
        tx = conn.transaction()
        await tx.start()
        await conn.fetch(q.presign_pending_claim, [], False, 100)
        await tx.rollback()
    times["queue claim of 100 (x20)"] = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(3):
        await conn.fetch(q.crl_full_entries_issuer, issuer_id,
                         datetime.now(UTC) - timedelta(days=1))
    times["full CRL scan (x3)"] = time.perf_counter() - started
    return times


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--certificates", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--plan-cache-mode", default=None,
                        help="plan_cache_mode of the partitioned database's session (e.g. "
                        "force_custom_plan; default: the server's, auto)")
    args = parser.parse_args()
    server = os.environ.get("REVOC_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    dsns = [await create_migrated(server, "revoc_partbench") for _ in range(2)]
    conns: list[asyncpg.Connection] = []
    try:
        conns = [await asyncpg.connect(dsn) for dsn in dsns]
        ids = [await _fill(conn, args.certificates) for conn in conns]
        started = time.perf_counter()
        await partition(conns[1], args.partitions)
        took = time.perf_counter() - started
        await conns[1].execute("ANALYZE")
        if args.plan_cache_mode:
            await conns[1].execute(f"SET plan_cache_mode = {args.plan_cache_mode}")
        print(f"{args.certificates} certificates, {2 * args.certificates} responses: "
              f"conversion into {args.partitions} partitions took {took:.1f} s")
        rng = random.Random(15)
        results: list[dict[str, list[float]]] = [{}, {}]
        for _ in range(args.rounds):
            for which in (0, 1):
                for name, seconds in (await _round(conns[which], ids[which],
                                                   args.certificates, rng)).items():
                    results[which].setdefault(name, []).append(seconds)
        print(f"| query | plain median (ms) | {args.partitions} partitions median (ms) "
              "| ratio |")
        print("|---|---|---|---|")
        for name in results[0]:
            plain = statistics.median(results[0][name]) * 1000
            parted = statistics.median(results[1][name]) * 1000
            print(f"| {name} | {plain:.1f} | {parted:.1f} | {parted / plain:.2f} |")
    finally:
        for conn in conns:
            await conn.close()
        for dsn in dsns:
            await drop(server, dsn)


if __name__ == "__main__":
    asyncio.run(main())
