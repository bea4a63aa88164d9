"""Interleaved same-run comparison for issue 12 point 8: warm hits and cold misses of this tree's
`revoc serve` against tuned nginx serving the same bytes, against another source tree of revoc
(`--baseline-src`, e.g. `git archive main | tar -x -C /tmp/base`), and against granian.

Warm: every server is started once (all pinned to core 0, wrk -t1 on core 1); then `--rounds`
rounds, each measuring every server for POST and GET in a rotated order. Reported: the median over
rounds of each figure and of each round's ratio to nginx (paired, since this host drifts).
Servers: nginx (tuned: open_file_cache, sendfile off), revoc (uvicorn + fast lane), revoc
baseline, `granian --interface rsgi` serving the same bytes from a dict with no pipeline at all
(the ceiling of any granian adapter), and granian running revoc's ASGI app (no lane).

Cold: `--cold-size` certificates imported and pre-signed in a fresh database; each round starts a
fresh `revoc serve` per tree and POSTs distinct certificates in random order (every request a
miss; the bulk cache warm-up is off unless `--cold-warmup`), in rotated order; next to it, the
store query alone (responder_ocsp_response_batch with 256 keys, on 4 connections, in-process) in
the same rounds.

    python bench/ocsp_compare.py [--rounds 3] [--duration 5s] [--baseline-src DIR]
        [--cold-size 100000] [--no-granian]

Writes the "OCSP serving, interleaved (issue 12)" section of bench/RESULTS.md. Needs wrk, nginx,
taskset; granian when not --no-granian.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from ocsp_bench import (  # noqa: E402
    create_database,
    database,
    find_tools,
    free_port,
    fresh_database,
    get_path,
    nginx_command,
    prepare,
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
from suite import RequestMaker, _load, write_cycle_lua  # noqa: E402

from revoc.queries import queries  # noqa: E402
from tests.pki import make_ca  # noqa: E402

SECTION = "## OCSP serving, interleaved (issue 12)"

RSGI_APP = '''
import os, pathlib
DER = pathlib.Path(os.environ["BARE_RESPONSE"]).read_bytes()
HEADERS = [("content-type", "application/ocsp-response"),
           ("content-length", str(len(DER))),
           ("etag", '"x"'), ("last-modified", "Mon, 01 Dec 2026 00:00:00 GMT"),
           ("expires", "Mon, 08 Dec 2026 00:00:00 GMT"),
           ("cache-control", "max-age=600000, public, no-transform, must-revalidate")]

async def app(scope, proto):
    if scope.proto != "http":
        return
    if scope.method == "POST":
        await proto()
    proto.response_bytes(200, HEADERS, DER)
'''


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group `pgid` (a server and its
    workers: `process()` starts each in a session of its own)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the command: state ppid pgrp ...
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def granian_command(port: int, target: str, interface: str, core: str = "0") -> list[str]:
    granian = shutil.which("granian") or str(Path(sys.executable).parent / "granian")
    return ["taskset", "-c", core, granian, "--interface", interface, "--workers", "1",
            "--runtime-mode", "st", "--loop", "uvloop", "--http", "1", "--no-ws",
            "--log-level", "warning", "--host", "127.0.0.1", "--port", str(port), target]


@contextmanager
def warm_servers(args: argparse.Namespace, work: Path, dsn: str, request: bytes,
                 nginx: str) -> Iterator[dict[str, tuple[str, int]]]:
    """Start every server of the warm comparison; yields name -> (base URL, process group)."""
    bases: dict[str, tuple[str, int]] = {}
    with ExitStack() as stack:
        trees = [("revoc", None)]
        if args.baseline_src:
            trees.append(("revoc baseline", args.baseline_src))
        response = b""
        for name, src in trees:
            port = free_port()
            env = revoc_env(dsn)
            if src:
                env["PYTHONPATH"] = str(src)
            # `python -m` puts the working directory first on sys.path: run each tree from its
            # own directory, or the baseline would import this tree when run from its root.
            proc = stack.enter_context(process(revoc_serve_command(port), env,
                                               log=work / f"{name.replace(' ', '-')}.log",
                                               cwd=src or ROOT))
            base = f"http://127.0.0.1:{port}"
            wait_ready(base)
            response = httpx.post(f"{base}/ocsp", content=request).content
            assert httpx.get(base + get_path(request)).content == response
            bases[name] = (base, proc.pid)
        static = work / "www" / "ocsp"
        static.mkdir(parents=True, exist_ok=True)
        (static / "response.der").write_bytes(response)
        port = free_port()
        conf = write_nginx_conf(work, port, "nginx", tuned=True)
        proc = stack.enter_context(process(nginx_command(nginx, conf)))
        wait_http(f"http://127.0.0.1:{port}/ocsp")
        bases["nginx"] = (f"http://127.0.0.1:{port}", proc.pid)
        if args.granian:
            (work / "rsgi_app.py").write_text(RSGI_APP)
            port = free_port()
            env = {**os.environ, "BARE_RESPONSE": str(static / "response.der"),
                   "PYTHONPATH": str(work)}
            proc = stack.enter_context(process(granian_command(port, "rsgi_app:app", "rsgi"),
                                               env))
            wait_http(f"http://127.0.0.1:{port}/ocsp")
            bases["granian RSGI bare"] = (f"http://127.0.0.1:{port}", proc.pid)
            port = free_port()
            from responder.app import SETTINGS_ENV, settings_to_env
            from revoc.settings import Settings

            env = {**revoc_env(dsn), SETTINGS_ENV: settings_to_env(Settings(database_url=dsn))}
            proc = stack.enter_context(process(
                [*granian_command(port, "responder.app:app_from_env", "asgi"), "--factory"],
                env, log=work / "granian-asgi.log"))
            wait_ready(f"http://127.0.0.1:{port}")
            bases["granian ASGI revoc"] = (f"http://127.0.0.1:{port}", proc.pid)
        yield bases


def warm(args: argparse.Namespace, work: Path, dsn: str, request: bytes,
         nginx: str) -> dict[str, Any]:
    lua = write_post_lua(work, request)
    path = get_path(request)
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    with warm_servers(args, work, dsn, request, nginx) as bases:
        names = list(bases)
        for round_no in range(args.rounds):
            order = names[round_no % len(names):] + names[:round_no % len(names)]
            for name in order:
                base, pgid = bases[name]
                for method in ("POST", "GET"):
                    cpu = group_cpu_seconds(pgid)
                    figures = (wrk(base + "/ocsp", args.duration, args.connections, lua)
                               if method == "POST" else
                               wrk(base + path, args.duration, args.connections, None))
                    # CPU per answer: robust on a shared host, where requests/s is not.
                    figures["cpu_us"] = ((group_cpu_seconds(pgid) - cpu) * 1e6
                                         / max(figures["requests"], 1.0))
                    runs.setdefault((name, method), []).append(figures)
                    print(f"round {round_no + 1} {name:20} {method:4} {figures['rps']:>9.0f} "
                          f"req/s p99 {figures['p99']:.2f} ms {figures['cpu_us']:.1f} us CPU/req "
                          f"non-2xx {figures['non2xx']:.0f}", flush=True)
    table: dict[str, Any] = {}
    for (name, method), figures in runs.items():
        ratios = [f["rps"] / n["rps"] for f, n in zip(figures, runs[("nginx", method)],
                                                       strict=True)]
        table[f"{name} {method}"] = {
            "rps": median([f["rps"] for f in figures]),
            "p99": median([f["p99"] for f in figures]),
            "ratio": median(ratios), "ratios": ratios,
            "cpu_us": median([f["cpu_us"] for f in figures]),
            "non2xx": sum(f["non2xx"] for f in figures)}
    return table


async def store_alone(dsn: str, keys: list[tuple[int, bytes, int]], seconds: float) -> float:
    """Keys/s of the batched store query alone: 4 connections, 256 keys a query."""
    sql = queries()["responder_ocsp_response_batch"]
    conns = [await asyncpg.connect(dsn) for _ in range(4)]
    done = 0
    deadline = time.monotonic() + seconds

    async def loop(conn: asyncpg.Connection, offset: int) -> None:
        nonlocal done
        position = offset
        while time.monotonic() < deadline:
            batch = [keys[(position + k) % len(keys)] for k in range(256)]
            position += 1024
            await conn.fetch(sql, [k[0] for k in batch], [k[1] for k in batch],
                             [k[2] for k in batch])
            done += len(batch)

    started = time.monotonic()
    try:
        await asyncio.gather(*(loop(conn, 256 * n) for n, conn in enumerate(conns)))
    finally:
        for conn in conns:
            await conn.close()
    return done / (time.monotonic() - started)


def cold(args: argparse.Namespace, work: Path, server_dsn: str) -> dict[str, Any]:
    from import_index import serial_of

    from revoc.der.asn1 import integer_content

    size = args.cold_size
    runs: dict[str, list[dict[str, float]]] = {}
    kept = args.cold_keep / "meta.pkl" if args.cold_keep else None
    with ExitStack() as stack:
        if kept is not None and kept.exists():
            # A database loaded by an earlier run with the same --cold-keep (1M certificates
            # take minutes to import and pre-sign): its DSN, request script and keys.
            meta = pickle.loads(kept.read_bytes())
            dsn, lua, keys = meta["dsn"], Path(meta["lua"]), meta["keys"]
            size = args.cold_size = len(keys)
        else:
            if kept is None:
                dsn = stack.enter_context(fresh_database(server_dsn))
                home = work
            else:
                dsn = asyncio.run(create_database(server_dsn))  # kept: dropped by hand
                home = kept.parent
                home.mkdir(parents=True, exist_ok=True)
            ca = make_ca("Compare CA")
            loaded = asyncio.run(_load(dsn, home, ca, size))
            print(f"cold: {size:,} certificates loaded ({loaded['presign_s']:.0f} s presign)",
                  flush=True)
            maker = RequestMaker(ca.cert)
            order = list(range(size))
            random.Random(size).shuffle(order)
            lua = write_cycle_lua(home, "cold", [maker(serial_of(n)) for n in order],
                                  limit=size)
            keys = [(1, integer_content(serial_of(n)), 1) for n in order]
            if kept is not None:
                kept.write_bytes(pickle.dumps({"dsn": dsn, "lua": str(lua), "keys": keys}))
        trees: list[tuple[str, Callable[[], dict[str, float]]]] = []

        def serve(src: str | None) -> Callable[[], dict[str, float]]:
            def run() -> dict[str, float]:
                port = free_port()
                env = revoc_env(dsn)
                if not args.cold_warmup:
                    # Every request a miss: no bulk warm-up filling the cache (and using the
                    # CPU) while wrk runs.
                    env["REVOC_CACHE_WARM"] = "false"
                if src:
                    env["PYTHONPATH"] = src
                with process(revoc_serve_command(port), env, log=work / "cold.log",
                             cwd=src or ROOT) as proc:
                    base = f"http://127.0.0.1:{port}"
                    wait_ready(base)
                    cpu = group_cpu_seconds(proc.pid)
                    figures = wrk(base + "/ocsp", args.duration, args.connections, lua)
                    figures["cpu_us"] = ((group_cpu_seconds(proc.pid) - cpu) * 1e6
                                         / max(figures["requests"], 1.0))
                    return figures
            return run

        trees.append(("revoc", serve(None)))
        if args.baseline_src:
            trees.append(("revoc baseline", serve(str(args.baseline_src))))
        seconds = float(args.duration.rstrip("s"))
        trees.append(("store query alone (keys/s)", lambda: {
            "rps": asyncio.run(store_alone(dsn, keys, seconds)), "p99": float("nan"),
            "non2xx": 0.0, "requests": 0.0, "cpu_us": float("nan")}))
        for round_no in range(args.rounds):
            order_names = trees[round_no % len(trees):] + trees[:round_no % len(trees)]
            for name, run in order_names:
                figures = run()
                runs.setdefault(name, []).append(figures)
                print(f"cold round {round_no + 1} {name:28} {figures['rps']:>9.0f} /s "
                      f"p99 {figures['p99']:.1f} ms {figures['cpu_us']:.0f} us CPU/req "
                      f"non-2xx {figures['non2xx']:.0f}", flush=True)
    base = runs.get("revoc baseline")
    return {name: {"rps": median([f["rps"] for f in figures]),
                   "p99": median([f["p99"] for f in figures]),
                   "cpu_us": median([f["cpu_us"] for f in figures]),
                   "all": [round(f["rps"]) for f in figures],
                   # paired, round by round: this host drifts within minutes
                   "vs_base": median([f["rps"] / b["rps"] for f, b in zip(figures, base,
                                                                          strict=True)])
                   if base else float("nan"),
                   "non2xx": sum(f["non2xx"] for f in figures)}
            for name, figures in runs.items()}


def write(args: argparse.Namespace, started: datetime, table: dict[str, Any],
          cold_table: dict[str, Any]) -> None:
    lines = [
        SECTION, "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC by `python bench/ocsp_compare.py --rounds "
        f"{args.rounds} --duration {args.duration}"
        + (f" --baseline-src {args.baseline_src}" if args.baseline_src else "")
        + f" --cold-size {args.cold_size}` on a 2-core VM shared with other engineers' "
        "builds and tests at the time (figures drift; compare the paired ratios). wrk -t1 "
        f"-c{args.connections} on core 1, every server one worker on core 0. Medians of "
        f"{args.rounds} interleaved rounds; \"vs nginx\" is the median of each round's ratio.",
        "\"CPU us/req\" is the server's CPU time (all its processes, from /proc) per request "
        "answered, the figure least disturbed by other load on the host.",
        "", "| server | method | requests/s | p99 ms | CPU us/req | vs nginx (median) | per round "
        "| non-2xx |",
        "|---|---|---:|---:|---:|---:|---|---:|"]
    if not table:
        del lines[4:]  # --no-warm: the cold table only
    for key, row in table.items():
        name, method = key.rsplit(" ", 1)
        lines.append(f"| {name} | {method} | {row['rps']:.0f} | {row['p99']:.2f} | "
                     f"{row['cpu_us']:.1f} | {row['ratio']:.0%} | "
                     f"{' '.join(f'{r:.0%}' for r in row['ratios'])} | {row['non2xx']:.0f} |")
    if cold_table:
        lines += ["", f"Cold misses, {args.cold_size:,} certificates (every request a distinct "
                  "certificate, fresh server per run):", "",
                  "| what | per second (median) | p99 ms | CPU us/req | vs baseline (median) "
                  "| per round | non-2xx |",
                  "|---|---:|---:|---:|---:|---|---:|"]
        for name, row in cold_table.items():
            lines.append(f"| {name} | {row['rps']:.0f} | {row['p99']:.1f} | {row['cpu_us']:.0f} | "
                         f"{row['vs_base']:.2f}x | {' '.join(str(r) for r in row['all'])} | "
                         f"{row['non2xx']:.0f} |")
    lines[0] = args.section
    replace_section(args.section, "\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", default="5s")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--baseline-src", type=Path)
    parser.add_argument("--cold-size", type=int, default=100_000)
    parser.add_argument("--no-granian", dest="granian", action="store_false")
    parser.add_argument("--no-cold", dest="cold", action="store_false")
    parser.add_argument("--no-warm", dest="warm", action="store_false")
    parser.add_argument("--cold-keep", type=Path,
                        help="a directory: reuse the cold database loaded there by an earlier "
                             "run, or load one and keep it (drop it by hand afterwards)")
    parser.add_argument("--cold-warmup", action="store_true",
                        help="leave the responders' bulk cache warm-up on in the cold runs (it "
                             "fills the cache from PostgreSQL while wrk runs: fewer misses, its "
                             "CPU counted per request)")
    parser.add_argument("--section", default=SECTION,
                        help="the bench/RESULTS.md section to write (replaced, or appended)")
    args = parser.parse_args()
    nginx = find_tools("wrk", "nginx", "taskset")["nginx"]
    started = datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="revoc-compare-", dir="/tmp"))
    work.chmod(0o755)
    try:
        with database(work) as (server_dsn, dsn):
            request, _ = asyncio.run(prepare(dsn, work / "pki"))
            table = warm(args, work, dsn, request, nginx) if args.warm else {}
            cold_table = cold(args, work, server_dsn) if args.cold else {}
        write(args, started, table, cold_table)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
