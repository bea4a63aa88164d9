"""The responder's miss read before and after migration 0007 (certs stored once), interleaved.

One database, one issuer with a delegated responder, N certificates (default 100k) x sha1/sha256
presigned by this tree. `before` reads a copy of the responses as main stored them (whole DER,
certificate in every row: schema `before`, same primary key) with main's batch query and main's
row handling; `after` reads the stems with this tree's query and `ResponseStore._rows` (the
splice). Each round: 256 random keys per query, one connection, for `--seconds`; rounds
alternate, the figure is the median of keys/s per side and of the ratio per round pair, and the
client's CPU time per key (process time: what the responder process spends on a miss). Both
sides return the same bytes (checked). The host is shared: read the ratio, not the rates.

    REVOC_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test python bench/store_compare.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from import_index import serial_of, write_index  # noqa: E402
from ocsp_bench import create_database, drop_database  # noqa: E402

from responder.presign_queue import presign_once  # noqa: E402
from responder.sources import PENDING, ResponseStore  # noqa: E402
from revoc import admin  # noqa: E402
from revoc.db import create_pool, upgrade  # noqa: E402
from revoc.der.asn1 import integer_content  # noqa: E402
from revoc.importer import import_openssl_index  # noqa: E402
from revoc.settings import Settings  # noqa: E402
from tests.pki import cached_key, make_ca, make_ocsp_responder  # noqa: E402

# main's query (before 0007), verbatim but for the comments.
BEFORE_SQL = """
SELECT k.n,
       r.der,
       extract(epoch FROM r.this_update)::bigint AS this_update,
       extract(epoch FROM r.next_update)::bigint AS next_update
  FROM unnest($1::integer[], $2::bytea[], $3::smallint[])
       WITH ORDINALITY AS k(issuer_id, serial, hash_alg, n)
  JOIN certificates c
    ON c.issuer_id = k.issuer_id AND c.serial = k.serial
  LEFT JOIN ocsp_responses r
    ON r.issuer_id = k.issuer_id AND r.serial = k.serial AND r.hash_alg = k.hash_alg
   AND r.cert_change_seq >= c.change_seq"""

Key = tuple[int, bytes, int]


def before_rows(keys: list[Key], rows: list[asyncpg.Record]) -> dict[Key, Any]:
    # main's ResponseStore._read_batch row handling, verbatim.
    return {keys[row["n"] - 1]: (PENDING if row["der"] is None else
                                 (bytes(row["der"]), int(row["this_update"]),
                                  int(row["next_update"]))) for row in rows}


async def load(dsn: str, size: int, work: Path) -> list[Key]:
    ca = make_ca("Store CA", key=cached_key("p256", 31))
    responder = make_ocsp_responder(ca, name="Store OCSP", key=cached_key("p256", 32))
    ca_cert, ca_key = ca.write(work)
    rs_cert, rs_key = responder.write(work)
    index = work / "index.txt"
    write_index(index, size)
    conn = await asyncpg.connect(dsn)
    try:
        await upgrade(conn)
        issuer_id = await admin.add_issuer(conn, admin.IssuerRequest(
            "store", str(ca_cert), key_path=str(ca_key), ocsp_cert_path=str(rs_cert),
            ocsp_key_path=str(rs_key)))
        await import_openssl_index(conn, "store", index)
    finally:
        await conn.close()
    pool = await create_pool(dsn)
    try:
        assert (await presign_once(pool, Settings(database_url=dsn, presign_processes=2))).ok
        await pool.execute(
            "CREATE SCHEMA before;"
            " CREATE TABLE before.ocsp_responses AS SELECT issuer_id, serial, hash_alg, der,"
            "   produced_at, this_update, next_update, cert_change_seq FROM ocsp_responses_served;"
            " ALTER TABLE before.ocsp_responses ADD PRIMARY KEY (issuer_id, serial, hash_alg);"
            " CREATE INDEX ON before.ocsp_responses (next_update)")
        await pool.execute("VACUUM ANALYZE")
        sizes = await pool.fetchrow(
            "SELECT pg_total_relation_size('before.ocsp_responses') AS before,"
            " pg_total_relation_size('ocsp_responses') + pg_total_relation_size('responder_certs')"
            " AS after, (SELECT count(*) FROM ocsp_responses) AS rows")
        print(f"ocsp_responses for {sizes['rows']:,} responses: whole rows (before) "
              f"{sizes['before'] / sizes['rows']:,.0f} B a response, stems + responder_certs "
              f"(after) {sizes['after'] / sizes['rows']:,.0f} B", flush=True)
    finally:
        await pool.close()
    serials = [serial_of(n) for n in range(size)]
    return [(issuer_id, integer_content(s), alg) for s in serials for alg in (1, 2)]


async def rounds(dsn: str, keys: list[Key], count: int, seconds: float) -> dict[str, Any]:
    before = await asyncpg.connect(dsn, server_settings={"search_path": "before,public"})
    pool = await create_pool(dsn, min_size=1, max_size=2)
    store = ResponseStore(pool, 30.0)
    after = await pool.acquire()
    rng = random.Random(7)

    cpu: dict[str, list[float]] = {"before": [], "after": []}

    async def side(name: str) -> float:
        done, deadline = 0, time.monotonic() + seconds
        cpu_started = time.process_time()
        while time.monotonic() < deadline:
            batch = rng.sample(keys, 256)
            columns = ([k[0] for k in batch], [k[1] for k in batch], [k[2] for k in batch])
            if name == "before":
                before_rows(batch, await before.fetch(BEFORE_SQL, *columns))
            else:
                await store._read_batch(after, batch)
            done += len(batch)
        cpu[name].append((time.process_time() - cpu_started) / done * 1e6)
        return done / seconds

    try:
        probe = rng.sample(keys, 256)
        columns = ([k[0] for k in probe], [k[1] for k in probe], [k[2] for k in probe])
        old = before_rows(probe, await before.fetch(BEFORE_SQL, *columns))
        new = await store._read_batch(after, probe)
        assert old == new and all(v is not PENDING for v in new.values()), "bytes differ"
        figures: dict[str, list[float]] = {"before": [], "after": []}
        for n in range(count):
            for name in (("before", "after") if n % 2 == 0 else ("after", "before")):
                figures[name].append(await side(name))
        ratios = [a / b for a, b in zip(figures["after"], figures["before"], strict=True)]
        return {"before": statistics.median(figures["before"]),
                "after": statistics.median(figures["after"]),
                "ratio": statistics.median(ratios), "ratios": ratios,
                "cpu_before": statistics.median(cpu["before"]),
                "cpu_after": statistics.median(cpu["after"])}
    finally:
        await pool.release(after)
        await store.close()
        await pool.close()
        await before.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    server = os.environ["REVOC_DATABASE_URL"]
    dsn = asyncio.run(create_database(server))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            keys = asyncio.run(load(dsn, args.size, Path(tmp)))
        result = asyncio.run(rounds(dsn, keys, args.rounds, args.seconds))
    finally:
        asyncio.run(drop_database(server, dsn))
    print(f"keys/s before (whole rows, main's query): {result['before']:,.0f}")
    print(f"keys/s after (stems + splice):             {result['after']:,.0f}")
    print(f"client CPU per key (the responder's side of a miss: asyncpg decoding, row handling, "
          f"splice): before {result['cpu_before']:.1f} us, after {result['cpu_after']:.1f} us")
    print(f"after/before, median of {args.rounds} interleaved pairs: {result['ratio']:.3f} "
          f"({', '.join(f'{r:.2f}' for r in result['ratios'])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
