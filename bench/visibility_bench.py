"""Issue 13 benchmarks (points 1 and 6), end to end with PostgreSQL and the `revoc` commands
as an operator runs them (not a test):

- mass: N certificates of one issuer with 16 shards; `revoc cert revoke --serials-file` of all
  of them, then `revoc presign --once` (every OCSP response re-signed: the queue drained) and
  `revoc publish --once` (every shard's full and delta CRL); the time and rate of each step.
- edge: an unsharded issuer whose full CRL lists N revoked certificates; `revoc serve` and
  `revoc publish` running (REVOC_CRL_FULL_ON_CHANGE_DELAY as given, default 0); one more
  `revoc cert revoke`, then the time until GET /crl/{issuer}.crl serves a new full CRL that
  lists it (median of --repeat revocations).

    REVOC_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \
        python bench/visibility_bench.py [--size 1000000] [--only mass,edge] [--repeat 3]

Each run uses a database of its own (created and dropped). The machine may be shared: say so
next to the figures, and compare runs made in the same session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
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
import httpx
from cryptography import x509

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from revoc import db  # noqa: E402
from revoc.der.asn1 import integer_content  # noqa: E402
from tests.pki import make_ca  # noqa: E402

REVOC = str(Path(sys.executable).with_name("revoc"))
SHARDS = 16


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _with_database(server: str, name: str) -> str:
    parts = urlsplit(server)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _run(env: dict[str, str], *argv: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([REVOC, *argv], env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"revoc {' '.join(argv)} failed: {done.stderr.strip()}")
    return seconds


async def _load(dsn: str, name: str, n: int, shards: int, public: str, tmp: Path,
                env: dict[str, str]) -> int:
    ca = make_ca(f"{name} bench CA")
    cert, key = ca.write(tmp / name)
    argv = ["issuer", "add", "--name", name, "--cert", str(cert), "--key", str(key)]
    if shards:
        argv += ["--crl-shards", str(shards)]
    _run(env, *argv)
    conn = await asyncpg.connect(dsn)
    try:
        issuer_id: int = await conn.fetchval("SELECT id FROM issuers WHERE name = $1", name)
        not_after = datetime.now(UTC) + timedelta(days=90)

        def rows() -> Any:
            for i in range(1, n + 2):  # one more, good, for the edge revocation
                serial = (0x40 << 120) + i
                shard = serial % shards if shards else None
                url = (f"{public}/crl/{name}/{shard}.crl" if shards
                       else f"{public}/crl/{name}.crl")
                yield issuer_id, integer_content(serial), not_after, url, shard

        await conn.copy_records_to_table(
            "certificates", columns=["issuer_id", "serial", "not_after", "crl_url", "shard"],
            records=rows())
    finally:
        await conn.close()
    serials = tmp / f"{name}.serials"
    serials.write_text("".join(f"{(0x40 << 120) + i:X}\n" for i in range(1, n + 1)))
    return issuer_id


async def bench_mass(dsn: str, n: int, env: dict[str, str], tmp: Path) -> dict[str, Any]:
    await _load(dsn, "mass", n, SHARDS, env["REVOC_PUBLIC_URL"], tmp, env)
    revoke = _run(env, "cert", "revoke", "--issuer", "mass", "--serials-file",
                  str(tmp / "mass.serials"), "--reason", "keyCompromise")
    presign = _run(env, "presign", "--once")
    publish = _run(env, "publish", "--once")
    conn = await asyncpg.connect(dsn)
    try:
        pending = await conn.fetchval("SELECT count(*) FROM ocsp_pending")
        listed = await conn.fetchval(
            "SELECT sum(entries) FROM (SELECT DISTINCT ON (shard) entries FROM crls "
            "WHERE kind = 'full' ORDER BY shard, number DESC) s")
    finally:
        await conn.close()
    total = revoke + presign + publish
    return {"certificates": n, "shards": SHARDS,
            "revoke_seconds": round(revoke, 2), "revoke_per_second": round(n / revoke),
            "presign_seconds": round(presign, 2),
            "hashes": env["REVOC_OCSP_HASHES"],
            "responses_per_second": round(
                len(env["REVOC_OCSP_HASHES"].split(",")) * n / presign),
            "publish_seconds": round(publish, 2),
            "entries_per_second": round(n / publish),
            "total_seconds": round(total, 2), "ocsp_pending_after": pending,
            "entries_listed": listed}


async def bench_edge(dsn: str, n: int, repeat: int, env: dict[str, str], tmp: Path,
                     delay: str) -> dict[str, Any]:
    port = _free_port()
    public = f"http://127.0.0.1:{port}"
    env = {**env, "REVOC_PORT": str(port), "REVOC_PUBLIC_URL": public,
           "REVOC_CRL_FULL_ON_CHANGE_DELAY": delay}
    await _load(dsn, "wide", n + repeat, 0, public, tmp, env)
    # All but the last `repeat` certificates are revoked and on the full CRL before we start.
    lines = (tmp / "wide.serials").read_text().splitlines()
    (tmp / "wide.first").write_text("\n".join(lines[:n]) + "\n")
    _run(env, "cert", "revoke", "--issuer", "wide", "--serials-file", str(tmp / "wide.first"),
         "--reason", "superseded")
    first_publish = _run(env, "publish", "--once")
    daemons = [subprocess.Popen([REVOC, name], env=env, stdout=subprocess.DEVNULL,  # noqa: ASYNC220
                                stderr=subprocess.DEVNULL, start_new_session=True)
               for name in ("serve", "publish")]
    seconds: list[float] = []
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if (await client.get(f"{public}/crl/wide.crl")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("revoc serve did not come up")
                await asyncio.sleep(0.2)
            for k in range(repeat):
                serial = int(lines[n + k], 16)
                started = time.perf_counter()
                _run(env, "cert", "revoke", "--issuer", "wide", "--serial", lines[n + k],
                     "--reason", "keyCompromise")
                while True:
                    crl = x509.load_der_x509_crl(
                        (await client.get(f"{public}/crl/wide.crl")).content)
                    if crl.get_revoked_certificate_by_serial_number(serial) is not None:
                        break
                    if time.perf_counter() - started > 600:
                        raise SystemExit("no new full CRL within 600 s")
                    await asyncio.sleep(0.05)
                seconds.append(time.perf_counter() - started)
    finally:
        for proc in daemons:
            proc.send_signal(signal.SIGTERM)
        for proc in daemons:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    return {"entries": n, "full_on_change_delay": delay,
            "first_publish_once_seconds": round(first_publish, 2),
            "revoke_to_full_crl_over_http_seconds": [round(s, 2) for s in seconds],
            "median_seconds": round(statistics.median(seconds), 2)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--only", default="mass,edge")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--delay", default="0", help="REVOC_CRL_FULL_ON_CHANGE_DELAY")
    parser.add_argument("--hashes", default="sha1,sha256",
                        help="REVOC_OCSP_HASHES: the CertID hashes pre-signed (mass)")
    args = parser.parse_args()
    server = os.environ.get("REVOC_DATABASE_URL")
    if not server:
        raise SystemExit("set REVOC_DATABASE_URL to a PostgreSQL server")
    results: dict[str, Any] = {}
    for part in args.only.split(","):
        name = f"revoc_edge_{secrets.token_hex(4)}"
        admin = await asyncpg.connect(server)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        dsn = _with_database(server, name)
        conn = await asyncpg.connect(dsn)
        await db.upgrade(conn)
        await conn.close()
        try:
            with tempfile.TemporaryDirectory() as directory:
                tmp = Path(directory)
                (tmp / "mass").mkdir()
                (tmp / "wide").mkdir()
                env = {k: v for k, v in os.environ.items() if not k.startswith("REVOC_")}
                env.update({"REVOC_DATABASE_URL": dsn, "REVOC_CRL_OUT": str(tmp / "crl"),
                            "REVOC_PUBLIC_URL": "http://crl.bench.example",
                            "REVOC_LOG_LEVEL": "WARNING", "REVOC_OCSP_HASHES": args.hashes})
                if part == "mass":
                    results["mass"] = await bench_mass(dsn, args.size, env, tmp)
                elif part == "edge":
                    results["edge"] = await bench_edge(dsn, args.size, args.repeat, env, tmp,
                                                       args.delay)
                print(json.dumps({part: results[part]}), flush=True)
        finally:
            admin = await asyncpg.connect(server)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
