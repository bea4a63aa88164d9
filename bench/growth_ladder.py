"""Growth ladder (issue 15 point 1): how each cost grows from 10k to 10M certificates.

For each size N, in a fresh database on the server of REVOC_DATABASE_URL (PostgreSQL 15
with its default settings; `uptime` says what else ran):

- import: `revoc cert import --openssl-index` of N lines (10% revoked), the whole command, into
  an issuer with a delegated OCSP responder (P-256 CA and responder keys);
- presign per core: one signing process (Presigner.sweep of that issuer, sha1 + sha256 CertIDs).
  Above --presign-max (default 1M) a --sample-certificate issuer (default 1M) is signed in the
  same database instead, next to the N unsigned rows: the per-core rate against an N-row table
  (and the responder steps below then read that issuer's responses out of the N-row tables);
- database: pg_total_relation_size of certificates, ocsp_responses (+ responder_certs) and the
  database, per certificate (responses: per stored response, and per certificate with 2);
- CRL: `revoc publish --once` (whole command: wall time, peak RSS from wait4, file bytes), first
  with the unsharded issuer only, then after importing the same N into a second issuer with
  --shards CRL shards (only that issuer's CRLs are due then);
- responder (`responder_steps`): `revoc serve` (1 worker) with the bulk warm-up off until
  /readyz, then cold misses (the cache off, so every request is a store read: wrk, 10 s, cycling
  over up to --cold-max distinct certificates in random order); again with the warm-up on and
  caps raised to --warm-max responses: start-up to a full
  cache and VmRSS; again with the default caps (cache_max_entries, cache_max_bytes) when more
  responses are stored than they admit: VmRSS with the cache at its cap.

    REVOC_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        python bench/growth_ladder.py 10000 100000 1000000 10000000 --json /tmp/ladder.json

Results as JSON lines (one per size, appended as each finishes); `--report FILE` turns them into
the table and bench/growth_ladder.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from import_index import serial_of, write_index  # noqa: E402
from ocsp_bench import (  # noqa: E402
    free_port,
    fresh_database,
    process,
    revoc_env,
    revoc_serve_command,
    wait_ready,
    wrk,
)
from ocsp_compare import group_cpu_seconds  # noqa: E402
from suite import RequestMaker, metric, rss_kb, write_cycle_lua  # noqa: E402

from responder.presign_queue import drain_queue  # noqa: E402
from responder.presigner import Presigner, make_executor  # noqa: E402
from revoc.admin import list_issuers  # noqa: E402
from revoc.db import create_pool, upgrade  # noqa: E402
from revoc.settings import Settings  # noqa: E402
from tests.pki import cached_key, make_ca, make_ocsp_responder  # noqa: E402

REVOC = [sys.executable, "-m", "revoc.cli"]


def run_timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of a command run to completion; raises on failure.

    The peak comes from GNU time, not from wait4 here: Linux keeps a forked child's pre-exec
    high-water mark (this script's own RSS, over 170 MB at 10M) in its ru_maxrss."""
    started = time.perf_counter()
    with tempfile.NamedTemporaryFile("r") as peak:
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", peak.name, *command], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"{command[3:6]} failed: {proc.stderr.decode()[-2000:]}")
        return seconds, int(peak.read().split()[-1]) / 1024


def cli(env: dict[str, str], *args: str) -> None:
    subprocess.run([*REVOC, *args], env=env, check=True, stdout=subprocess.DEVNULL)


async def sizes(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM ANALYZE")
        row = await conn.fetchrow(
            "SELECT pg_total_relation_size('certificates') AS certificates,"
            " pg_total_relation_size('ocsp_responses') AS responses,"
            " pg_total_relation_size('responder_certs') AS responder_certs,"
            " pg_database_size(current_database()) AS database,"
            " (SELECT count(*) FROM ocsp_responses) AS response_rows,"
            " (SELECT coalesce(avg(octet_length(der)), 0)::int FROM ocsp_responses) AS stem_bytes,"
            " (SELECT coalesce(avg(octet_length(der)), 0)::int FROM ocsp_responses_served)"
            "   AS served_bytes")
        return dict(row)
    finally:
        await conn.close()


async def presign_issuer(dsn: str, name: str) -> dict[str, float]:
    """One signing process sweeps one issuer: responses/s per core."""
    pool = await create_pool(dsn)
    executor = make_executor(1)
    try:
        settings = Settings(database_url=dsn, presign_processes=1)
        async with pool.acquire() as conn:
            issuers = [i for i in await list_issuers(conn) if i.name == name]
            # A sample issuer: the N-row issuer's queued revocations are not signed here (its
            # responses are not part of the measurement; its rows only make the tables large).
            await conn.execute("DELETE FROM ocsp_pending WHERE issuer_id <> $1", issuers[0].id)
        presigner = Presigner(pool, settings, executor, None)
        # The revoked rows of the import are queued changes (ocsp_pending): drained first, as
        # `revoc presign` does; the queue holds only this issuer's rows at this point.
        report = await drain_queue(presigner, retry_quarantined=True)
        report += await presigner.sweep(issuers)
        assert report.ok, report
        return {"presign_s": report.seconds, "presign_responses": report.responses,
                "presign_rate": report.rate}
    finally:
        await asyncio.to_thread(executor.shutdown, True)
        await pool.close()


def crl_files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*.crl")}


def step(size: int, args: argparse.Namespace, server_dsn: str, work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"size": size}
    ca = make_ca("Ladder CA", key=cached_key("p256", 21))
    responder = make_ocsp_responder(ca, name="Ladder OCSP", key=cached_key("p256", 22))
    ca_cert, ca_key = ca.write(work)
    rs_cert, rs_key = responder.write(work)
    index = work / "index.txt"
    write_index(index, size)
    with fresh_database(server_dsn) as dsn:
        env = revoc_env(dsn)
        asyncio.run(_upgrade(dsn))
        cli(env, "issuer", "add", "--name", "flat", "--cert", str(ca_cert), "--key", str(ca_key),
            "--ocsp-cert", str(rs_cert), "--ocsp-key", str(rs_key))
        seconds, rss = run_timed([*REVOC, "cert", "import", "--issuer", "flat",
                                  "--openssl-index", str(index)], env)
        result.update(import_s=seconds, import_rate=size / seconds, import_rss_mb=rss,
                      import_load=os.getloadavg()[0])
        print(f"{size:,}: import {seconds:.1f} s", flush=True)
        signed = "flat"
        if size > args.presign_max and not args.crl_only:
            sample = work / "sample.txt"
            write_index(sample, args.sample)
            sample_ca = make_ca("Ladder Sample CA", key=cached_key("p256", 23))
            sample_rs = make_ocsp_responder(sample_ca, name="Ladder Sample OCSP",
                                            key=cached_key("p256", 24))
            (work / "sample-ca").mkdir()
            s_cert, s_key = sample_ca.write(work / "sample-ca")
            s_rs_cert, s_rs_key = sample_rs.write(work / "sample-ca")
            cli(env, "issuer", "add", "--name", "sample", "--cert", str(s_cert), "--key",
                str(s_key), "--ocsp-cert", str(s_rs_cert), "--ocsp-key", str(s_rs_key))
            cli(env, "cert", "import", "--issuer", "sample", "--openssl-index", str(sample))
            signed = "sample"
        if not args.crl_only:
            result.update(asyncio.run(presign_issuer(dsn, signed)))
            result["presigned"] = signed
            result["presign_load"] = os.getloadavg()[0]
            print(f"{size:,}: presign {result['presign_responses']:,} responses at "
                  f"{result['presign_rate']:,.0f}/s (1 process)", flush=True)
        result.update({f"db_{k}": v for k, v in asyncio.run(sizes(dsn)).items()})
        out = work / "crl"
        seconds, rss = run_timed([*REVOC, "publish", "--once", "--out", str(out)], env)
        files = crl_files(out)
        result.update(crl_s=seconds, crl_rss_mb=rss, crl_bytes=max(files.values()),
                      crl_files=len(files))
        print(f"{size:,}: CRL {seconds:.1f} s, {max(files.values()):,} B, {rss:.0f} MB",
              flush=True)
        if not args.crl_only:
            responder_steps(result, args, dsn, env, work,
                            ca if signed == "flat" else sample_ca,
                            size if signed == "flat" else args.sample)
        if size <= args.shard_max:
            sh_ca = make_ca("Ladder Sharded CA", key=cached_key("p256", 25))
            (work / "sharded-ca").mkdir()
            sh_cert, sh_key = sh_ca.write(work / "sharded-ca")
            cli(env, "issuer", "add", "--name", "sharded", "--cert", str(sh_cert), "--key",
                str(sh_key), "--crl-shards", str(args.shards))
            cli(env, "cert", "import", "--issuer", "sharded", "--openssl-index", str(index))
            before = set(crl_files(out))
            seconds, rss = run_timed([*REVOC, "publish", "--once", "--out", str(out)], env)
            new = {k: v for k, v in crl_files(out).items() if k not in before}
            result.update(crl_sharded_s=seconds, crl_sharded_rss_mb=rss,
                          crl_shard_bytes=max(new.values()) if new else 0,
                          crl_sharded_files=len(new))
            print(f"{size:,}: sharded CRL {seconds:.1f} s, {len(new)} files, largest "
                  f"{result['crl_shard_bytes']:,} B, {rss:.0f} MB", flush=True)
    index.unlink(missing_ok=True)
    return result


async def _upgrade(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await upgrade(conn)
    finally:
        await conn.close()


def warm_state(base: str) -> str | None:
    """The state the bulk warm-up is in, from /metrics (responder/cache_warm.py)."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    match = re.search(r'^revoc_cache_warm_state{state="([a-z]+)"} 1\.0$', text, re.M)
    return match.group(1) if match else None


def serve_warm(result: dict[str, Any], prefix: str, env: dict[str, str], work: Path,
               timeout: float = 1800) -> None:
    """`revoc serve` with the bulk warm-up on: seconds to /readyz and to a full cache (warm-up
    done), entries and bytes cached, RSS then."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with process(revoc_serve_command(port, 1), env, log=work / f"serve-{prefix}.log") as served:
        wait_ready(base, timeout=120)
        result[f"{prefix}_ready_s"] = time.monotonic() - started
        deadline = time.monotonic() + timeout
        while (state := warm_state(base)) not in ("done", "failed", "off"):
            if time.monotonic() > deadline:
                raise SystemExit(f"{prefix}: warm-up not done after {timeout:.0f} s")
            time.sleep(0.2)
        if state != "done":
            raise SystemExit(f"{prefix}: warm-up ended {state}; see {work}/serve-{prefix}.log")
        result[f"{prefix}_warm_s"] = time.monotonic() - started
        result[f"{prefix}_warm_seconds_inside"] = metric(base, "revoc_cache_warm_seconds")
        result[f"{prefix}_cached"] = metric(base, "revoc_ocsp_cache_entries")
        result[f"{prefix}_cache_mb"] = (metric(base, "revoc_ocsp_cache_bytes") or 0) / 2**20
        result[f"{prefix}_rss_mb"] = rss_kb(served.pid)["VmRSS"] / 1024
    print(f"{prefix}: ready {result[f'{prefix}_ready_s']:.1f} s, warm "
          f"{result[f'{prefix}_warm_s']:.1f} s, {result[f'{prefix}_cached']:,.0f} cached "
          f"({result[f'{prefix}_cache_mb']:.0f} MB counted), "
          f"RSS {result[f'{prefix}_rss_mb']:.0f} MB", flush=True)


def responder_steps(result: dict[str, Any], args: argparse.Namespace, dsn: str,
                    env: dict[str, str], work: Path, ca: Any, size: int) -> None:
    """Three `revoc serve` runs of one worker each:

    1. warm-up off and the cache off: start-up to /readyz, idle RSS, then 10 s of cold misses
       (wrk, 64 connections, cycling over up to --cold-max distinct certificates in random
       order: every request a store read);
    2. warm-up on, the cache's caps raised to hold up to `--warm-max` responses: start-up to a
       cache holding every stored response (at most --warm-max), RSS then;
    3. warm-up on, the default caps (cache_max_entries, cache_max_bytes): when more responses are
       stored than the caps admit, the cache fills to its cap: RSS at the cap.
    """
    maker = RequestMaker(ca.cert)
    rng = random.Random(size)
    cold_n = min(size, args.cold_max)
    order = rng.sample(range(size), cold_n)
    bodies = [maker(serial_of(n)) for n in order]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    # Cache off (cap 0): every request is a store read however often wrk cycles through the
    # distinct certificates, so each size gets the same 10 s run (at 10k certificates a run of
    # distinct first requests would last about one second, mostly connection start-up).
    cold_env = {**env, "REVOC_CACHE_WARM": "false", "REVOC_CACHE_MAX_ENTRIES": "0"}
    with process(revoc_serve_command(port, 1), cold_env, log=work / "serve.log") as served:
        wait_ready(base, timeout=120)
        result["serve_ready_s"] = time.monotonic() - started
        result["rss_idle_mb"] = rss_kb(served.pid)["VmRSS"] / 1024
        cold = write_cycle_lua(work, f"cold-{size}", bodies)
        cpu_before = group_cpu_seconds(served.pid)
        figures = wrk(base + "/ocsp", "10s", 64, cold)
        result["cold_cpu_us"] = ((group_cpu_seconds(served.pid) - cpu_before)
                                 / max(figures["requests"], 1) * 1e6)
        if metric(base, "revoc_ocsp_cache_entries"):
            raise SystemExit(f"{size:,}: the cold run's cache held entries")
        result["cold_rps"], result["cold_p99_ms"] = figures["rps"], figures["p99"]
        result["cold_load"] = os.getloadavg()[0]
        print(f"{size:,}: ready {result['serve_ready_s']:.1f} s, cold {figures['rps']:,.0f} "
              f"req/s, p99 {figures['p99']:.1f} ms, {result['cold_cpu_us']:.0f} us CPU each, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    del bodies
    big = {**env, "REVOC_CACHE_MAX_ENTRIES": str(args.warm_max),
           "REVOC_CACHE_MAX_BYTES": str(args.warm_max * 4096)}
    serve_warm(result, "warm", big, work)
    if result["db_response_rows"] > result["warm_cached"] or args.cache_cap:
        capped = dict(env)
        if args.cache_cap:
            capped["REVOC_CACHE_MAX_ENTRIES"] = str(args.cache_cap)
        serve_warm(result, "capped", capped, work)


def report(path: Path, chart: Path) -> str:
    """The markdown table of a JSON-lines result file, and the chart (per-unit costs against the
    smallest size: flat lines are linear growth)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: r["size"])
    lines = [
        "| certificates | import s (lines/s) | presign responses/s, 1 core | bytes per "
        "certificate: certificates + 2 responses = total | database MB | stored / served "
        "response B | full CRL s, B, peak RSS MB | 16 shards: s, largest B, RSS MB | serve "
        "ready s | cold misses req/s (p99 ms, CPU us each) | start-up to warm s (responses "
        "cached) | RSS idle / warm MB | at the default cap: cached, counted MB, RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        n = r["size"]
        per_resp = r["db_responses"] / max(r["db_response_rows"], 1)
        per_cert_resp = per_resp * 2
        presign = f"{r['presign_rate']:,.0f}"
        if r["presigned"] != "flat":
            presign += f" ({r['presign_responses']:,} of a sample issuer)"
        sharded = (f"{r['crl_sharded_s']:.1f}, {r['crl_shard_bytes']:,}, "
                   f"{r['crl_sharded_rss_mb']:.0f}" if "crl_sharded_s" in r else "-")
        warm = (f"{r['warm_warm_s']:.1f} ({r['warm_cached']:,.0f})" if "warm_warm_s" in r
                else "-")
        rss = f"{r['rss_idle_mb']:.0f} / {r['warm_rss_mb']:.0f}" if "warm_rss_mb" in r else "-"
        capped = (f"{r['capped_cached']:,.0f}, {r['capped_cache_mb']:,.0f}, "
                  f"{r['capped_rss_mb']:,.0f}" if "capped_rss_mb" in r else "not reached")
        lines.append(
            f"| {n:,} | {r['import_s']:.1f} ({r['import_rate']:,.0f}) | {presign} | "
            f"{r['db_certificates'] / n:,.0f} + {per_cert_resp:,.0f} = "
            f"{r['db_certificates'] / n + per_cert_resp:,.0f} | {r['db_database'] / 2**20:,.0f} | "
            f"{r['db_stem_bytes']} / {r['db_served_bytes']} | "
            f"{r['crl_s']:.1f}, {r['crl_bytes']:,}, {r['crl_rss_mb']:.0f} | {sharded} | "
            f"{r.get('serve_ready_s', 0):.1f} | {r.get('cold_rps', 0):,.0f} "
            f"({r.get('cold_p99_ms', 0):,.0f}, {r.get('cold_cpu_us', 0):,.0f}) | {warm} | "
            f"{rss} | {capped} |")
    _chart(rows, chart)
    return "\n".join(lines)


def _chart(rows: list[dict[str, Any]], chart: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = rows[0]
    sizes = [r["size"] for r in rows]
    series = {
        "import s per certificate": [r["import_s"] / r["size"] for r in rows],
        "presign s per response (1 core)": [1 / r["presign_rate"] for r in rows],
        "certificates bytes per certificate": [r["db_certificates"] / r["size"] for r in rows],
        "ocsp_responses bytes per response": [
            r["db_responses"] / max(r["db_response_rows"], 1) for r in rows],
        "full CRL s per certificate": [r["crl_s"] / r["size"] for r in rows],
        "full CRL bytes per certificate": [r["crl_bytes"] / r["size"] for r in rows],
        "cold miss s per request": [1 / r["cold_rps"] if r.get("cold_rps") else None
                                    for r in rows],
    }
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for name, values in series.items():
        first = values[0]
        points = [(x, v / first) for x, v in zip(sizes, values, strict=True)
                  if v is not None and first]
        left.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    left.set_xscale("log")
    left.set_yscale("log")
    left.axhline(1.0, color="grey", linewidth=0.8)
    left.set_xlabel("certificates")
    left.set_ylabel(f"cost per unit / cost per unit at {base['size']:,}")
    left.set_title("Per-unit cost against the smallest size (flat = linear growth)")
    left.legend(fontsize=7)
    right.plot(sizes, [(r["db_certificates"] + r["size"] * 2 * r["db_responses"]
                        / max(r["db_response_rows"], 1)) / 2**20 for r in rows],
               marker="o", label="certificates + 2 responses each, MB")
    right.plot(sizes, [r["crl_bytes"] / 2**20 for r in rows], marker="o", label="full CRL MB")
    right.plot(sizes, [r["crl_rss_mb"] for r in rows], marker="o",
               label="publish peak RSS MB")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("certificates")
    right.set_title("Totals")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(chart, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, help="print the table of this JSON-lines file")
    parser.add_argument("sizes", nargs="*", type=int,
                        default=[10_000, 100_000, 1_000_000, 10_000_000])
    parser.add_argument("--json", type=Path, default=Path("/tmp/growth_ladder.json"))
    parser.add_argument("--presign-max", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=1_000_000,
                        help="above --presign-max, the certificates of the issuer signed instead")
    parser.add_argument("--cache-cap", type=int, default=0,
                        help="cache_max_entries of the capped responder (0: the defaults)")
    parser.add_argument("--warm-max", type=int, default=1_000_000,
                        help="responses the warm responder's raised caps admit")
    parser.add_argument("--cold-max", type=int, default=200_000)
    parser.add_argument("--shard-max", type=int, default=10_000_000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--crl-only", action="store_true",
                        help="import, sizes and CRLs only (no presign, no responder)")
    args = parser.parse_args()
    if args.report:
        print(report(args.report, BENCH / "growth_ladder.png"))
        return 0
    server_dsn = os.environ["REVOC_DATABASE_URL"]
    for size in args.sizes:
        work = Path(tempfile.mkdtemp(prefix="revoc-ladder-", dir="/tmp"))
        work.chmod(0o755)
        try:
            result = step(size, args, server_dsn, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        with args.json.open("a") as out:
            out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
