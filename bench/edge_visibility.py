"""Issue 13 point 11: revocation -> visible at the edge, through a real caching proxy.

`revoc serve`, `revoc presign` and `revoc publish` run as an operator runs them (default settings
but for those named below) behind nginx `proxy_cache` with the cache purge module
(tests/edge_proxy.py; the CDN stand-in), with REVOC_PUBLIC_URL = the proxy, so the CRLs'
URLs and the purge hook name the proxy's URLs. One unsharded `private` issuer (deltas on) whose
full CRL already lists --entries revoked certificates. For each of --repeat certificates:

1. warm the proxy: GET through it, until it answers from its cache (X-Cache: HIT), the OCSP GET
   answer (`good`; the canonical SHA-1 CertID URL OpenSSL sends), the full CRL and the delta CRL;
2. `revoc cert revoke --serial S --reason keyCompromise` (the clock starts when the command is
   started, process start-up included);
3. poll every 0.1 s, through the proxy and straight at `revoc serve` (the origin, the baseline
   measured in the same run), until the OCSP answer is `revoked`, the full CRL lists S and the
   delta CRL lists S; each path is given up after its cap (CONFORMANCE OCSP-HTTP-7 and
   HTTP-CRL-4: revoke, then poll the CDN, and measure).

Modes, each with a database, proxy and daemons of its own:
- purge-default: REVOC_PURGE_URL set (a hook that relays each URL to nginx's purge location,
  as a CDN's purge API does), REVOC_CRL_FULL_ON_CHANGE_DELAY at its default (1 minute);
- purge-0: the same with REVOC_CRL_FULL_ON_CHANGE_DELAY=0;
- nopurge-0: no purge hook, delay 0: the proxy serves what it cached until the max-age of the
  cached copy runs out. For OCSP that is days (nextUpdate - now), so the wait is capped at
  --ocsp-cap and the bound reported is the max-age the proxy cached the `good` answer with.

    REVOC_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        python bench/edge_visibility.py [--repeat 5] [--nopurge-repeat 2] [--entries 1000] \\
        [--modes purge-0,purge-default,nopurge-0] [--json /tmp/edge_visibility.json] \\
        [--png bench/edge_visibility.png]
    python bench/edge_visibility.py --chart-from /tmp/edge_visibility.json   # redraw only

Everything listens on 127.0.0.1 at free ports and is stopped at the end. The machine may be
shared: say so next to the figures. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from cryptography import x509
from cryptography.x509 import ocsp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from revoc import admin, db  # noqa: E402
from revoc.der.asn1 import integer_content  # noqa: E402
from revoc.purge import ocsp_get_urls  # noqa: E402
from tests.edge_proxy import Hook, caching_proxy, proxy_available  # noqa: E402
from tests.pki import make_ca  # noqa: E402

REVOC = str(Path(sys.executable).with_name("revoc"))
ISSUER = "edge"
PATHS = ("ocsp", "full", "delta")
LABELS = {"ocsp": "OCSP GET", "full": "full CRL", "delta": "delta CRL"}
POLL = 0.1
SERIAL_BASE = 0x41 << 120

# Reference lines (seconds): what root programs and cloud CAs promise, 2023-2026.
ANCHORS = (
    (15 * 60, "Google CAS: 15 min"),
    (30 * 60, "AWS Private CA: ~30 min"),
    (4 * 3600, "CCADB: retrievable, 4 h"),
    (24 * 3600, "TLS BR: 24 h"),
)


@dataclass(frozen=True)
class Mode:
    name: str
    purge: bool
    delay: str | None  # REVOC_CRL_FULL_ON_CHANGE_DELAY; None: its default
    title: str


MODES = {
    "purge-default": Mode("purge-default", True, None, "purge, full-CRL delay 1 min (default)"),
    "purge-0": Mode("purge-0", True, "0", "purge, full-CRL delay 0"),
    "nopurge-0": Mode("nopurge-0", False, "0", "no purge (proxy max-age), delay 0"),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _with_database(server: str, name: str) -> str:
    return urlunsplit(urlsplit(server)._replace(path=f"/{name}"))


def _revoc(env: dict[str, str], *argv: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([REVOC, *argv], env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"revoc {' '.join(argv)} failed: {done.stderr.strip()}")
    return seconds


def _max_age(response: httpx.Response) -> int | None:
    for part in response.headers.get("cache-control", "").split(","):
        name, _, value = part.strip().partition("=")
        if name == "max-age" and value.isdigit():
            return int(value)
    return None


def _visible(path: str, response: httpx.Response, serial: int) -> bool | None:
    """True: lists `serial` as revoked; False: served and does not; None: nothing usable
    (a 502 while the origin starts, `tryLater`)."""
    if response.status_code != 200:
        return None
    if path == "ocsp":
        if response.headers.get("content-type") != "application/ocsp-response":
            return None
        answer = ocsp.load_der_ocsp_response(response.content)
        if answer.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            return None
        return answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
    crl = x509.load_der_x509_crl(response.content)
    return crl.get_revoked_certificate_by_serial_number(serial) is not None


class World:
    """One mode's database, proxy, hook and daemons."""

    def __init__(self, mode: Mode, dsn: str, tmp: Path, entries: int, targets: int) -> None:
        self.mode, self.dsn, self.tmp = mode, dsn, tmp
        self.entries, self.targets = entries, targets
        self.edge_port, self.origin_port = _free_port(), _free_port()
        self.public = f"http://127.0.0.1:{self.edge_port}"
        self.origin = f"http://127.0.0.1:{self.origin_port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("REVOC_")}
        self.env.update({"REVOC_DATABASE_URL": dsn, "REVOC_PORT": str(self.origin_port),
                         "REVOC_PUBLIC_URL": self.public, "REVOC_PRESIGN_PROCESSES": "1",
                         "REVOC_CRL_OUT": str(tmp / "crl"), "REVOC_LOG_LEVEL": "WARNING"})
        if mode.delay is not None:
            self.env["REVOC_CRL_FULL_ON_CHANGE_DELAY"] = mode.delay
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.hook: Hook | None = None
        self.ocsp_urls: dict[int, str] = {}

    def serials(self) -> list[int]:
        return [SERIAL_BASE + i for i in range(1, self.entries + self.targets + 1)]

    async def load(self) -> None:
        ca = make_ca("Edge visibility bench CA")
        (self.tmp / "ca").mkdir()
        cert, key = ca.write(self.tmp / "ca")
        _revoc(self.env, "issuer", "add", "--name", ISSUER, "--cert", str(cert), "--key",
               str(key))
        conn = await asyncpg.connect(self.dsn)
        try:
            issuer = await admin.get_issuer(conn, ISSUER)
            not_after = await conn.fetchval("SELECT now() + interval '90 days'")
            url = f"{self.public}/crl/{ISSUER}.crl"
            await conn.copy_records_to_table(
                "certificates", columns=["issuer_id", "serial", "not_after", "crl_url"],
                records=[(issuer.id, integer_content(s), not_after, url)
                         for s in self.serials()])
        finally:
            await conn.close()
        for serial in self.serials()[self.entries:]:
            self.ocsp_urls[serial] = ocsp_get_urls(self.public, issuer, serial)[0]
        if self.entries:
            first = self.tmp / "first.serials"
            first.write_text("".join(f"{s:X}\n" for s in self.serials()[:self.entries]))
            _revoc(self.env, "cert", "revoke", "--issuer", ISSUER, "--serials-file", str(first),
                   "--reason", "superseded")

    def url(self, path: str, serial: int, edge: bool) -> str:
        if path == "ocsp":
            url = self.ocsp_urls[serial]
        else:
            url = f"{self.public}/crl/{ISSUER}{'-delta' if path == 'delta' else ''}.crl"
        return url if edge else url.replace(self.public, self.origin)

    async def start(self) -> None:
        if self.mode.purge:
            self.hook = Hook(relay_port=self.edge_port)
            await self.hook.start()
            self.env["REVOC_PURGE_URL"] = f"http://127.0.0.1:{self.hook.port}/purge"
        for name in ("serve", "presign", "publish"):
            log = (self.tmp / f"{name}.log").open("wb")
            self.daemons.append(subprocess.Popen(  # noqa: ASYNC220
                [REVOC, name], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
            log.close()

    def log_tail(self) -> str:
        return "\n".join(f"--- {name}:\n" + (self.tmp / f"{name}.log").read_text()[-1500:]
                         for name in ("serve", "presign", "publish"))

    async def stop(self) -> None:
        for proc in self.daemons:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.daemons:
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
        if self.hook is not None:
            await self.hook.stop()


async def _warm(client: httpx.AsyncClient, world: World, serial: int,
                within: float) -> dict[str, int | None]:
    """GET each path through the proxy until it comes from the proxy's cache and does not list
    `serial` yet; the max-age the proxy cached each with."""
    deadline = time.monotonic() + within
    max_ages: dict[str, int | None] = {}
    for path in PATHS:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                response = await client.get(world.url(path, serial, edge=True))
                if (response.headers.get("x-cache") == "HIT"
                        and _visible(path, response, serial) is False):
                    max_ages[path] = _max_age(response)
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"{world.mode.name}: the proxy never cached {path} for "
                                 f"{serial:X}\n{world.log_tail()}")
            await asyncio.sleep(POLL)
    return max_ages


async def _quiet(world: World, within: float) -> None:
    """Until the purge hook has got no POST for 2 s and relayed everything it got."""
    if world.hook is None:
        return
    deadline = time.monotonic() + within
    bodies, since = len(world.hook.bodies), time.monotonic()
    while world.hook.relaying or time.monotonic() - since < 2:
        if len(world.hook.bodies) != bodies:
            bodies, since = len(world.hook.bodies), time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"{world.mode.name}: purges still coming after {within} s")
        await asyncio.sleep(POLL)


async def _one_revocation(client: httpx.AsyncClient, world: World, serial: int,
                          caps: dict[str, float]) -> dict[str, Any]:
    # Steady state: the purges revoc sent when it first signed every certificate (2 URLs per
    # new answer) are through before the clock starts (`purge_urls_relayed_before` counts them),
    # and the warm entries are not purged by them afterwards.
    for _ in range(2):
        await _quiet(world, within=300)
        max_ages = await _warm(client, world, serial, within=180)
    relayed_before = len(world.hook.relayed) if world.hook is not None else 0
    started = time.monotonic()
    revoke = asyncio.create_task(asyncio.to_thread(
        _revoc, world.env, "cert", "revoke", "--issuer", ISSUER, "--serial", f"{serial:X}",
        "--reason", "keyCompromise"))
    seen: dict[tuple[str, bool], float] = {}
    cache_status: dict[str, str] = {}
    pending = [(path, edge) for path in PATHS for edge in (True, False)]

    async def probe(path: str, edge: bool) -> None:
        try:
            response = await client.get(world.url(path, serial, edge))
        except httpx.HTTPError:
            return
        if _visible(path, response, serial):
            seen[(path, edge)] = time.monotonic() - started
            if edge:
                cache_status[path] = response.headers.get("x-cache", "")

    while pending:
        await asyncio.gather(*(probe(path, edge) for path, edge in pending))
        elapsed = time.monotonic() - started
        pending = [(path, edge) for path, edge in pending
                   if (path, edge) not in seen and elapsed < caps[path]]
        if pending:
            await asyncio.sleep(POLL)
    revoke_seconds = await revoke
    return {"serial": f"{serial:X}", "revoke_command_seconds": round(revoke_seconds, 3),
            "edge": {p: _round(seen.get((p, True))) for p in PATHS},
            "origin": {p: _round(seen.get((p, False))) for p in PATHS},
            "edge_cache_status": cache_status, "cached_max_age": max_ages,
            "purge_urls_relayed_before": relayed_before,
            "caps": caps}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def run_mode(server: str, mode: Mode, repeat: int, entries: int, cap: float,
                   ocsp_cap: float) -> dict[str, Any]:
    name = f"revoc_edgevis_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(server)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    dsn = _with_database(server, name)
    try:
        conn = await asyncpg.connect(dsn)
        await db.upgrade(conn)
        await conn.close()
        with tempfile.TemporaryDirectory() as directory:
            tmp = Path(directory)
            world = World(mode, dsn, tmp, entries, repeat)
            await world.load()
            caps = {"ocsp": cap if mode.purge else ocsp_cap, "full": cap, "delta": cap}
            runs = []
            with caching_proxy(tmp / "nginx", world.edge_port, world.origin_port):
                await world.start()
                try:
                    async with httpx.AsyncClient(timeout=30) as client:
                        for serial in world.serials()[entries:]:
                            one = await _one_revocation(client, world, serial, caps)
                            print(json.dumps({mode.name: one}), flush=True)
                            runs.append(one)
                finally:
                    await world.stop()
    finally:
        conn = await asyncpg.connect(server)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()
    return {"mode": mode.name, "title": mode.title, "purge": mode.purge,
            "full_on_change_delay": mode.delay if mode.delay is not None else "default (1m)",
            "entries": entries, "runs": runs}


def _title(result: dict[str, Any]) -> str:
    mode = MODES.get(result["mode"])
    return mode.title if mode is not None else str(result["title"])


def summarize(result: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One row per path: edge median and max over the revocations seen, how many were not
    seen within the cap, the origin's median (the baseline, same revocations), the median of
    edge - origin per revocation (what the proxy adds), the `revoc cert revoke` command's
    median and the max-age the proxy cached the path with."""
    runs = result["runs"]
    command = statistics.median(r["revoke_command_seconds"] for r in runs) if runs else None
    for path in PATHS:
        edge = [r["edge"][path] for r in runs if r["edge"][path] is not None]
        origin = [r["origin"][path] for r in runs if r["origin"][path] is not None]
        added = [r["edge"][path] - r["origin"][path] for r in runs
                 if r["edge"][path] is not None and r["origin"][path] is not None]
        ages = [r["cached_max_age"][path] for r in runs
                if r["cached_max_age"].get(path) is not None]
        yield {"mode": result["mode"], "title": _title(result), "path": path,
               "n": len(runs), "seen": len(edge),
               "edge_median": statistics.median(edge) if edge else None,
               "edge_max": max(edge) if edge else None,
               "origin_median": statistics.median(origin) if origin else None,
               "added_median": statistics.median(added) if added else None,
               "command_median": command,
               "cached_max_age": max(ages) if ages else None,
               "cap": runs[0]["caps"][path] if runs else None}


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if abs(seconds) < 0.005:
        return "0.00 s"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| mode | path | revocations | through the proxy: median | max | origin "
             "(no proxy): median | proxy adds (median) | `revoc cert revoke` command (median) "
             "| max-age the proxy cached it with |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for result in results:
        for row in summarize(result):
            missed = row["n"] - row["seen"]
            worst = _fmt(row["edge_max"])
            if missed:
                worst = f"not within the {_fmt(row['cap'])} cap ({missed} of {row['n']})"
            lines.append(f"| {row['title']} | {LABELS[row['path']]} | {row['n']} | "
                         f"{_fmt(row['edge_median'])} | {worst} | "
                         f"{_fmt(row['origin_median'])} | {_fmt(row['added_median'])} | "
                         f"{_fmt(row['command_median'])} | {_fmt(row['cached_max_age'])} |")
    return "\n".join(lines)


def chart(results: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(result, path) for result in results for path in PATHS]
    fig, ax = plt.subplots(figsize=(11, 2.8 + 0.38 * len(rows)))
    colors = {"ocsp": "tab:blue", "full": "tab:green", "delta": "tab:purple"}
    labels = []
    seen: set[str] = set()
    for y, (result, path) in enumerate(reversed(rows)):
        labels.append(f"{LABELS[path]} · {_title(result)}")
        edge = [r["edge"][path] for r in result["runs"] if r["edge"][path] is not None]
        origin = [r["origin"][path] for r in result["runs"] if r["origin"][path] is not None]
        missed = len(result["runs"]) - len(edge)
        ax.scatter(edge, [y] * len(edge), color=colors[path], s=28, zorder=3, alpha=0.8,
                   label=f"{LABELS[path]} through the proxy" if path not in seen else None)
        seen.add(path)
        ax.scatter(origin, [y - 0.22] * len(origin), facecolors="none", edgecolors="grey",
                   s=18, zorder=3, label="origin (revoc serve, no proxy)" if y == 0 else None)
        if edge:
            ax.plot([statistics.median(edge)] * 2, [y - 0.3, y + 0.3], color="black", lw=2,
                    zorder=4)
        if missed:
            row = next(r for r in summarize(result) if r["path"] == path)
            cap, bound = row["cap"], row["cached_max_age"]
            ax.annotate("", xy=(bound, y), xytext=(cap, y),
                        arrowprops={"arrowstyle": "->", "color": colors[path], "ls": "--"})
            ax.text(bound, y + 0.12, f"still `good` at the {_fmt(cap)} cap; "
                    f"bound: the max-age it was cached with, {_fmt(bound)}", fontsize=8,
                    va="bottom", ha="right")
    for seconds, text in ANCHORS:
        ax.axvline(seconds, color="firebrick", lw=1, ls=":")
        ax.text(seconds * 1.06, len(rows) - 0.45, text, rotation=90, fontsize=8,
                color="firebrick", va="top", ha="left")
    for boundary in range(len(PATHS), len(rows), len(PATHS)):
        ax.axhline(boundary - 0.5, color="grey", lw=0.6)
    ax.set_xscale("log")
    ax.set_xlim(0.2, 6 * 86400)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    ticks = [1, 10, 60, 600, 3600, 6 * 3600, 86400, 4 * 86400]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["1 s", "10 s", "1 min", "10 min", "1 h", "6 h", "1 d", "4 d"])
    ax.set_xlabel("`revoc cert revoke` started → visible through the proxy (log scale); "
                  "black bar: median")
    ax.set_title("revoc: revocation → visible through a caching proxy (nginx proxy_cache + "
                 "purge module, 127.0.0.1)", fontsize=10)
    ax.grid(axis="x", which="major", alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda i: ("OCSP" not in names[i],
                                                      "full" not in names[i],
                                                      "delta" not in names[i]))
    ax.legend([handles[i] for i in order], [names[i] for i in order], loc="upper center",
              bbox_to_anchor=(0.5, -0.12 * 12 / len(rows)), ncol=2, fontsize=8,
              frameon=False)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="purge-0,purge-default,nopurge-0")
    parser.add_argument("--repeat", type=int, default=5, help="revocations per purge mode")
    parser.add_argument("--nopurge-repeat", type=int, default=2,
                        help="revocations without purge (each waits out the CRLs' max-age)")
    parser.add_argument("--entries", type=int, default=1000,
                        help="revoked certificates on the full CRL before the first")
    parser.add_argument("--cap", type=float, default=420, help="seconds a CRL path is polled")
    parser.add_argument("--ocsp-cap", type=float, default=60,
                        help="seconds OCSP is polled without purge (its bound is days)")
    parser.add_argument("--json", type=Path, default=Path("/tmp/edge_visibility.json"))
    parser.add_argument("--png", type=Path, default=ROOT / "bench" / "edge_visibility.png")
    parser.add_argument("--chart-from", type=Path, help="redraw the chart from a --json file")
    args = parser.parse_args()
    if args.chart_from:
        results = json.loads(args.chart_from.read_text())
    else:
        server = os.environ.get("REVOC_DATABASE_URL")
        if not server:
            raise SystemExit("set REVOC_DATABASE_URL to a PostgreSQL server")
        if not proxy_available():
            raise SystemExit("needs nginx and libnginx-mod-http-cache-purge (apt-get install)")
        results = []
        for name in args.modes.split(","):
            mode = MODES[name]
            repeat = args.repeat if mode.purge else args.nopurge_repeat
            results.append(await run_mode(server, mode, repeat, args.entries, args.cap,
                                          args.ocsp_cap))
            args.json.write_text(json.dumps(results, indent=1))
    chart(results, args.png)
    print(table(results))
    print(f"chart: {args.png}; data: {args.chart_from or args.json}")


if __name__ == "__main__":
    asyncio.run(main())
