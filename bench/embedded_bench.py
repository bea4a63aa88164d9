"""What the embedded default costs: admin command latency and `revoc serve` time-to-ready.

    python bench/embedded_bench.py [--runs N] [--write]

Runs the installed `revoc` console script as a user would, with no REVOC_DATABASE_URL and a fresh
REVOC_HOME under /tmp, and measures wall-clock time per command:

- the first command of a new home (`revoc db upgrade`: initdb, start, migrate);
- an admin command (`revoc issuer list`) against the running server, and one that has to start
  it first (after `revoc db stop`);
- `revoc db status`;
- `revoc serve` from launch until GET /readyz answers 200, with the server running and stopped;
- the floor: the interpreter importing revoc.cli, which every command pays.

With --write, the table replaces the "Embedded default" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REVOC = str(Path(sys.executable).parent / "revoc")
SECTION = "## Embedded default (bench/embedded_bench.py)"


def _timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _revoc(env: dict[str, str], *args: str) -> None:
    result = subprocess.run([REVOC, *args], capture_output=True, text=True, env=env, timeout=300)
    if result.returncode not in (0,):
        raise SystemExit(f"revoc {' '.join(args)} failed ({result.returncode}): {result.stderr}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _serve_ready(env: dict[str, str]) -> float:
    """Seconds from launching `revoc serve` until /readyz says 200; then SIGTERM it."""
    port = _free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([REVOC, "serve", "--port", str(port), "--log-level", "WARNING"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = started + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if proc.poll() is not None or time.perf_counter() > deadline:
                raise SystemExit("revoc serve never became ready")
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _stats(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return (f"{statistics.median(ms):.0f} | {ms[0]:.0f} | {p90:.0f} | {len(ms)}")


def run(runs: int) -> str:
    parent = Path(tempfile.mkdtemp(prefix="revoc-bench-emb-", dir="/tmp"))
    parent.chmod(0o711)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOC_")}
    env["REVOC_HOME"] = str(parent / "home")
    rows: list[tuple[str, list[float]]] = []
    try:
        rows.append(("floor: `python -c 'import revoc.cli'`", [_timed(lambda: subprocess.run(
            [sys.executable, "-c", "import revoc.cli"], check=True)) for _ in range(runs)]))
        rows.append(("first command of a new home (`db upgrade`: initdb, start, migrate)",
                     [_timed(lambda: _revoc(env, "db", "upgrade"))]))
        rows.append(("admin command, server running (`issuer list`)",
                     [_timed(lambda: _revoc(env, "issuer", "list")) for _ in range(runs)]))
        rows.append(("`db status`, server running",
                     [_timed(lambda: _revoc(env, "db", "status")) for _ in range(runs)]))
        rows.append(("`serve` to /readyz 200, server running",
                     [_serve_ready(env) for _ in range(max(3, runs // 3))]))
        cold: list[float] = []
        serve_cold: list[float] = []
        stops: list[float] = []
        for _ in range(max(3, runs // 3)):
            stops.append(_timed(lambda: _revoc(env, "db", "stop")))
            cold.append(_timed(lambda: _revoc(env, "issuer", "list")))
            _revoc(env, "db", "stop")
            serve_cold.append(_serve_ready(env))
        rows.append(("admin command that starts the server first (`issuer list`)", cold))
        rows.append(("`serve` to /readyz 200, server stopped (serve starts it)", serve_cold))
        rows.append(("`db stop`", stops))
    finally:
        subprocess.run([REVOC, "db", "stop"], env=env, capture_output=True, check=False)
        shutil.rmtree(parent, ignore_errors=True)
    lines = [
        SECTION,
        "",
        f"`python bench/embedded_bench.py`, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} cores (shared), Python {platform.python_version()}, as "
        f"{'root (server as revoc-pg)' if os.geteuid() == 0 else 'a normal user'}. Wall-clock "
        "time of the `revoc` console script, no REVOC_DATABASE_URL, a fresh REVOC_HOME.",
        "",
        "| what | median ms | min ms | p90 ms | runs |",
        "|---|---|---|---|---|",
        *(f"| {what} | {_stats(samples)} |" for what, samples in rows),
        "",
    ]
    return "\n".join(lines)


def write(section: str) -> None:
    results = HERE / "RESULTS.md"
    text = results.read_text()
    if SECTION in text:
        start = text.index(SECTION)
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + ("\n" + text[end + 1:] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="samples per measurement "
                        "(default: 10)")
    parser.add_argument("--write", action="store_true",
                        help="replace the section in bench/RESULTS.md (default: print only)")
    args = parser.parse_args()
    section = run(args.runs)
    print(section)
    if args.write:
        write(section)


if __name__ == "__main__":
    main()
