"""Issue 13 point 9: the whole `revoc publish --once --force-full` for N revoked certificates
(process start, DB read, build, sign, check, store, file), against cryptography's builder in the
same run, and 1 scope against 16 shards (not a test).

Two databases of their own on the given server, loaded once (kept with --keep for the next
invocation): `revoc_crlspeed_1` (one unsharded issuer) and `revoc_crlspeed_16` (one issuer with
16 shards), each with N revoked certificates (16-octet serials, keyCompromise: 49-octet entries,
as a mass revocation writes them). Each round runs, in turn, each variant in a fresh process
under /usr/bin/time -v (wall time and peak RSS):

- ours-1: `revoc publish --once --force-full` on the unsharded database;
- ours-16: the same on the 16-shard database (16 full CRLs + their deltas);
- cryptography: a script that fetches the same rows with asyncpg, builds the CRL with
  `CertificateRevocationListBuilder` (RevokedCertificate objects given to its constructor), signs
  it and writes the file (temp + fsync + rename); no check and no store, so it does less;
- python: the interpreter alone with `import revoc.cli` (the RSS floor of the target);
- with --baseline-tree DIR (e.g. /work/main): base-1 and base-16, the same command run from
  that source tree (PYTHONPATH=DIR), for a before/after in the same run; with
  --baseline-suffix S on databases of its own, revoc_crlspeed_1S and revoc_crlspeed_16S.

Medians over --rounds interleaved rounds. The machine may be shared: say so next to the figures.

    REVOC_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \
        python bench/crl_publish_bench.py [--size 1000000] [--rounds 5] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REVOC = str(Path(sys.executable).with_name("revoc"))
TIME = "/usr/bin/time"
PUBLIC = "http://crl.bench.example"


def _with_database(server: str, name: str) -> str:
    return urlunsplit(urlsplit(server)._replace(path=f"/{name}"))


def _env(dsn: str, out: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOC_")}
    env.update({"REVOC_DATABASE_URL": dsn, "REVOC_CRL_OUT": str(out),
                "REVOC_PUBLIC_URL": PUBLIC, "REVOC_LOG_LEVEL": "WARNING"})
    return env


async def _load(server: str, name: str, n: int, shards: int, keys: Path) -> str:
    """The database `name` with one issuer and n revoked certificates (reused when complete)."""
    from revoc import db
    from revoc.der.asn1 import integer_content
    from revoc.der.crl import encode_crl_entry
    from revoc.model import Reason
    from tests.pki import make_ca

    dsn = _with_database(server, name)
    admin = await asyncpg.connect(server)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await admin.close()
    if exists:
        conn = await asyncpg.connect(dsn)
        try:
            count = await conn.fetchval(
                "SELECT count(*) FROM certificates WHERE status = 'revoked'")
            key_path = await conn.fetchval("SELECT key_path FROM issuers")
        finally:
            await conn.close()
        if count == n and key_path and await asyncio.to_thread(Path(key_path).exists):
            return dsn
        admin = await asyncpg.connect(server)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    conn = await asyncpg.connect(dsn)
    try:
        await db.upgrade(conn)
    finally:
        await conn.close()
    ca = make_ca(f"{name} bench CA")
    cert, key = ca.write(keys / name)
    argv = [REVOC, "issuer", "add", "--name", "bench", "--cert", str(cert), "--key", str(key)]
    if shards:
        argv += ["--crl-shards", str(shards)]
    await asyncio.to_thread(subprocess.run, argv, env=_env(dsn, keys / "out"), check=True,
                            capture_output=True)
    conn = await asyncpg.connect(dsn)
    try:
        issuer_id: int = await conn.fetchval("SELECT id FROM issuers WHERE name = 'bench'")
        now = datetime.now(UTC).replace(microsecond=0)
        not_after = now + timedelta(days=3650)

        def rows() -> Any:
            for i in range(1, n + 1):
                serial = (0x40 << 120) + i * 7919
                revoked_at = now - timedelta(seconds=i % 86400)
                shard = serial % shards if shards else None
                url = (f"{PUBLIC}/crl/bench/{shard}.crl" if shards else f"{PUBLIC}/crl/bench.crl")
                yield (issuer_id, integer_content(serial), not_after, url, shard, "revoked",
                       revoked_at, int(Reason.keyCompromise),
                       encode_crl_entry(serial, revoked_at, Reason.keyCompromise))

        await conn.copy_records_to_table(
            "certificates", records=rows(),
            columns=["issuer_id", "serial", "not_after", "crl_url", "shard", "status",
                     "revoked_at", "reason", "crl_entry"])
        await conn.execute("DELETE FROM ocsp_pending")
        await conn.execute("VACUUM ANALYZE certificates")
    finally:
        await conn.close()
    return dsn


async def _prune(dsn: str) -> None:
    """Keep only the latest CRL of each scope and kind (the runs would pile up 49 MB each)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "DELETE FROM crls c WHERE EXISTS (SELECT 1 FROM crls d WHERE d.issuer_id = "
            "c.issuer_id AND d.shard = c.shard AND d.kind = c.kind AND d.number > c.number)")
    finally:
        await conn.close()


def _timed(argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, float]:
    """Wall seconds and peak RSS (MB) of one command, from /usr/bin/time -v."""
    started = time.perf_counter()
    done = subprocess.run([TIME, "-v", *argv], env=env, capture_output=True, text=True,
                          check=False, cwd=cwd)  # not the source tree: PYTHONPATH decides
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    assert rss is not None
    # The command's own CPU (user + system), which other load on a shared host disturbs less
    # than its wall time; PostgreSQL's part is not in it (bench/crl_publish_phases.py has it).
    cpu = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([0-9.]+)",
                                             done.stderr))
    return {"seconds": seconds, "rss_mb": int(rss.group(1)) / 1024, "cpu_seconds": cpu}


# ---------------------------------------------------------------- the cryptography baseline


async def _cryptography_child(dsn: str, out: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    from crl_publisher.output import write_atomically

    flags = {1: x509.ReasonFlags.key_compromise}
    conn = await asyncpg.connect(dsn)
    try:
        issuer = await conn.fetchrow("SELECT id, cert_der, key_path FROM issuers")
        rows = await conn.fetch(
            "SELECT serial, revoked_at, reason FROM certificates "
            "WHERE issuer_id = $1 AND status = 'revoked' ORDER BY serial", issuer["id"])
    finally:
        await conn.close()
    cert = x509.load_der_x509_certificate(issuer["cert_der"])
    key_pem = await asyncio.to_thread(Path(issuer["key_path"]).read_bytes)
    key = serialization.load_pem_private_key(key_pem, None)
    revoked = []
    for row in rows:
        builder = (x509.RevokedCertificateBuilder()
                   .serial_number(int.from_bytes(row["serial"], "big", signed=True))
                   .revocation_date(row["revoked_at"]))
        if row["reason"]:
            builder = builder.add_extension(x509.CRLReason(flags[row["reason"]]), critical=False)
        revoked.append(builder.build())
    del rows
    now = datetime.now(UTC)
    crl = x509.CertificateRevocationListBuilder(
        issuer_name=cert.subject, last_update=now, next_update=now + timedelta(days=7),
        revoked_certificates=revoked,
        extensions=[x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(1))],
    ).sign(key, hashes.SHA256())  # type: ignore[arg-type]
    write_atomically(out, "bench.crl", crl.public_bytes(serialization.Encoding.DER))


# ---------------------------------------------------------------- main


async def _sizes(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT sum(size)::bigint AS size, max(size) AS biggest FROM (SELECT DISTINCT ON "
            "(shard) length(der) AS size FROM crls WHERE kind = 'full' "
            "ORDER BY shard, number DESC) s")
    finally:
        await conn.close()
    return int(row["size"]), int(row["biggest"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the databases for next time")
    parser.add_argument("--without", default="", help="variants to leave out, e.g. cryptography")
    parser.add_argument("--baseline-tree", type=Path, help="another source tree to compare")
    parser.add_argument("--baseline-suffix", default="", metavar="SUFFIX",
                        help="run the baseline on revoc_crlspeed_1SUFFIX and _16SUFFIX, made "
                        "beforehand (e.g. copies of the loaded databases at the baseline's "
                        "schema, when this tree added indexes the baseline would use too)")
    parser.add_argument("--cryptography-child", nargs=2, metavar=("DSN", "OUT"))
    args = parser.parse_args()
    if args.cryptography_child:
        asyncio.run(_cryptography_child(args.cryptography_child[0],
                                        Path(args.cryptography_child[1])))
        return
    server = os.environ.get("REVOC_DATABASE_URL")
    if not server:
        raise SystemExit("set REVOC_DATABASE_URL to a PostgreSQL server")
    keys = Path("/tmp/revoc-crlspeed-bench")
    keys.mkdir(exist_ok=True)
    started = time.perf_counter()
    one = asyncio.run(_load(server, "revoc_crlspeed_1", args.size, 0, keys))
    sixteen = asyncio.run(_load(server, "revoc_crlspeed_16", args.size, 16, keys))
    print(f"# loaded in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    skip = set(filter(None, args.without.split(",")))
    results: dict[str, list[dict[str, float]]] = {}
    try:
        with tempfile.TemporaryDirectory() as directory:
            tmp = Path(directory)
            variants: dict[str, tuple[list[str], dict[str, str], str | None]] = {
                "ours-1": ([REVOC, "publish", "--once", "--force-full"],
                           _env(one, tmp / "one"), one),
                "ours-16": ([REVOC, "publish", "--once", "--force-full"],
                            _env(sixteen, tmp / "sixteen"), sixteen),
                "cryptography": ([sys.executable, __file__, "--cryptography-child", one,
                                  str(tmp / "theirs")], _env(one, tmp / "theirs"), None),
                "python": ([sys.executable, "-c", "import revoc.cli"], _env(one, tmp), None),
            }
            if args.baseline_tree:
                base = [sys.executable, "-c", "import sys; from revoc.cli import main; "
                        "sys.exit(main(['publish', '--once', '--force-full']))"]
                # The same --out as ours on that database: the files then match the latest
                # stored CRL at the start of every run, as they do after an earlier publish
                # (else the round's repair would rewrite them from the database first).
                for label, dsn, out in (("base-1", one, "one"), ("base-16", sixteen, "sixteen")):
                    if args.baseline_suffix:
                        name = urlsplit(dsn).path.lstrip("/") + args.baseline_suffix
                        dsn, out = _with_database(server, name), out + "-base"
                    env = _env(dsn, tmp / out)
                    env["PYTHONPATH"] = str(args.baseline_tree.resolve())
                    variants[label] = (base, env, dsn)
            (tmp / "theirs").mkdir()
            for round_ in range(args.rounds):
                for name, (argv, env, dsn) in variants.items():
                    if name in skip:
                        continue
                    if dsn is not None:
                        asyncio.run(_prune(dsn))
                    result = _timed(argv, env, tmp)
                    results.setdefault(name, []).append(result)
                    print(f"# round {round_ + 1} {name}: {result['seconds']:.2f} s, "
                          f"{result['cpu_seconds']:.2f} s CPU, {result['rss_mb']:.0f} MB",
                          file=sys.stderr, flush=True)
        size_1, _ = asyncio.run(_sizes(one))
        size_16, biggest_16 = asyncio.run(_sizes(sixteen))
    finally:
        if not args.keep:
            async def drop() -> None:
                admin = await asyncpg.connect(server)
                for name in ("revoc_crlspeed_1", "revoc_crlspeed_16"):
                    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await admin.close()
            asyncio.run(drop())
    summary: dict[str, Any] = {"entries": args.size, "crl_bytes_1": size_1,
                               "crl_bytes_16_total": size_16, "crl_bytes_16_largest": biggest_16}
    for name, runs in results.items():
        summary[name] = {"median_seconds": round(statistics.median(r["seconds"] for r in runs), 3),
                         "median_rss_mb": round(statistics.median(r["rss_mb"] for r in runs), 1),
                         "median_cpu_seconds": round(
                             statistics.median(r["cpu_seconds"] for r in runs), 3),
                         "seconds": [round(r["seconds"], 2) for r in runs],
                         "cpu_seconds": [round(r["cpu_seconds"], 2) for r in runs],
                         "rss_mb": [round(r["rss_mb"]) for r in runs]}
    # Ratios within each round (the same host load for both), then their median.
    for top, bottom in (("ours-16", "ours-1"), ("base-16", "base-1"), ("ours-1", "base-1"),
                        ("ours-16", "base-16")):
        if top in results and bottom in results:
            ratios = [a["seconds"] / b["seconds"] for a, b in zip(results[top], results[bottom],
                                                                  strict=True)]
            summary[f"{top} / {bottom}"] = {"median": round(statistics.median(ratios), 3),
                                            "rounds": [round(r, 2) for r in ratios]}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
