"""Driver of bench/failover/run: revoc on a pg_auto_failover pair, the primary killed under load.

Reports, for each path, the longest gap in service around the failover and checks that no
acknowledged revocation was lost and no CRL number went backwards:

- admin: `revoc.admin.revoke` in a loop over a multi-host DSN (target_session_attrs=read-write);
  a revocation counts as acknowledged when its transaction committed;
- ocsp: GET of a good certificate from `revoc serve` every 50 ms (the cache keeps answering);
- presign / publish: `revoc presign` and `revoc publish` processes; their gap is the time from
  the kill until a revocation made after it is signed / on a CRL.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from revoc import admin
from revoc.der.ocsp import cert_id_der, encode_ocsp_request
from revoc.model import HashAlgorithm, Reason
from revoc.signing import subject_public_key_bits
from tests.pki import make_ca

CERTS = 5000
GOOD_SERIAL = 0x10000


def write_index(path: Path) -> None:
    expiry = (datetime.now(UTC) + timedelta(days=365)).strftime("%y%m%d%H%M%SZ")
    with path.open("w") as out:
        for n in range(CERTS):
            out.write(f"V\t{expiry}\t\t{GOOD_SERIAL + n:X}\tunknown\t/CN=device {n}\n")


def cli(dsn: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REVOC_DATABASE_URL": dsn}
    result = subprocess.run([sys.executable, "-m", "revoc.cli", *args], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    if check and result.returncode:
        raise SystemExit(f"revoc {' '.join(args)}: {result.stderr}")
    return result


def primary_node(monitor_pgdata: str) -> str:
    out = subprocess.run(
        ["su", "postgres", "-s", "/bin/sh", "-c",
         f"pg_autoctl show state --pgdata {monitor_pgdata} --json"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PATH": "/usr/lib/postgresql/15/bin:" + os.environ["PATH"]}).stdout
    for node in json.loads(out):
        # wait_primary: a primary whose standby is gone, accepting writes (replication async
        # until a standby is back).
        if node.get("current_group_state") in ("primary", "wait_primary"):
            return str(node["nodename"])
    raise RuntimeError(f"no primary: {out}")


def kill_node(work: Path, node: str) -> None:
    """SIGKILL the node's keeper and its postmaster, as a crashed machine would."""
    pgdata = work / node
    subprocess.run(["pkill", "-KILL", "-f", f"pg_autoctl.*{pgdata}"], check=False)
    pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    # The postmaster and every backend of it: a SIGKILLed postmaster alone leaves its backends
    # running, and one waiting for a synchronous standby's ack would hang its client forever.
    subprocess.run(["pkill", "-KILL", "-P", str(pid)], check=False)
    os.kill(pid, signal.SIGKILL)


def start(name: str, env: dict[str, str], work: Path) -> subprocess.Popen[bytes]:
    extra = ["--port", "18080"] if name == "serve" else []
    with (work / f"{name}.log").open("w") as log:
        return subprocess.Popen([sys.executable, "-m", "revoc.cli", name, *extra], env=env,
                                stderr=log)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--monitor-pgdata", required=True)
    parser.add_argument("--seconds-before", type=float, default=8.0)
    parser.add_argument("--seconds-after", type=float, default=45.0)
    args = parser.parse_args()
    dsn, work = args.dsn, args.work
    pki = work / "pki"
    pki.mkdir()
    ca = make_ca("Failover CA")
    cert_path, key_path = ca.write(pki)
    write_index(pki / "index.txt")
    cli(dsn, "db", "upgrade")
    cli(dsn, "issuer", "add", "--name", "ca", "--cert", str(cert_path), "--key", str(key_path))
    cli(dsn, "cert", "import", "--issuer", "ca", "--openssl-index", str(pki / "index.txt"))
    cli(dsn, "presign", "--once", "--presign-processes", "1")
    sync = await (await asyncpg.connect(dsn)).fetchval("SHOW synchronous_standby_names")
    print(f"synchronous_standby_names on the primary: {sync!r}")

    env = {**os.environ, "REVOC_DATABASE_URL": dsn, "REVOC_LOG_LEVEL": "WARNING",
           "REVOC_PRESIGN_PROCESSES": "1", "REVOC_CRL_OUT": str(work / "crl")}
    procs = {name: start(name, env, work) for name in ("serve", "presign", "publish")}
    cert_id = cert_id_der(HashAlgorithm.SHA1, ca.cert.subject.public_bytes(),
                          subject_public_key_bits(ca.cert), GOOD_SERIAL)
    get_url = "http://127.0.0.1:18080/ocsp/" + base64.b64encode(
        encode_ocsp_request([cert_id])).decode()
    acked: dict[int, float] = {}
    ocsp_ok: list[float] = []
    stop = asyncio.Event()
    killed_at = 0.0

    async def revoke_loop() -> None:
        serial = GOOD_SERIAL + 1
        conn: asyncpg.Connection | None = None
        while not stop.is_set():
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(dsn, timeout=2, command_timeout=5)
                await admin.revoke(conn, admin.RevokeRequest(
                    issuer="ca", serial=serial, reason=Reason.superseded))
                acked[serial] = time.monotonic()
                serial += 1
            except Exception:  # any failure of the connection: not acknowledged, reconnect
                if conn is not None:
                    conn.terminate()
                conn = None
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.05)

    async def ocsp_loop() -> None:
        async with httpx.AsyncClient(timeout=1) as client:
            while not stop.is_set():
                try:
                    response = await client.get(get_url)
                    if response.status_code == 200 and len(response.content) > 100:
                        ocsp_ok.append(time.monotonic())
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)

    await asyncio.sleep(2)  # serve starting
    tasks = [asyncio.create_task(revoke_loop()), asyncio.create_task(ocsp_loop())]
    await asyncio.sleep(args.seconds_before)
    victim = primary_node(args.monitor_pgdata)
    killed_at = time.monotonic()
    kill_node(work, victim)
    print(f"killed {victim} (SIGKILL of its keeper and postmaster)", flush=True)
    await asyncio.sleep(args.seconds_after)
    print(f"load stopped; {len(acked)} revocations acknowledged", flush=True)
    stop.set()
    await asyncio.gather(*tasks)
    new_primary = primary_node(args.monitor_pgdata)
    print(f"new primary: {new_primary}", flush=True)

    def gap(times: list[float]) -> float:
        around = sorted(t for t in times if t > killed_at - 5)
        points = [killed_at - 5, *around, time.monotonic()]
        return max(b - a for a, b in itertools.pairwise(points))

    conn = await asyncpg.connect(dsn, timeout=10)
    rows = await conn.fetch("SELECT serial, status, change_seq FROM certificates "
                            "WHERE issuer_id = (SELECT id FROM issuers WHERE name = 'ca')")
    status = {int.from_bytes(bytes(r["serial"]), "big"): r["status"] for r in rows}
    lost = [s for s in acked if status.get(s) != "revoked"]
    after_kill = [s for s, t in acked.items() if t > killed_at]
    first_after = min(after_kill, default=None)
    deadline = time.monotonic() + 60
    signed_at = published_at = None
    while time.monotonic() < deadline and first_after is not None and (
            signed_at is None or published_at is None):
        pending = await conn.fetchval("SELECT count(*) FROM ocsp_pending WHERE serial = $1",
                                      first_after.to_bytes(3, "big"))
        if signed_at is None and pending == 0:
            signed_at = time.monotonic()
        on_crl = await conn.fetchval(
            "SELECT count(*) FROM crls c JOIN certificates x ON x.issuer_id = c.issuer_id "
            "WHERE x.serial = $1 AND c.max_change_seq >= x.change_seq",
            first_after.to_bytes(3, "big"))
        if published_at is None and on_crl:
            published_at = time.monotonic()
        await asyncio.sleep(0.2)
    numbers: dict[tuple[int, int, str], list[int]] = {}
    for row in await conn.fetch("SELECT issuer_id, shard, kind, number FROM crls ORDER BY id"):
        numbers.setdefault((row["issuer_id"], row["shard"], row["kind"]), []).append(
            int(row["number"]))
    backwards = sum(1 for series in numbers.values()
                    for a, b in itertools.pairwise(series) if b <= a)
    await conn.close()
    for name, proc in procs.items():
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = -9
        print(f"{name}: exit {code} after SIGTERM")
    write_gap = gap(list(acked.values()))
    print(json.dumps({
        "killed": victim, "new_primary": new_primary,
        "revocations_acknowledged": len(acked), "acknowledged_but_lost": len(lost),
        "crl_numbers_not_increasing": backwards, "crls": sum(len(v) for v in numbers.values()),
        "gap_seconds": {
            "admin_revoke": round(write_gap, 2),
            "ocsp_serve": round(gap(ocsp_ok), 2),
            "presign_first_change_after_kill": (round(signed_at - killed_at, 2)
                                                if signed_at else None),
            "publish_first_change_after_kill": (round(published_at - killed_at, 2)
                                                if published_at else None),
        },
    }, indent=2))
    if lost or backwards:
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
