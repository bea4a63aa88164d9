"""Issue 13 point 9: where one `revoc publish --once --force-full` round spends its time, per
phase, in process: wall seconds and this process's CPU seconds (`time.process_time`, all its
threads), plus the CPU the PostgreSQL backends of the round used (from /proc), which the other
load of a shared host disturbs little (not a test).

Runs `run_once(force_full=True)` on the databases bench/crl_publish_bench.py loads (`--keep`):
`revoc_crlspeed_1` (one scope) and `revoc_crlspeed_16` (16 shards), each in turn, --rounds
times, and prints, per database, the median of each phase. Phases are exclusive (a phase nested
in another is taken out of it); `other` is the round's remainder (commit, notifications, the
Python between phases).

    REVOC_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \
        python bench/crl_publish_phases.py [--rounds 3] [--only 1|16] [--suffix _base]

Run from another source tree (a copy of this file in its bench/) to measure that tree.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_TICKS = os.sysconf("SC_CLK_TCK")


class Phases:
    """Exclusive wall and CPU time per phase name (a stack: nested phases are subtracted)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.stack: list[list[Any]] = []  # [name, wall start, cpu start, nested wall, nested cpu]

    def enter(self, name: str) -> None:
        self.stack.append([name, time.perf_counter(), time.process_time(), 0.0, 0.0])

    def leave(self) -> None:
        name, wall0, cpu0, nested_wall, nested_cpu = self.stack.pop()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        self.wall[name] = self.wall.get(name, 0.0) + wall - nested_wall
        self.cpu[name] = self.cpu.get(name, 0.0) + cpu - nested_cpu
        if self.stack:
            self.stack[-1][3] += wall
            self.stack[-1][4] += cpu


PHASES = Phases()


def _wrap(owner: Any, attribute: str, name: str) -> None:
    original = getattr(owner, attribute)
    if asyncio.iscoroutinefunction(original):
        @functools.wraps(original)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            PHASES.enter(name)
            try:
                return await original(*args, **kwargs)
            finally:
                PHASES.leave()
        setattr(owner, attribute, timed_async)
    else:
        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            PHASES.enter(name)
            try:
                return original(*args, **kwargs)
            finally:
                PHASES.leave()
        setattr(owner, attribute, timed)


def instrument() -> None:
    from crl_publisher import builder, entries, issuer_round, publisher, scopes

    _wrap(publisher, "issuer_scopes", "issuer scopes")
    _wrap(publisher, "mirror_latest", "file repair check")
    _wrap(publisher, "_take_snapshot", "locks + snapshot")
    _wrap(issuer_round, "scope_states", "scope states")
    _wrap(scopes.IssuerChanges, "load", "change groups")
    _wrap(issuer_round.IssuerRound, "shard_urls", "shard urls")
    _wrap(issuer_round, "stream_shard_entries", "entries read")
    _wrap(issuer_round, "_stream_entries", "entries read")
    _wrap(entries._HexEntrySink, "__call__", "entries decode")
    _wrap(entries._ShardedHexSink, "__call__", "entries decode")
    _wrap(builder.CrlAssembler, "sign", "assemble + sign")
    _wrap(issuer_round.IssuerRound, "_check", "self-check")
    _wrap(issuer_round.IssuerRound, "build_delta", "deltas")
    _wrap(issuer_round.BuiltCrl, "__post_init__", "sha256")
    _wrap(publisher, "_store", "store")
    _wrap(publisher, "write_all_atomically", "files")
    _wrap(publisher, "_record_row_outcomes", "row outcomes")


def _backend_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    return total


async def one_round(dsn: str, out: Path) -> dict[str, float]:
    from crl_publisher.scheduler import run_once
    from revoc.runtime import close_pool, open_pool
    from revoc.settings import load_settings

    settings = load_settings({"REVOC_DATABASE_URL": dsn, "REVOC_CRL_OUT": str(out),
                                  "REVOC_PUBLIC_URL": "http://crl.bench.example"})
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "DELETE FROM crls c WHERE EXISTS (SELECT 1 FROM crls d WHERE d.issuer_id = "
        "c.issuer_id AND d.shard = c.shard AND d.kind = c.kind AND d.number > c.number)")
    await conn.close()
    pool = await open_pool(settings, dsn, max_size=4)
    async with pool.acquire() as first, pool.acquire() as second:  # the round's two
        pids = [await c.fetchval("SELECT pg_backend_pid()") for c in (first, second)]
    PHASES.wall.clear()
    PHASES.cpu.clear()
    server0 = _backend_cpu(pids)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    report = await run_once(pool, settings, force_full=True)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    server = _backend_cpu(pids) - server0
    await close_pool(pool)
    assert report.ok, report.failures
    result = {f"{k} wall": v for k, v in PHASES.wall.items()}
    result |= {f"{k} cpu": v for k, v in PHASES.cpu.items()}
    result["other wall"] = wall - sum(PHASES.wall.values())
    result["other cpu"] = cpu - sum(PHASES.cpu.values())
    result["TOTAL wall"], result["TOTAL cpu"], result["SERVER cpu"] = wall, cpu, server
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["1", "16"])
    parser.add_argument("--suffix", default="", help="databases revoc_crlspeed_1SUFFIX and "
                        "_16SUFFIX (crl_publish_bench.py --baseline-suffix)")
    args = parser.parse_args()
    server = os.environ["REVOC_DATABASE_URL"]
    instrument()
    names = ["1", "16"] if args.only is None else [args.only]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as directory:
        for round_ in range(args.rounds):
            for name in names:
                database = f"revoc_crlspeed_{name}{args.suffix}"
                dsn = urlunsplit(urlsplit(server)._replace(path=f"/{database}"))
                result = asyncio.run(one_round(dsn, Path(directory) / name))
                results[name].append(result)
                print(f"# round {round_ + 1} scopes {name}: {result['TOTAL wall']:.2f} s wall, "
                      f"{result['TOTAL cpu']:.2f} s CPU, server {result['SERVER cpu']:.2f} s",
                      file=sys.stderr, flush=True)
    keys: list[str] = []
    for runs in results.values():
        for run in runs:
            for k in run:
                if k.rsplit(" ", 1)[0] not in keys and not k.startswith("SERVER"):
                    keys.append(k.rsplit(" ", 1)[0])
    med: Callable[[str, str], str] = lambda name, key: (  # noqa: E731
        f"{statistics.median(r.get(key, 0.0) for r in results[name]):.3f}")
    print("| phase | " + " | ".join(f"{n}: wall s | {n}: CPU s" for n in names) + " |")
    print("|---|" + "---:|---:|" * len(names))
    for key in keys:
        print(f"| {key} | " + " | ".join(f"{med(n, key + ' wall')} | {med(n, key + ' cpu')}"
                                         for n in names) + " |")
    print("| server backends CPU | " + " | ".join(f"- | {med(n, 'SERVER cpu')}" for n in names)
          + " |")


if __name__ == "__main__":
    main()
