"""Benchmark: `revoc cert import --openssl-index` with N lines (default 1,000,000).

Writes a synthetic index.txt (10% revoked, reasons as OpenSSL writes them), registers a fresh
issuer in the database given by REVOC_DATABASE_URL and times the CLI import end to end.

    REVOC_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test python bench/import_index.py \\
        3000000 --baseline-tree /tmp/base --rounds 2

Each import goes into a fresh database on that server; with --baseline-tree the same file is
imported by that source tree too, the two alternating within each round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from tests.pki import make_ca  # noqa: E402

REASONS = ["keyCompromise,20260101000000Z", "superseded", "cessationOfOperation",
           "certificateHold,holdInstructionNone", "", "affiliationChanged"]


def serial_of(n: int) -> int:
    """The serial of line n: distinct for n < 2**32, all 120 bits long (same DER length)."""
    return (n * 2654435761 + 0x100000) & ((1 << 120) - 1) | (1 << 119)


def is_revoked(n: int) -> bool:
    """Line n is an R line (10% of them)."""
    return n % 10 == 0


def write_index(path: Path, lines: int) -> None:
    with path.open("w") as out:
        for n in range(lines):
            serial = serial_of(n)
            if is_revoked(n):
                reason = REASONS[n % len(REASONS)]
                field = "260102030405Z" + ("," + reason if reason else "")
                out.write(f"R\t300101000000Z\t{field}\t{serial:X}\tunknown\t/CN=d{n}\n")
            else:
                out.write(f"V\t300101000000Z\t\t{serial:X}\tunknown\t/CN=d{n}\n")


def import_once(tree: Path, index: Path, work: Path, server_dsn: str) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of `revoc cert import` (the whole command, run from `tree`) into
    a fresh database."""
    from ocsp_bench import fresh_database

    cert, key = make_ca("Import Bench CA").write(work)
    with fresh_database(server_dsn) as dsn:
        env = {**os.environ, "REVOC_DATABASE_URL": dsn, "PYTHONPATH": str(tree)}
        revoc = [sys.executable, "-m", "revoc.cli"]
        subprocess.run([*revoc, "db", "upgrade"], check=True, env=env, cwd=tree,
                       stdout=subprocess.DEVNULL)
        subprocess.run([*revoc, "issuer", "add", "--name", "bench", "--cert", str(cert), "--key",
                        str(key)], check=True, env=env, cwd=tree, stdout=subprocess.DEVNULL)
        started = time.perf_counter()
        proc = subprocess.Popen([*revoc, "cert", "import", "--issuer", "bench",
                                 "--openssl-index", str(index)], env=env, cwd=tree,
                                stdout=subprocess.DEVNULL)
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"the import of {tree} failed")
        return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lines", nargs="?", type=int, default=1_000_000)
    parser.add_argument("--baseline-tree", type=Path,
                        help="also time this source tree's import, interleaved with this one")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    server_dsn = os.environ["REVOC_DATABASE_URL"]
    trees = {"this tree": ROOT}
    if args.baseline_tree:
        trees["baseline"] = args.baseline_tree.resolve()
    times: dict[str, list[float]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        index = work / "index.txt"
        write_index(index, args.lines)
        for round_ in range(args.rounds):
            order = list(trees.items())
            if round_ % 2:
                order.reverse()
            for name, tree in order:
                seconds, rss = import_once(tree, index, work, server_dsn)
                times[name].append(seconds)
                print(f"round {round_ + 1}: {name}: {args.lines:,} lines in {seconds:.1f} s "
                      f"({args.lines / seconds:,.0f} lines/s), peak RSS {rss:,.0f} MiB, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.1f} s over {len(values)} rounds")
    if "baseline" in times:
        ratios = [b / t for b, t in zip(times["baseline"], times["this tree"], strict=True)]
        print(f"baseline / this tree per round: {', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
