"""Bulk warm-up of `revoc serve` (issue 15 point 4): how fast a new responder fills its cache
from PostgreSQL, for N cached responses (default 1,000,000: 500,000 certificates x SHA-1 and
SHA-256 CertIDs).

Set-up (once, kept with --keep): certificates made by SQL, two pre-signed responses each by the
presigner's batch encoder with a constant signature and a delegated responder's certificate in
every response, as `revoc presign` stores them today (about 1.1 KB a response; the warm-up neither
verifies signatures nor cares who signed). Then, interleaved, `--rounds` times each:

- `serve`: the whole command a user runs, `revoc serve` (one worker, the defaults but a cache big
  enough for N), from exec to the log line "cache warm: N responses in S s" (start-up included);
- `query`: the baseline, the warm-up's query alone (same cursor, same batch size) read by asyncpg
  in a fresh process, rows discarded: what PostgreSQL and the wire cost without the responder.

Medians are reported, and the ratio serve/query of the same rounds. The machine is shared: other
engineers' tests and benchmarks run at the same time, so single figures drift by 20% or more.

    PYTHONPATH=. python bench/warm_bench.py [N] [--rounds 3] [--keep] [--reuse]

REVOC_BENCH_SERVER (default postgresql://postgres@127.0.0.1:5432/test) names the server; the
database revoc_warm_bench is made afresh (unless --reuse finds it built) and dropped at the end
unless --keep. Results are printed as a Markdown table; paste them into bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revoc import admin  # noqa: E402
from revoc.db import upgrade  # noqa: E402
from revoc.der.ocsp import cert_id_prefix, responder_key_hash  # noqa: E402
from revoc.der.ocsp_batch import PresignTemplate, ResponseTimes  # noqa: E402
from revoc.model import HashAlgorithm  # noqa: E402
from revoc.queries import queries  # noqa: E402
from revoc.signing import FileKeySigner, subject_public_key_bits  # noqa: E402
from tests.pki import make_ca, make_ocsp_responder  # noqa: E402

N = int(next((a for a in sys.argv[1:] if a.isdigit()), 1_000_000))
ROUNDS = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3
SERVER = os.environ.get("REVOC_BENCH_SERVER", "postgresql://postgres@127.0.0.1:5432/test")
DB = "revoc_warm_bench"
WORK = Path("/tmp/revoc-warm-bench")
HASHES = (HashAlgorithm.SHA1, HashAlgorithm.SHA256)
COLUMNS = ("issuer_id", "serial", "hash_alg", "der", "produced_at", "this_update",
           "next_update", "cert_change_seq")
BATCH = 5000  # as responder/cache_warm.py


class ConstantSigner:
    """The real key's algorithm identifier, a constant (invalid) ECDSA signature."""

    def __init__(self, real: FileKeySigner) -> None:
        self.algorithm_identifier = real.algorithm_identifier
        self._real = real

    def public_key(self) -> Any:
        return self._real.public_key()

    def sign(self, data: bytes) -> bytes:
        return b"\x30\x45\x02\x20" + b"\x11" * 32 + b"\x02\x21\x00" + b"\x22" * 32


async def build(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    await upgrade(conn)
    (WORK / "pki").mkdir(parents=True, exist_ok=True)
    ca = make_ca("bench CA", "p256")
    delegate = make_ocsp_responder(ca, key_type="rsa2048")
    cert_path, key_path = ca.write(WORK / "pki")
    await admin.add_issuer(conn, admin.IssuerRequest(name="bench", cert_path=str(cert_path),
                                                     key_path=str(key_path)))
    certificates = N // len(HASHES)
    started = time.perf_counter()
    await conn.execute("""
        INSERT INTO certificates (issuer_id, serial, not_after)
        SELECT 1, '\\x01'::bytea || int4send(i), now() + interval '1 year'
          FROM generate_series(1, $1) i""", certificates)
    print(f"certificates: {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    template = PresignTemplate(signer=ConstantSigner(FileKeySigner(ca.key)),
                               responder_key_hash=responder_key_hash(delegate.cert),
                               certs=[delegate.cert_der])
    prefixes = [cert_id_prefix(a, ca.cert.subject.public_bytes(),
                               subject_public_key_bits(ca.cert)) for a in HASHES]
    now = datetime.now(UTC).replace(microsecond=0)
    later = now + timedelta(days=4)
    times = ResponseTimes(now, now, later)
    after = b""
    while True:
        rows = await conn.fetch("SELECT serial, change_seq FROM certificates"
                                " WHERE serial > $1 ORDER BY serial LIMIT 50000", after)
        if not rows:
            break
        after = rows[-1]["serial"]
        ders = template.build_chunk(prefixes, [(r["serial"], None, None, None) for r in rows],
                                    times)
        records = [(1, r["serial"], alg.value, ders[len(HASHES) * i + h], now, now, later,
                    r["change_seq"])
                   for i, r in enumerate(rows) for h, alg in enumerate(HASHES)]
        await conn.copy_records_to_table("ocsp_responses", records=records, columns=COLUMNS)
    print(f"responses: {time.perf_counter() - started:.1f} s", flush=True)
    await conn.execute("VACUUM ANALYZE")
    size = await conn.fetchval("SELECT avg(length(der))::int FROM ocsp_responses")
    print(f"average response: {size} bytes", flush=True)
    await conn.close()


async def read_query(dsn: str) -> None:
    """The baseline: the warm-up query alone, rows read and dropped (run in a child)."""
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    rows = 0
    async with conn.transaction(readonly=True):
        cursor = await conn.cursor(queries()["responder_warm_responses"], 0, N + 1)
        while batch := await cursor.fetch(BATCH):
            rows += len(batch)
    await conn.close()
    print(f"read {rows} {time.perf_counter() - started:.3f}", flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_query(dsn: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--read", str(N)], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=600).stdout
    match = re.search(r"read (\d+) ([\d.]+)", out)
    assert match, out
    assert int(match.group(1)) == N, out
    return float(match.group(2))


def run_serve(dsn: str) -> tuple[float, float, int]:
    """(seconds from exec to the warm log line, the warm-up's own seconds, peak RSS in KiB)."""
    env = {**os.environ, "REVOC_DATABASE_URL": dsn, "REVOC_LOG_LEVEL": "INFO",
           "REVOC_CACHE_MAX_ENTRIES": str(N + 10), "REVOC_CACHE_MAX_BYTES": str(8 << 30)}
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "revoc.cli", "serve", "--port", str(_free_port())],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert child.stdout is not None
    lines = []
    try:
        for line in child.stdout:
            lines.append(line)
            match = re.search(r"cache warm: (\d+) responses in ([\d.]+) s", line)
            if match:
                total = time.perf_counter() - started
                assert int(match.group(1)) == N, line
                break
        else:
            raise AssertionError("".join(lines))
    finally:
        child.terminate()
        _pid, _status, usage = os.wait4(child.pid, 0)
    return total, float(match.group(2)), usage.ru_maxrss


async def main() -> None:
    dsn = SERVER.rsplit("/", 1)[0] + "/" + DB
    if "--build" in sys.argv:
        await build(dsn)
        return
    if "--read" in sys.argv:
        await read_query(dsn)
        return
    server = await asyncpg.connect(SERVER)
    exists = await server.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DB)
    if not ("--reuse" in sys.argv and exists):
        await server.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        await server.execute(f'CREATE DATABASE "{DB}"')
    await server.close()
    try:
        if not ("--reuse" in sys.argv and exists):
            await asyncio.to_thread(subprocess.run, [sys.executable, __file__, "--build", str(N)],
                                    check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        serve: list[tuple[float, float, int]] = []
        query: list[float] = []
        for i in range(ROUNDS):
            query.append(await asyncio.to_thread(run_query, dsn))
            serve.append(await asyncio.to_thread(run_serve, dsn))
            print(f"round {i + 1}: query {query[-1]:.2f} s; serve to warm {serve[-1][0]:.2f} s"
                  f" (warm-up {serve[-1][1]:.2f} s), peak RSS {serve[-1][2] / 1024:.0f} MiB",
                  flush=True)
        total = statistics.median(s[0] for s in serve)
        warm = statistics.median(s[1] for s in serve)
        base = statistics.median(query)
        rss = statistics.median(s[2] for s in serve) / 1024
        print(f"\n| what ({N:,} responses, median of {ROUNDS}) | seconds | responses/s |")
        print("|---|---|---|")
        print(f"| query alone (baseline) | {base:.2f} | {N / base:,.0f} |")
        print(f"| `revoc serve` warm-up (log line) | {warm:.2f} | {N / warm:,.0f} |")
        print(f"| `revoc serve`, exec to warm | {total:.2f} | {N / total:,.0f} |")
        print(f"\nratio serve warm-up / query alone: {warm / base:.2f}; "
              f"peak RSS {rss:,.0f} MiB")
    finally:
        if "--keep" not in sys.argv:
            server = await asyncpg.connect(SERVER)
            await server.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
            await server.close()


if __name__ == "__main__":
    asyncio.run(main())
