"""Driver of bench/failover/run: revoc on a pg_auto_failover pair, the primary killed under load.

Measures, between 5 s before the kill and the end of the load, the longest gap in service of
each path, and checks that no acknowledged revocation was lost and no CRL number went backwards:

- ocsp_serve: GET of a cached good certificate from `revoc serve` every 50 ms; an answer is a
  200 with a signed response (tryLater, errors and timeouts of 1 s are not);
- admin_revoke: `revoc.admin.revoke` (what `revoc cert revoke` and the admin API call) in a loop
  on one connection over the multi-host DSN (target_session_attrs=read-write); acknowledged
  when its transaction committed, which with synchronous replication means the standby has it;
- cli_revoke: `revoc cert revoke` as a user runs it, one process after another (timeout 20 s);
- presign / publish: the running `revoc presign` and `revoc publish`; their gap is the time
  from the kill until the first revocation acknowledged after it is signed / on a CRL.

Every acknowledged serial must be `revoked` on the new primary. CRL numbers are checked twice:
in the database of the new primary (per scope, in publication order) and in the files that
`revoc publish` writes, read every 0.5 s during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
from cryptography import x509

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from revoc import admin
from revoc.der.ocsp import cert_id_der, encode_ocsp_request
from revoc.model import HashAlgorithm, Reason
from revoc.signing import subject_public_key_bits
from tests.pki import make_ca

CERTS = 5000
GOOD_SERIAL = 0x10000
CLI_SERIALS = GOOD_SERIAL + 3000  # `revoc cert revoke` takes serials from here on
PRIMARY_STATES = ("primary", "wait_primary", "single")


def write_index(path: Path) -> None:
    expiry = (datetime.now(UTC) + timedelta(days=365)).strftime("%y%m%d%H%M%SZ")
    with path.open("w") as out:
        for n in range(CERTS):
            out.write(f"V\t{expiry}\t\t{GOOD_SERIAL + n:X}\tunknown\t/CN=device {n}\n")


def cli(dsn: str, *args: str, check: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REVOC_DATABASE_URL": dsn}
    result = subprocess.run([sys.executable, "-m", "revoc.cli", *args], env=env,
                            capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode:
        raise SystemExit(f"revoc {' '.join(args)}: {result.stderr}")
    return result


def monitor_state(monitor_pgdata: str) -> list[dict[str, object]]:
    out = subprocess.run(
        ["su", "postgres", "-s", "/bin/sh", "-c",
         f"pg_autoctl show state --pgdata {monitor_pgdata} --json"],
        capture_output=True, text=True, check=True, timeout=30,
        env={**os.environ, "PATH": "/usr/lib/postgresql/15/bin:" + os.environ["PATH"]}).stdout
    nodes: list[dict[str, object]] = json.loads(out)
    return nodes


def primary_node(monitor_pgdata: str) -> str | None:
    """The node the monitor assigned a primary role and that reported it (converged); a dead
    node keeps its last reported state, so the assigned one decides."""
    for node in monitor_state(monitor_pgdata):
        if (node.get("assigned_group_state") in PRIMARY_STATES
                and node.get("current_group_state") == node.get("assigned_group_state")):
            return str(node["nodename"])
    return None


def descendants(roots: set[int]) -> set[int]:
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def kill_node(work: Path, node: str) -> int:
    """SIGKILL everything of the node at once, as a crashed machine: its keeper (pg_autoctl and
    the children it renames, which would restart postgres), the postmaster and every backend.
    SIGSTOP first, so that nothing restarts anything between the kills. Returns the count."""
    pgdata = str(work / node)
    roots = {int((work / node / "postmaster.pid").read_text().split()[0])}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "pg_autoctl" in cmdline and pgdata in cmdline:
                roots.add(int(entry.name))
    victims = descendants(roots)
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    return len(victims)


def crl_number(path: Path) -> int | None:
    try:
        crl = x509.load_der_x509_crl(path.read_bytes())
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(name: str, env: dict[str, str], work: Path) -> subprocess.Popen[bytes]:
    with (work / f"{name}.log").open("w") as log:
        return subprocess.Popen([sys.executable, "-m", "revoc.cli", name], env=env, stderr=log)


@dataclass
class Run:
    killed_at: float = 0.0
    load_end: float = 0.0
    acked: dict[int, float] = field(default_factory=dict)  # serial -> when acknowledged
    cli_acked: dict[int, float] = field(default_factory=dict)
    ocsp_ok: list[float] = field(default_factory=list)
    ocsp_other: dict[str, int] = field(default_factory=dict)  # non-answers after the kill
    crl_files: dict[str, list[int]] = field(default_factory=dict)
    failover_at: float | None = None
    new_primary: str | None = None

    def gap(self, times: list[float] | dict[int, float]) -> float:
        """Longest interval without service between 5 s before the kill and the load's end."""
        values = times.values() if isinstance(times, dict) else times
        start = self.killed_at - 5
        inside = sorted(t for t in values if start < t <= self.load_end)
        points = [start, *inside, self.load_end]
        return max(b - a for a, b in itertools.pairwise(points))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--monitor-pgdata", required=True)
    parser.add_argument("--seconds-before", type=float, default=8.0)
    parser.add_argument("--seconds-after", type=float, default=30.0)
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
    conn0 = await asyncpg.connect(dsn)
    sync = await conn0.fetchval("SHOW synchronous_standby_names")
    await conn0.close()
    print(f"synchronous_standby_names on the primary: {sync!r}", flush=True)

    port = free_port()
    crl_out = work / "crl"
    env = {**os.environ, "REVOC_DATABASE_URL": dsn, "REVOC_LOG_LEVEL": "WARNING",
           "REVOC_PRESIGN_PROCESSES": "1", "REVOC_CRL_OUT": str(crl_out),
           "REVOC_PORT": str(port), "REVOC_HOST": "127.0.0.1"}
    procs = {name: start(name, env, work) for name in ("serve", "presign", "publish")}
    stopped: dict[str, float | None] = {}
    run = Run()
    try:
        await measure(args, dsn, work, ca, port, crl_out, run)
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        for name, proc in procs.items():
            try:
                await asyncio.to_thread(proc.wait, max(0.1, 30 - (time.monotonic() - t0)))
                stopped[name] = round(time.monotonic() - t0, 2)
            except subprocess.TimeoutExpired:
                proc.kill()
                stopped[name] = None
    await report(dsn, run, stopped)


async def measure(args: argparse.Namespace, dsn: str, work: Path, ca: object, port: int,
                  crl_out: Path, run: Run) -> None:
    cert = ca.cert  # type: ignore[attr-defined]
    cert_id = cert_id_der(HashAlgorithm.SHA1, cert.subject.public_bytes(),
                          subject_public_key_bits(cert), GOOD_SERIAL)
    get_url = f"http://127.0.0.1:{port}/ocsp/" + base64.b64encode(
        encode_ocsp_request([cert_id])).decode()
    stop = asyncio.Event()

    async def revoke_loop() -> None:
        serial = GOOD_SERIAL + 1
        conn: asyncpg.Connection | None = None
        while not stop.is_set():
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(dsn, timeout=2)
                # No command timeout: a commit waiting for the standby is either confirmed or
                # its connection dies; a cancelled wait would commit locally, unconfirmed.
                await admin.revoke(conn, admin.RevokeRequest(
                    issuer="ca", serial=serial, reason=Reason.superseded))
                run.acked[serial] = time.monotonic()
                serial += 1
            except Exception:  # any failure of the connection: not acknowledged, reconnect
                if conn is not None:
                    conn.terminate()
                conn = None
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.05)

    async def cli_loop() -> None:
        serial = CLI_SERIALS
        while not stop.is_set():
            try:
                result = await asyncio.to_thread(
                    cli, dsn, "cert", "revoke", "--issuer", "ca", "--serial", f"{serial:X}",
                    "--reason", "superseded", check=False, timeout=20)
                if result.returncode == 0:
                    run.cli_acked[serial] = time.monotonic()
                    serial += 1
            except subprocess.TimeoutExpired:
                pass  # killed by the timeout: not acknowledged (the serial is tried again)

    async def ocsp_loop() -> None:
        async with httpx.AsyncClient(timeout=1) as client:
            while not stop.is_set():
                try:
                    response = await client.get(get_url)
                    if response.status_code == 200 and len(response.content) > 100:
                        run.ocsp_ok.append(time.monotonic())
                        await asyncio.sleep(0.05)
                        continue
                    outcome = f"{response.status_code} {len(response.content)} bytes"
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                if run.killed_at:
                    run.ocsp_other[outcome] = run.ocsp_other.get(outcome, 0) + 1
                await asyncio.sleep(0.05)

    async def crl_file_loop() -> None:
        while not stop.is_set():
            for name in ("ca.crl", "ca-delta.crl"):
                number = crl_number(crl_out / name)
                seen = run.crl_files.setdefault(name, [])
                if number is not None and (not seen or seen[-1] != number):
                    seen.append(number)
            await asyncio.sleep(0.5)

    # serve ready, and the answer the OCSP loop asks for cached, before any load or kill.
    async with httpx.AsyncClient(timeout=2) as client:
        deadline = time.monotonic() + 120
        while True:
            try:
                if ((await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
                        and len((await client.get(get_url)).content) > 100):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "revoc serve never became ready"
            await asyncio.sleep(0.2)
    tasks = [asyncio.create_task(loop()) for loop in (revoke_loop, cli_loop, ocsp_loop,
                                                      crl_file_loop)]
    await asyncio.sleep(args.seconds_before)
    victim = await asyncio.to_thread(primary_node, args.monitor_pgdata)
    assert victim is not None, "no primary before the kill"
    run.killed_at = time.monotonic()
    count = await asyncio.to_thread(kill_node, work, victim)
    print(f"killed {victim}: SIGKILL of its keeper, postmaster and backends ({count} "
          "processes)", flush=True)
    deadline = run.killed_at + args.seconds_after
    while time.monotonic() < deadline:
        if run.failover_at is None:
            primary = await asyncio.to_thread(primary_node, args.monitor_pgdata)
            if primary is not None and primary != victim:
                run.failover_at, run.new_primary = time.monotonic(), primary
                print(f"failover: {primary} is primary after "
                      f"{run.failover_at - run.killed_at:.1f} s", flush=True)
        await asyncio.sleep(0.5)
    run.load_end = time.monotonic()
    stop.set()
    await asyncio.gather(*tasks)
    print(f"load stopped; {len(run.acked)} + {len(run.cli_acked)} revocations acknowledged",
          flush=True)


async def report(dsn: str, run: Run, stopped: dict[str, float | None]) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    rows = await conn.fetch("SELECT serial, status FROM certificates "
                            "WHERE issuer_id = (SELECT id FROM issuers WHERE name = 'ca')")
    status = {int.from_bytes(bytes(r["serial"]), "big"): r["status"] for r in rows}
    acked = {**run.acked, **run.cli_acked}
    lost = sorted(s for s in acked if status.get(s) != "revoked")
    # The first revocation made on the new primary: acknowledged more than 1 s after the kill
    # (one in flight at the kill may be acknowledged just after it, by the old primary).
    after_kill = [s for s, t in acked.items() if t > run.killed_at + 1]
    first_after = min(after_kill, key=lambda s: acked[s], default=None)
    # How long until the first revocation acknowledged after the kill was signed and on a CRL:
    # the presigner and publisher ran on through the failover (measured by polling, bounded).
    signed_at = published_at = None
    deadline = time.monotonic() + 60
    serial_bytes = first_after.to_bytes(3, "big") if first_after is not None else b""
    while first_after is not None and time.monotonic() < deadline and (
            signed_at is None or published_at is None):
        if signed_at is None:
            # produced_at has whole seconds: this gap is known to within 1 s.
            signed_at = await conn.fetchval(
                "SELECT extract(epoch FROM min(r.produced_at)) FROM certificates x "
                "JOIN ocsp_responses r ON r.issuer_id = x.issuer_id AND r.serial = x.serial "
                "AND r.cert_change_seq >= x.change_seq WHERE x.serial = $1", serial_bytes)
        if published_at is None:
            published_at = await conn.fetchval(
                "SELECT extract(epoch FROM min(c.created_at)) FROM crls c "
                "JOIN certificates x ON x.issuer_id = c.issuer_id "
                "WHERE x.serial = $1 AND c.max_change_seq >= x.change_seq", serial_bytes)
        await asyncio.sleep(0.2)
    kill_wall = time.time() - (time.monotonic() - run.killed_at)
    numbers: dict[tuple[int, int, str], list[int]] = {}
    for row in await conn.fetch("SELECT issuer_id, shard, kind, number FROM crls ORDER BY id"):
        numbers.setdefault((row["issuer_id"], row["shard"], row["kind"]), []).append(
            int(row["number"]))
    await conn.close()
    backwards = sum(1 for series in numbers.values()
                    for a, b in itertools.pairwise(series) if b <= a)
    backwards_files = sum(1 for series in run.crl_files.values()
                          for a, b in itertools.pairwise(series) if b <= a)
    result = {
        "new_primary": run.new_primary,
        "failover_seconds": (round(run.failover_at - run.killed_at, 2)
                             if run.failover_at else None),
        "revocations_acknowledged": {"admin": len(run.acked), "cli": len(run.cli_acked)},
        "acknowledged_but_lost": len(lost),
        "crl_numbers_not_increasing": {"database": backwards, "files": backwards_files},
        "crls_in_database": sum(len(v) for v in numbers.values()),
        "crl_files_seen": {k: len(v) for k, v in run.crl_files.items()},
        "gap_seconds": {
            "ocsp_serve": round(run.gap(run.ocsp_ok), 2),
            "admin_revoke": round(run.gap(run.acked), 2),
            "cli_revoke": round(run.gap(run.cli_acked), 2),
            "presign_first_change_after_kill": (round(float(signed_at) - kill_wall, 2)
                                                if signed_at else None),
            "publish_first_change_after_kill": (round(float(published_at) - kill_wall, 2)
                                                if published_at else None),
        },
        "ocsp_non_answers_after_kill": run.ocsp_other,
        "stopped_after_sigterm_seconds": stopped,
    }
    print(json.dumps(result, indent=2), flush=True)
    if lost:
        print(f"LOST: {lost[:20]}", flush=True)
    if lost or backwards or backwards_files or run.failover_at is None:
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
