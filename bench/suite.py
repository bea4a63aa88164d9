"""`bench/run`: revoc side by side with nginx and two open-source OCSP responders, its cold and
mixed paths, and how its cost grows with the number of certificates (issue 6, items 3 and 4).

One run, on this machine, every server pinned to core 0 and wrk to core 1 (`wrk -t1 -c64
--latency`):

1. Warm hits, POST and GET, of one pre-signed response: nginx serving the same bytes as a static
   file (the ceiling), `revoc serve` with 1 and 2 workers, `openssl ocsp -port` (signs every
   answer live from an index.txt) and cfssl's `ocspserve` (serves a file of pre-signed responses).
2. Mixed path: warm traffic over 10k certificates while 10% of them are revoked during the run
   (`revoc presign` running, re-signing); afterwards a sample must be served as revoked.
3. Growth, for each size N (10k, 100k, 1M known certificates, each in a fresh database): import
   (COPY path), presign with 2 processes, then a fresh `revoc serve` (1 worker): the cold path
   (every request a distinct certificate, so every one misses the cache and reads PostgreSQL),
   a warm-up requesting every certificate once, warm throughput over a random sample of 10k
   distinct requests, and the worker's memory (VmRSS from /proc).

Results go into the "Side by side (bench/run)" section of bench/RESULTS.md (other sections are
kept) and bench/results.png. Needs wrk, nginx, taskset, openssl and cfssl (golang-cfssl) on PATH;
a missing cfssl or openssl is reported in the results, not fatal. The database: the server of
REVOC_DATABASE_URL (fresh `revoc_bench_<hex>` databases, dropped afterwards), else an embedded
PostgreSQL under /tmp.

    bench/run [--quick] [--duration 10s] [--sizes 10000,100000,1000000] [--only side,mixed,growth]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
from cryptography.x509 import ocsp as x509_ocsp

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from import_index import is_revoked, serial_of, write_index  # noqa: E402
from ocsp_bench import (  # noqa: E402
    find_tools,
    free_port,
    fresh_database,
    get_path,
    nginx_command,
    postgres_server,
    process,
    replace_section,
    revoc_env,
    revoc_serve_command,
    wait_http,
    wait_ready,
    write_nginx_conf,
    write_post_lua,
    wrk,
)

from responder.presign_queue import presign_once  # noqa: E402
from revoc import admin  # noqa: E402
from revoc.db import create_pool, upgrade  # noqa: E402
from revoc.der.asn1 import integer_content  # noqa: E402
from revoc.der.ocsp import cert_id_der, encode_ocsp_request  # noqa: E402
from revoc.importer import import_openssl_index  # noqa: E402
from revoc.model import HashAlgorithm, Reason  # noqa: E402
from revoc.settings import Settings  # noqa: E402
from revoc.signing import subject_public_key_bits  # noqa: E402
from tests.pki import Party, make_ca  # noqa: E402
from tests.world import GOOD, REVOKED, World, setup_world  # noqa: E402

SECTION = "## Side by side (bench/run)"
CHART = BENCH / "results.png"
SERVERS = ("nginx", "revoc 1 worker", "revoc 2 workers", "openssl ocsp", "cfssl ocspserve")
METHODS = ("POST", "GET")


@dataclass
class Profile:
    duration: str
    connections: int
    sizes: list[int]
    sample: int  # distinct requests the warm growth runs cycle through
    mixed_set: int  # certificates of the mixed run (10% of them revoked during it)
    mixed_duration: str
    warm_all_max: int  # sizes up to this are warmed entirely; above it only the sample


# Sizes above warm_all_max are warmed through their sample only: wrk's Lua start-up on a file of
# two million bodies outlasts the 5 s warm-up chunks (the 1M warm-up made no progress).
FULL = Profile("10s", 64, [10_000, 100_000, 1_000_000], 10_000, 10_000, "20s", 100_000)
QUICK = Profile("3s", 64, [10_000, 100_000], 10_000, 5_000, "6s", 100_000)


@dataclass
class Results:
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    profile: Profile | None = None
    quick: bool = False
    versions: dict[str, str] = field(default_factory=dict)
    response_size: int = 0
    side: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    mixed: dict[str, Any] = field(default_factory=dict)
    growth: list[dict[str, Any]] = field(default_factory=list)
    wall: float = 0.0


# ---------------------------------------------------------------- requests and wrk scripts


class RequestMaker:
    """SHA-1 CertID requests for many serials of one issuer, fast: every serial of
    import_index.serial_of has the same DER length, so a request is prefix + serial + suffix."""

    def __init__(self, ca_cert: Any) -> None:
        self._name = ca_cert.subject.public_bytes()
        self._key = subject_public_key_bits(ca_cert)
        probe = serial_of(1)
        sample = self.slow(probe)
        content = integer_content(probe)
        at = sample.rindex(content)
        self._prefix, self._suffix, self._width = sample[:at], sample[at + len(content):], len(
            content)
        check = serial_of(12345)
        assert self(check) == self.slow(check)

    def slow(self, serial: int) -> bytes:
        return encode_ocsp_request([cert_id_der(HashAlgorithm.SHA1, self._name, self._key,
                                                serial)])

    def __call__(self, serial: int) -> bytes:
        content = integer_content(serial)
        if len(content) != self._width:
            return self.slow(serial)
        return self._prefix + content + self._suffix


def write_bodies(work: Path, name: str, bodies: Sequence[bytes]) -> tuple[Path, int]:
    """The request bodies (all of one length) back to back in one file, for write_cycle_lua."""
    size = len(bodies[0])
    assert all(len(body) == size for body in bodies), "bodies differ in length"
    data = work / f"{name}.bin"
    data.write_bytes(b"".join(bodies))
    return data, size


def write_cycle_lua(work: Path, name: str, bodies: Sequence[bytes] | tuple[Path, int],
                    limit: int = 0, start: int = 0) -> Path:
    """A wrk script POSTing the bodies in turn from index `start`; with limit > 0 the thread stops
    sending after that many requests. (wrk itself still runs until -d is over: its main thread
    sleeps the whole duration, so warm_pass runs it in short chunks.)"""
    data, size = bodies if isinstance(bodies, tuple) else write_bodies(work, name, bodies)
    lua = work / f"{name}.lua"
    lua.write_text(textwrap.dedent(f"""
        local f = io.open("{data}", "rb")
        local data = f:read("*a")
        f:close()
        local size = {size}
        local count = #data / size
        local bodies = {{}}
        for k = 0, count - 1 do
            bodies[k + 1] = data:sub(k * size + 1, (k + 1) * size)
        end
        data = nil
        local i = {start}
        local limit = {limit}
        local headers = {{["Content-Type"] = "application/ocsp-request"}}
        request = function()
            i = i + 1
            if limit > 0 and i > {start} + limit then
                wrk.thread:stop()
            end
            return wrk.format("POST", nil, headers, bodies[(i - 1) % count + 1])
        end
    """))
    return lua


def warm_pass(url: str, work: Path, name: str, bodies: Sequence[bytes],
              connections: int, chunk: float = 5.0) -> dict[str, float]:
    """Request every body once: wrk runs of `chunk` seconds, each starting where the previous
    one's completed requests ended (requests in flight at a chunk's end may be lost; the next
    chunk overlaps by `connections` to cover them)."""
    data = write_bodies(work, name, bodies)
    offset, requests, started = 0, 0, time.monotonic()
    while offset < len(bodies):
        remaining = len(bodies) - offset
        lua = write_cycle_lua(work, name, data, limit=remaining + connections, start=offset)
        figures = wrk(url, f"{chunk:g}s", connections, lua)
        done = int(figures["requests"])
        requests += done
        if done >= remaining:
            break
        if done <= connections:
            raise SystemExit(f"warm-up against {url} made no progress")
        offset += done - connections
    elapsed = time.monotonic() - started
    return {"requests": requests, "seconds": elapsed, "rps": requests / elapsed}
def ocsp_status(der: bytes) -> str:
    """'good', 'revoked', 'unknown' or the OCSPResponseStatus name of an error answer."""
    response = x509_ocsp.load_der_ocsp_response(der)
    if response.response_status is not x509_ocsp.OCSPResponseStatus.SUCCESSFUL:
        return response.response_status.name.lower()
    return response.certificate_status.name.lower()


def rss_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) of a process, from /proc."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _sep, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def metric(base: str, name: str) -> float | None:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([\d.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else None


# ---------------------------------------------------------------- versions


def versions(tools: dict[str, str], server_dsn: str) -> dict[str, str]:
    def run(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"({exc})"
        return (done.stdout + done.stderr).strip().splitlines()[0] if (
            done.stdout + done.stderr).strip() else "?"

    import uvicorn

    found = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{platform.system()} {platform.release()}",
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "uvicorn": uvicorn.__version__,
        "nginx": run([tools["nginx"], "-v"]).removeprefix("nginx version: nginx/"),
        "wrk": " ".join(run([tools["wrk"], "-v"]).split()[1:3]),
        "openssl": run(["openssl", "version"]) if shutil.which("openssl") else "not installed",
        "cfssl": (" ".join(run(["cfssl", "version"]).split()) + "; " + _cfssl_version()
                  if shutil.which("cfssl") else "not installed"),
        "postgresql": asyncio.run(_pg_version(server_dsn)),
    }
    return found


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def _cfssl_version() -> str:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "golang-cfssl"],
                          capture_output=True, text=True)
    return f"Debian golang-cfssl {done.stdout.strip()}" if done.returncode == 0 else "?"


async def _pg_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


# ---------------------------------------------------------------- the main world


async def prepare_main(dsn: str, work: Path, extra: int) -> World:
    """tests/world.py's world (issuer `ca`, leaves GOOD/REVOKED/LATER) plus `extra`
    imported certificates (import_index's serials, 10% revoked), all pre-signed."""
    conn = await asyncpg.connect(dsn)
    try:
        await upgrade(conn)
    finally:
        await conn.close()
    pool = await create_pool(dsn)
    try:
        world = await setup_world(pool, dsn, work / "pki")
        index = work / "main-index.txt"
        write_index(index, extra)
        async with pool.acquire() as conn:
            await import_openssl_index(conn, "ca", index)
        report = await presign_once(pool, replace(world.settings, presign_processes=2))
        assert report.ok, report
    finally:
        await pool.close()
    return world


# ---------------------------------------------------------------- 1. side by side


def side_by_side(results: Results, prof: Profile, tools: dict[str, str], work: Path,
                 dsn: str, world: World, extra: int) -> None:
    request = world.request(GOOD)
    post_lua = write_post_lua(work, request, "side-post")
    raw_get = get_path(request)  # revoc and nginx: /ocsp/<base64>
    root_get = "/" + quote(base64.b64encode(request).decode(), safe="")  # openssl, cfssl
    env = revoc_env(dsn)
    run = results.side

    # wrk connects once to each address and closes without a word before it starts;
    # `openssl ocsp -port` (3.0) then hangs on that connection, spinning, and answers nobody.
    # So its runs use scripts that skip the probe (no effect on the other servers).
    no_probe = "wrk.resolve = function(host, service) wrk.addrs = wrk.lookup(host, service) end\n"
    post_np = work / "side-post-noprobe.lua"
    post_np.write_text(no_probe + post_lua.read_text())
    get_np = work / "side-get-noprobe.lua"
    get_np.write_text(no_probe)

    def bench(server: str, base: str, get: str | None, post: str | None = "/",
              probe: bool = True) -> None:
        """POST to base+post and GET base+get (each unless None), each for one wrk run."""
        for method, url, script in (("POST", base + post if post else None,
                                     post_lua if probe else post_np),
                                    ("GET", base + get if get else None,
                                     None if probe else get_np)):
            if url is None:
                continue
            try:
                run[server, method] = wrk(url, prof.duration, prof.connections, script)
            except subprocess.CalledProcessError as exc:
                results.notes.append(f"{server} {method}: wrk failed: {exc.stderr.strip()}")
            print(f"  {server} {method}: {fmt(run.get((server, method)))}", flush=True)

    # revoc, 1 then 2 workers; the first gives the bytes every other server serves.
    response = b""
    for workers in (1, 2):
        server = f"revoc {workers} worker" + ("s" if workers > 1 else "")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with process(revoc_serve_command(port, workers), env, log=work / "revoc-serve.log"):
            wait_ready(base)
            answer = httpx.post(f"{base}/ocsp", content=request).content
            assert ocsp_status(answer) == "good", ocsp_status(answer)
            assert httpx.get(base + raw_get).content == answer
            response = response or answer
            bench(server, base, raw_get, "/ocsp")
    results.response_size = len(response)
    static = work / "www" / "ocsp"
    static.mkdir(parents=True, exist_ok=True)
    (static / "response.der").write_bytes(response)

    # nginx: the same bytes as a static file, for every path and method.
    port = free_port()
    with process(nginx_command(tools["nginx"], write_nginx_conf(work, port, "side-nginx"))):
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/ocsp")
        assert httpx.post(base + "/ocsp", content=request).content == response
        bench("nginx", base, raw_get, "/ocsp")

    # openssl ocsp: single process, looks the serial up in an index.txt and signs every answer.
    if shutil.which("openssl"):
        openssl_ocsp(results, prof, work, world, extra, request, root_get, bench)
    else:
        results.notes.append("openssl is not installed: openssl ocsp not measured")

    if shutil.which("cfssl"):
        cfssl_ocspserve(results, work, dsn, world, request, root_get, bench)
    else:
        results.notes.append("cfssl is not installed (apt-get install -y golang-cfssl): "
                             "cfssl ocspserve not measured")


def openssl_ocsp(results: Results, prof: Profile, work: Path, world: World, extra: int,
                 request: bytes, root_get: str, bench: Any) -> None:
    index = work / "openssl-index.txt"
    write_index(index, extra)  # the certificates revoc knows, as `openssl ca` would list them
    with index.open("a") as out:
        for serial, leaf in world.leaves.items():
            if serial == REVOKED:
                out.write(f"R\t300101000000Z\t250601120000Z,keyCompromise\t{serial:04X}\t"
                          f"unknown\t/CN={leaf.name}\n")
            else:
                out.write(f"V\t300101000000Z\t\t{serial:04X}\tunknown\t/CN={leaf.name}\n")
    (work / "openssl-index.txt.attr").write_text("unique_subject = no\n")
    ca_pem = world.ca_pem
    ca_key = world.directory / f"{world.ca.name}.key"
    # A fresh server for each method: at the end of a wrk run connections close unanswered, and
    # one of those can leave `openssl ocsp` hanging (see no_probe in side_by_side).
    for method in METHODS:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        command = ["taskset", "-c", "0", "openssl", "ocsp", "-index", str(index), "-port",
                   str(port), "-rsigner", str(ca_pem), "-rkey", str(ca_key), "-CA", str(ca_pem),
                   "-ndays", "4", "-resp_no_certs", "-resp_key_id", "-ignore_err"]
        with process(command, log=work / "openssl-ocsp.log"):
            wait_http_post(base + "/", request)
            if method == "POST":
                answer = httpx.post(base + "/", content=request,
                                    headers={"Content-Type": "application/ocsp-request"}).content
                status = ocsp_status(answer)
                if status != "good":
                    results.notes.append(f"openssl ocsp answered {status!r} for a good "
                                         "certificate")
                bench("openssl ocsp", base, None, probe=False)
            else:
                try:
                    got = httpx.get(base + root_get, timeout=5)
                    get_ok = got.status_code == 200 and ocsp_status(got.content) == "good"
                except (httpx.HTTPError, ValueError):
                    get_ok = False
                if not get_ok:
                    results.notes.append("openssl ocsp did not answer GET; only POST measured")
                    continue
                bench("openssl ocsp", base, root_get, probe=False, post=None)


def cfssl_ocspserve(results: Results, work: Path, dsn: str, world: World, request: bytes,
                    root_get: str, bench: Any) -> None:
    """cfssl ocspserve -responses FILE: whitespace-separated base64 DER responses, keyed by
    serial number alone (2016 version); we give it revoc's pre-signed SHA-1 responses."""
    ders = asyncio.run(_sha1_responses(dsn))
    responses = work / "cfssl-responses.txt"
    responses.write_text("\n".join(base64.b64encode(der).decode() for der in ders) + "\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = ["taskset", "-c", "0", "cfssl", "ocspserve", "-address", "127.0.0.1",
               "-port", str(port), "-responses", str(responses), "-loglevel", "4"]
    with process(command, log=work / "cfssl.log"):
        wait_http_post(base + "/", request, timeout=60)
        answer = httpx.post(base + "/", content=request).content
        status = ocsp_status(answer)
        if status != "good":
            results.notes.append(f"cfssl ocspserve answered {status!r} for a good certificate")
        got = httpx.get(base + root_get, timeout=5)
        get_ok = got.status_code == 200 and got.content == answer
        if not get_ok:
            results.notes.append(
                f"cfssl ocspserve: GET answered {got.status_code}, so only POST is measured. "
                "The 2016 version (Debian golang-cfssl) mounts its handler at `/` and base64-"
                "decodes the whole URL path, leading `/` included, so no GET request can decode; "
                "later cfssl versions strip that slash.")
        bench("cfssl ocspserve", base, root_get if get_ok else None)


async def _sha1_responses(dsn: str) -> list[bytes]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT der FROM ocsp_responses_served WHERE hash_alg = $1",
                                HashAlgorithm.SHA1.value)
    finally:
        await conn.close()
    return [bytes(row["der"]) for row in rows]


def wait_http_post(url: str, body: bytes, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.post(url, content=body, timeout=2,
                       headers={"Content-Type": "application/ocsp-request"})
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


# ---------------------------------------------------------------- 2. mixed path


def mixed_path(results: Results, prof: Profile, work: Path, dsn: str, world: World) -> None:
    """Warm traffic over `mixed_set` good certificates while 10% of them are revoked, spread over
    the run, with `revoc presign` re-signing; then a sample must be served as revoked."""
    good = [n for n in range(prof.mixed_set * 2) if not is_revoked(n)][:prof.mixed_set]
    maker = RequestMaker(world.ca.cert)
    rng = random.Random(6)
    order = good[:]
    rng.shuffle(order)
    bodies = [maker(serial_of(n)) for n in order]
    victims = rng.sample(good, len(good) // 10)
    env = revoc_env(dsn)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = base + "/ocsp"
    presign = ["taskset", "-c", "0", sys.executable, "-m", "revoc.cli", "presign",
               "--presign-processes", "1"]
    with process(revoc_serve_command(port, 1), env, log=work / "revoc-serve.log") as served, \
            process(presign, env, log=work / "revoc-presign.log"):
        wait_ready(base)
        warm_pass(url, work, "mixed-warm", bodies, prof.connections)
        lua = write_cycle_lua(work, "mixed", bodies)
        revoker = Revoker(dsn, victims, seconds_of(prof.mixed_duration) * 0.8)
        revoker.start()
        try:
            figures = wrk(url, prof.mixed_duration, prof.connections, lua)
        finally:
            revoker.join()
        finished = time.monotonic()
        # Every revoked certificate must now be served as revoked (within a few seconds of its
        # revocation: the presigner re-signs, NOTIFY, the responder drops its cached answer).
        sample = rng.sample(victims, min(200, len(victims)))
        keep = rng.sample(sorted(set(good) - set(victims)), 200)
        pending = set(sample)
        with httpx.Client(base_url=base, timeout=5) as client:
            while pending and time.monotonic() - finished < 30:
                for n in sorted(pending):
                    if ocsp_status(client.post("/ocsp", content=maker(serial_of(n))).content) \
                            == "revoked":
                        pending.discard(n)
                if pending:
                    time.sleep(0.2)
            settle = time.monotonic() - finished
            still_good = sum(
                ocsp_status(client.post("/ocsp", content=maker(serial_of(n))).content) == "good"
                for n in keep)
        rss = rss_kb(served.pid)
    results.mixed = {
        **figures, "set": len(bodies), "revoked": revoker.done, "revoke_errors": revoker.errors,
        "revocations_per_s": revoker.done / max(revoker.elapsed, 1e-9),
        "sample": len(sample), "sample_revoked": len(sample) - len(pending),
        "settle_s": settle if not pending else None, "kept": len(keep), "kept_good": still_good,
        "rss_mb": rss.get("VmRSS", 0) / 1024,
    }
    print(f"  mixed: {fmt(figures)}; {revoker.done} revoked, {len(sample) - len(pending)}/"
          f"{len(sample)} sampled served as revoked, {still_good}/{len(keep)} others good",
          flush=True)


class Revoker(threading.Thread):
    """Revokes `victims` (import_index line numbers of issuer `ca`) evenly over `seconds` with
    revoc.admin.revoke, as `revoc cert revoke` does."""

    def __init__(self, dsn: str, victims: list[int], seconds: float) -> None:
        super().__init__(daemon=True)
        self.dsn, self.victims, self.seconds = dsn, victims, seconds
        self.done = self.errors = 0
        self.elapsed = 0.0

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        started = time.monotonic()
        try:
            for k, n in enumerate(self.victims):
                delay = started + self.seconds * k / len(self.victims) - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    await admin.revoke(conn, admin.RevokeRequest(
                        issuer="ca", serial=serial_of(n), reason=Reason.keyCompromise))
                    self.done += 1
                except admin.AdminError:
                    self.errors += 1
        finally:
            self.elapsed = time.monotonic() - started
            await conn.close()


def seconds_of(duration: str) -> float:
    from ocsp_bench import seconds

    return seconds(duration)


# ---------------------------------------------------------------- 3. growth


def growth_step(results: Results, prof: Profile, work: Path, server_dsn: str, ca: Party,
                size: int) -> None:
    """One size in a fresh database: import, presign, cold, warm-up, warm, memory."""
    step: dict[str, Any] = {"size": size}
    with fresh_database(server_dsn) as dsn:
        step.update(asyncio.run(_load(dsn, work, ca, size)))
        print(f"  {size:,}: import {step['import_s']:.1f} s, presign {step['presign_s']:.1f} s "
              f"({step['presign_rate']:,.0f} responses/s)", flush=True)
        maker = RequestMaker(ca.cert)
        rng = random.Random(size)
        order = list(range(size))
        rng.shuffle(order)
        everything = [maker(serial_of(n)) for n in order]
        sample = rng.sample(everything, min(size, prof.sample))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        url = base + "/ocsp"
        with process(revoc_serve_command(port, 1), revoc_env(dsn),
                     log=work / "revoc-serve.log") as served:
            wait_ready(base)
            step["rss_idle_mb"] = rss_kb(served.pid)["VmRSS"] / 1024
            # Cold: distinct certificates in random order, each the first request for it.
            cold = write_cycle_lua(work, f"cold-{size}", everything, limit=size)
            step["cold"] = wrk(url, prof.duration, prof.connections, cold)
            done_cold = int(step["cold"]["requests"])
            # wrk idles out the rest of -d once the script stops (dropping the requests still
            # in flight on its connections): its rate is then understated.
            if done_cold >= size - prof.connections:
                results.notes.append(
                    f"growth {size:,}: the cold run ran out of distinct certificates before "
                    f"{prof.duration} was over, so its requests/s is a lower bound.")
            # Warm-up: every certificate once (the cold run's share already is), or only the
            # sample above --warm-all-max (a miss costs what a cold request does).
            step["warmed_all"] = size <= prof.warm_all_max
            rest = everything[done_cold:] if step["warmed_all"] else sample
            started = time.monotonic()
            if rest:
                warm_pass(url, work, f"warmup-{size}", rest, prof.connections)
            step["warmup_s"] = time.monotonic() - started
            step["cache_entries"] = metric(base, "revoc_ocsp_cache_entries")
            step["cache_mb"] = (metric(base, "revoc_ocsp_cache_bytes") or 0) / 2**20
            warm = write_cycle_lua(work, f"warm-{size}", sample)
            step["warm"] = wrk(url, prof.duration, prof.connections, warm)
            step["rss_mb"] = rss_kb(served.pid)["VmRSS"] / 1024
            checks = {ocsp_status(httpx.post(url, content=maker(serial_of(n))).content):
                      n for n in order[:50]}
            step["statuses"] = sorted(checks)
            if set(checks) - {"good", "revoked"}:
                results.notes.append(f"growth {size:,}: answers other than good/revoked: "
                                     f"{sorted(checks)}")
    results.growth.append(step)
    print(f"  {size:,}: cold {fmt(step['cold'])}; warm {fmt(step['warm'])}; "
          f"RSS {step['rss_mb']:.0f} MB ({step['cache_entries']:.0f} cached)", flush=True)


async def _load(dsn: str, work: Path, ca: Party, size: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        await upgrade(conn)
        cert_path, key_path = ca.write(work / "growth-ca")
        await admin.add_issuer(conn, admin.IssuerRequest(
            name="grow", cert_path=str(cert_path), key_path=str(key_path)))
        index = work / f"growth-{size}.txt"
        await asyncio.to_thread(write_index, index, size)
        started = time.perf_counter()
        await import_openssl_index(conn, "grow", index)
        import_s = time.perf_counter() - started
        index.unlink()
    finally:
        await conn.close()
    pool = await create_pool(dsn)
    try:
        settings = Settings(database_url=dsn, presign_processes=2)
        report = await presign_once(pool, settings)
        assert report.ok, report
    finally:
        await pool.close()
    return {"import_s": import_s, "presign_s": report.seconds, "presign_rate": report.rate,
            "responses": report.responses,
            "hashes": ",".join(a.name.lower() for a in settings.ocsp_hashes)}


# ---------------------------------------------------------------- output


def fmt(figures: dict[str, float] | None) -> str:
    if not figures:
        return "-"
    return (f"{figures['rps']:,.0f} req/s, p50 {figures['p50']:.2f} ms, p99 "
            f"{figures['p99']:.2f} ms")


def write_markdown(results: Results) -> None:
    prof = results.profile
    assert prof is not None
    v = results.versions
    mode = "`bench/run --quick`" if results.quick else "`bench/run`"
    lines = [
        SECTION, "",
        f"Measured {v.get('date', '?')} by {mode} in {results.wall / 60:.1f} min. "
        f"Every server pinned to core 0, the load generator to core 1 (`wrk -t1 "
        f"-c{prof.connections} -d{prof.duration} --latency`, POST bodies from a Lua script). "
        "Chart: bench/results.png. Figures from one run on a small shared machine are noisy; "
        "compare ratios, not absolute numbers.", "",
        "Versions: " + "; ".join(f"{k} {v[k]}" for k in (
            "python", "uvicorn", "nginx", "openssl", "cfssl", "wrk", "postgresql") if k in v)
        + f". Machine: {v.get('machine', '?')} ({v.get('cpu', '?')}).", "",
    ]
    if results.side:
        lines += [
            "### Warm hits, side by side", "",
            f"One certificate, the same {results.response_size}-byte pre-signed response "
            "(SHA-1 CertID) requested over and over. nginx serves it as a static file for every "
            "path and method (the ceiling); `openssl ocsp -index index.txt -port` looks the "
            "serial up in an index.txt holding the same certificates and signs every answer "
            "live (P-256, single process, HTTP/1.0: one connection per request); `cfssl "
            "ocspserve -responses FILE` serves revoc's pre-signed SHA-1 responses loaded from a "
            "file of base64 DER.", "",
            "| server | method | requests/s | p50 ms | p99 ms | vs nginx |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for server in SERVERS:
            for method in METHODS:
                figures = results.side.get((server, method))
                if figures is None:
                    continue
                ceiling = results.side.get(("nginx", method))
                ratio = f"{figures['rps'] / ceiling['rps']:.0%}" if ceiling else "-"
                flag = ""
                if figures.get("non2xx") or figures.get("socket_errors"):
                    flag = (f" ({figures['non2xx']:.0f} non-2xx, "
                            f"{figures['socket_errors']:.0f} socket errors)")
                lines.append(f"| {server} | {method} | {figures['rps']:.0f}{flag} | "
                             f"{figures['p50']:.2f} | {figures['p99']:.2f} | {ratio} |")
        lines.append("")
    if results.mixed:
        m = results.mixed
        settle = (f"all of them within {m['settle_s']:.1f} s after the run ended"
                  if m["settle_s"] is not None else "NOT all of them within 30 s")
        lines += [
            "### Mixed path: revocations during the run", "",
            f"`revoc serve` (1 worker) and `revoc presign` (1 signing process) on core 0; wrk "
            f"cycles through {m['set']:,} distinct good certificates (cache warmed first) for "
            f"{prof.mixed_duration} while {m['revoked']:,} of them (10%) are revoked, evenly "
            f"over the run ({m['revocations_per_s']:.0f}/s, revoc.admin.revoke as `revoc cert "
            "revoke` does); each revocation is re-signed by the presigner and drops the "
            "responder's cached answer.", "",
            "| path | requests/s | p50 ms | p99 ms | non-2xx |",
            "|---|---:|---:|---:|---:|",
            f"| warm + 10% revoked during the run | {m['rps']:.0f} | {m['p50']:.2f} | "
            f"{m['p99']:.2f} | {m['non2xx']:.0f} |", "",
            f"Afterwards {m['sample_revoked']}/{m['sample']} sampled revoked certificates were "
            f"served as revoked ({settle}), and {m['kept_good']}/{m['kept']} sampled others "
            f"still as good. Responder VmRSS after the run: {m['rss_mb']:.0f} MB.", "",
        ]
    if results.growth:
        lines += [
            "### Growth: certificates known", "",
            "Each size in a fresh database: `import` is revoc.importer (the COPY path of `revoc "
            "cert import --openssl-index`, 10% revoked); `presign` is presign_once with 2 "
            "signing processes, P-256 CA key, every certificate x "
            f"{results.growth[0]['hashes']} CertIDs. Then a fresh `revoc serve` (1 worker): "
            "**cold** = wrk requests distinct certificates in random order, each the first "
            "request for it, so every answer misses the cache and comes from PostgreSQL; "
            "**warm** = after every certificate was requested once, wrk cycles through a random "
            f"sample of {prof.sample:,} of them. RSS is the worker's VmRSS after the warm run; "
            "`cached` is the responder's cache size then (all N unless N > --warm-all-max; the "
            "cache fills on demand, so memory follows the certificates asked about, not those "
            "known).", "",
            "| certificates | import s | presign s | responses/s | cold req/s | cold p50/p99 "
            "ms | warm req/s | warm p50/p99 ms | cached | RSS MB (idle) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in results.growth:
            cold, warm = s["cold"], s["warm"]
            lines.append(
                f"| {s['size']:,} | {s['import_s']:.1f} | {s['presign_s']:.1f} | "
                f"{s['presign_rate']:,.0f} | {cold['rps']:.0f} | {cold['p50']:.1f} / "
                f"{cold['p99']:.1f} | {warm['rps']:.0f} | {warm['p50']:.2f} / "
                f"{warm['p99']:.2f} | {s['cache_entries'] or 0:,.0f} | {s['rss_mb']:.0f} "
                f"({s['rss_idle_mb']:.0f}) |")
        lines.append("")
    if results.notes:
        lines += ["Notes:", "", *[f"- {note}" for note in results.notes], ""]
    replace_section(SECTION, "\n".join(lines) + "\n")


def write_chart(results: Results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    ax = axes[0][0]
    labels, ratios, colors = [], [], []
    for server in SERVERS:
        for method in METHODS:
            figures, ceiling = results.side.get((server, method)), results.side.get(
                ("nginx", method))
            if figures and ceiling:
                labels.append(f"{server}\n{method}")
                ratios.append(100 * figures["rps"] / ceiling["rps"])
                colors.append("tab:blue" if method == "POST" else "tab:orange")
    if not labels:
        ax.text(0.5, 0.5, "not measured in this run", ha="center", transform=ax.transAxes)
    ax.barh(labels[::-1], ratios[::-1], color=colors[::-1])
    for y, value in enumerate(ratios[::-1]):
        ax.text(value, y, f" {value:.0f}%", va="center", fontsize=8)
    ax.set_xlabel("requests/s, % of nginx serving the same bytes")
    ax.set_title("Warm hits, one core each (blue POST, orange GET)")
    ax.tick_params(axis="y", labelsize=7)

    growth = results.growth
    sizes = [s["size"] for s in growth]
    ax = axes[0][1]
    if growth:
        ax.plot(sizes, [s["warm"]["rps"] for s in growth], "o-", label="warm (cache hit)")
        ax.plot(sizes, [s["cold"]["rps"] for s in growth], "s-", label="cold (PostgreSQL)")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.legend()
    ax.set_xlabel("certificates known")
    ax.set_ylabel("requests/s (1 worker)")
    ax.set_title("Responder throughput vs certificates known")
    ax = axes[1][0]
    if growth:
        ax.plot(sizes, [s["rss_mb"] for s in growth], "o-", label="VmRSS after warm run")
        ax.plot(sizes, [s["rss_idle_mb"] for s in growth], "s--", label="VmRSS at start")
        ax.plot(sizes, [s["cache_mb"] for s in growth], "^:", label="cache's own estimate")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.legend()
    ax.set_xlabel("certificates known")
    ax.set_ylabel("MB")
    ax.set_title("Responder memory (1 worker)")
    ax = axes[1][1]
    if growth:
        ax.plot(sizes, [s["presign_s"] for s in growth], "o-", label="presign (2 processes)")
        ax.plot(sizes, [s["import_s"] for s in growth], "s-", label="import (COPY)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend()
        for s in growth:
            ax.annotate(f"{s['presign_rate']:,.0f}/s", (s["size"], s["presign_s"]),
                        textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xlabel("certificates known")
    ax.set_ylabel("seconds")
    ax.set_title("Presign and import time")
    fig.suptitle(f"revoc bench/run, {results.versions.get('date', '')}"
                 + (" (quick)" if results.quick else ""))
    fig.tight_layout()
    fig.savefig(CHART, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Profile]:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="short runs, sizes 10k and 100k (a few minutes)")
    parser.add_argument("--duration", help="each wrk run (default 10s, quick 3s)")
    parser.add_argument("--connections", type=int)
    parser.add_argument("--sizes", help="comma-separated certificate counts for the growth part")
    parser.add_argument("--warm-all-max", type=int,
                        help="growth sizes up to this get every certificate requested (cached) "
                             "before the warm run; larger ones only the sample (default "
                             "100000)")
    parser.add_argument("--only", default="side,mixed,growth",
                        help="comma-separated parts to run: side, mixed, growth")
    args = parser.parse_args(argv)
    prof = replace(QUICK if args.quick else FULL)
    if args.duration:
        prof.duration = args.duration
    if args.connections:
        prof.connections = args.connections
    if args.warm_all_max is not None:
        prof.warm_all_max = args.warm_all_max
    if args.sizes:
        prof.sizes = [int(size.replace("_", "")) for size in args.sizes.split(",")]
    args.only = {part.strip() for part in args.only.split(",")}
    unknown = args.only - {"side", "mixed", "growth"}
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    return args, prof


def _terminate(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args, prof = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # finally blocks stop what we started
    tools = find_tools("wrk", "nginx", "taskset")
    results = Results(profile=prof, quick=args.quick)
    clock = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="revoc-suite-", dir="/tmp"))
    work.chmod(0o755)
    try:
        with postgres_server(work) as server_dsn:
            results.versions = versions(tools, server_dsn)
            if args.only & {"side", "mixed"}:
                with fresh_database(server_dsn) as dsn:
                    extra = max(prof.mixed_set * 2, 1000)
                    print(f"preparing: test PKI, {extra:,} certificates, presign", flush=True)
                    world = asyncio.run(prepare_main(dsn, work, extra))
                    if "side" in args.only:
                        print("side by side (warm hits):", flush=True)
                        side_by_side(results, prof, tools, work, dsn, world, extra)
                    if "mixed" in args.only:
                        print("mixed path:", flush=True)
                        mixed_path(results, prof, work, dsn, world)
            if "growth" in args.only:
                print("growth:", flush=True)
                ca = make_ca("Growth CA")
                for size in prof.sizes:
                    growth_step(results, prof, work, server_dsn, ca, size)
        results.wall = time.monotonic() - clock
        write_markdown(results)
        write_chart(results)
        print(f"wrote {BENCH / 'RESULTS.md'} and {CHART} in {results.wall / 60:.1f} min")
        return 0
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
