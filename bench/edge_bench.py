"""A well-behaved client's warm-hit latency while hostile clients attack `revoc serve` (issue 12,
point 6).

One run: a throwaway database with pre-signed responses (bench/edge_world.py), `revoc serve` with
its default edge limits (one worker), and, in separate processes on loopback only:

- the client: warm-hit GETs of one OCSP request, one after another on a keep-alive connection
  (a new one whenever the server closes it), every latency recorded;
- an attack, one at a time:
  - `big-header`: a request whose header never ends, 256 MB of it, as fast as loopback takes it,
    started again whenever the server refuses it;
  - `idle`: 19,000 connections (the attackers' own descriptor limit stops just short of 20,000)
    that never send a byte, reopened when closed;
  - `slowloris`: 1,000 connections, each sending a request head one byte every 0.5 s.

Phases alternate (no attack, attack A, no attack, attack B, ...) for `--rounds` rounds, each
`--seconds` long, so every attack is compared with a baseline measured around it; the figure per
attack is the median over rounds of the p99 (and of the request rate), and the ratio to the
median baseline. The server's CPU time per phase comes from /proc. Results go to the "Edge under
attack" section of bench/RESULTS.md (other sections kept).

    REVOC_DATABASE_URL=postgresql://... python bench/edge_bench.py [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Edge under attack"
ATTACKS = ("big-header", "idle", "slowloris")
HOST = "127.0.0.1"
# `revoc serve` as it was before the edge limits: the lane protocol straight, uvicorn defaults.
UNPROTECTED = """
import sys, uvicorn
from responder.app import create_app
from responder.fast_lane import FastLaneProtocol
from revoc.settings import load_settings
import os
settings = load_settings(os.environ)
uvicorn.run(create_app(settings), host=sys.argv[1], port=int(sys.argv[2]), loop="uvloop",
            http=FastLaneProtocol, access_log=False, server_header=False, log_level="warning")
"""


# ---------------------------------------------------------------------- roles (subprocesses)


async def client(port: int, path: str, seconds: float) -> dict[str, float]:
    """Warm-hit GETs back to back; latency of each (ms), reconnecting when closed."""
    request = f"GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n".encode()
    latencies: list[float] = []
    failures = reconnects = 0
    deadline = time.monotonic() + seconds
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 15)
                reconnects += 1
            assert reader is not None
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
            length = int(re.search(rb"content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            await asyncio.wait_for(reader.readexactly(length), 15)
            if not head.startswith(b"HTTP/1.1 200 "):
                failures += 1
            latencies.append((time.perf_counter() - started) * 1000)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            if writer is not None:
                writer.close()
            reader = writer = None
            failures += 1
    if writer is not None:
        writer.close()
    latencies.sort()
    count = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(count - 1, int(p * count))] if count else float("nan")

    return {"requests": count, "rate": count / seconds, "p50_ms": pct(0.50),
            "p99_ms": pct(0.99), "max_ms": latencies[-1] if count else float("nan"),
            "failures": failures, "connections": reconnects}


async def big_header(port: int, seconds: float, senders: int = 8) -> dict[str, float]:
    """`senders` connections at a time, each sending one request after another whose header
    never ends (256 MB each); counts how many the server cut off (431, or closed) early."""
    chunk = b"a" * 65536
    attempts = cut_off = answered_431 = 0
    sent = 0
    deadline = time.monotonic() + seconds

    async def sender() -> None:
        while time.monotonic() < deadline:
            await one_request()

    async def one_request() -> None:
        nonlocal attempts, cut_off, answered_431, sent
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.01)
            return
        attempts += 1
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: bench\r\nx-big: ")
        reply = asyncio.ensure_future(reader.read(100))
        this = 0
        try:
            while this < 256 * 1024 * 1024 and time.monotonic() < deadline and not reply.done():
                writer.write(chunk)
                await writer.drain()
                this += len(chunk)
        except OSError:
            pass
        sent += this
        cut_off += this < 256 * 1024 * 1024 and time.monotonic() < deadline
        with contextlib.suppress(OSError, TimeoutError):
            answered_431 += (await asyncio.wait_for(reply, 2)).startswith(b"HTTP/1.1 431")
        reply.cancel()
        writer.close()

    await asyncio.gather(*(sender() for _ in range(senders)))
    return {"attempts": attempts, "cut_off": cut_off, "answered_431": answered_431,
            "mb_sent": sent / 1e6}


async def hold_connections(port: int, count: int, seconds: float,
                           head: bytes | None) -> dict[str, float]:
    """`count` connections kept open (reopened when closed); with `head`, each trickles it one
    byte every 0.5 s (slowloris)."""
    opened = let_go = 0
    deadline = time.monotonic() + seconds

    async def one(index: int) -> None:
        nonlocal opened, let_go
        await asyncio.sleep(index * 0.0002)  # spread the connects
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            opened += 1
            try:
                position = 0
                while time.monotonic() < deadline:
                    wait = deadline - time.monotonic()
                    if head is not None:
                        writer.write(head[position % len(head):position % len(head) + 1])
                        position += 1
                        wait = 0.5
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(reader.read(4096), wait)
                        let_go += 1  # an answer (408, 503) or the end: the server let go
                        break
            except OSError:
                let_go += 1
            writer.close()

    await asyncio.gather(*(one(i) for i in range(count)))
    return {"connections_opened": opened, "closed_by_server": let_go}


def run_role(args: argparse.Namespace) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.role == "client":
        result = asyncio.run(client(args.port, args.path, args.seconds))
    elif args.role == "big-header":
        result = asyncio.run(big_header(args.port, args.seconds))
    elif args.role == "idle":
        result = asyncio.run(hold_connections(args.port, args.count, args.seconds, None))
    else:
        head = b"GET /healthz HTTP/1.1\r\nhost: bench\r\nx-slow: " + b"z" * 10_000
        result = asyncio.run(hold_connections(args.port, args.count, args.seconds, head))
    print(json.dumps(result))


# ---------------------------------------------------------------------- orchestration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def role(name: str, port: int, seconds: float, **extra: object) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "--role", name, "--port", str(port),
               "--seconds", str(seconds)]
    for key, value in extra.items():
        command += [f"--{key}", str(value)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def collect(proc: subprocess.Popen[str], timeout: float) -> dict[str, float]:
    out, _ = proc.communicate(timeout=timeout)
    return json.loads(out.strip().splitlines()[-1]) if out.strip() else {}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def phase(attack: str | None, port: int, path: str, seconds: float,
          server_pid: int) -> dict[str, object]:
    attacker = None
    if attack == "big-header":
        attacker = role(attack, port, seconds + 2)
    elif attack == "idle":
        # Two processes: each stays below its own descriptor limit (20,000 here).
        attacker = [role(attack, port, seconds + 6, count=9500) for _ in range(2)]  # type: ignore[assignment]
    elif attack == "slowloris":
        attacker = role(attack, port, seconds + 4, count=1000)
    if attacker is not None:
        time.sleep(1.0 if attack == "big-header" else 3.0)  # let the attack build up first
    cpu_before = cpu_seconds(server_pid)
    measured = collect(role("client", port, seconds, path=path), seconds + 60)
    cpu = cpu_seconds(server_pid) - cpu_before
    rss = rss_mb(server_pid)
    attack_result: dict[str, float] = {}
    if attacker is not None:
        procs = attacker if isinstance(attacker, list) else [attacker]
        for proc in procs:
            for key, value in collect(proc, seconds + 60).items():
                attack_result[key] = attack_result.get(key, 0) + value
    return {"attack": attack or "none", "client": measured, "server_cpu_s": cpu,
            "server_rss_mb": rss, "attacker": attack_result}


def wait_ready(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1) as sock:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
            if sock.recv(100).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.2)
    raise SystemExit("revoc serve did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--role", choices=("client", *ATTACKS))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    parser.add_argument("--unprotected", action="store_true",
                        help="serve with uvicorn's protocol and the lane but no edge limits (what "
                        "issue 12 saw), for comparison; results go under their own heading")
    args = parser.parse_args()
    if args.role:
        run_role(args)
        return 0

    from edge_world import GOOD, bench_world  # bench/ is on sys.path when run as a script

    work = Path(tempfile.mkdtemp(prefix="revoc-edge-bench-"))
    with bench_world(work / "pki") as world:
        port = free_port()
        log_path = work / "serve.log"
        env = {**os.environ, "REVOC_DATABASE_URL": world.dsn, "REVOC_LOG_LEVEL": "WARNING"}
        command = [sys.executable, "-m", "revoc.cli", "serve", "--host", HOST, "--port",
                   str(port)]
        if args.unprotected:
            command = [sys.executable, "-c", UNPROTECTED, HOST, str(port)]
        with open(log_path, "w") as log:
            server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        try:
            wait_ready(port)
            path = "/ocsp/" + base64.b64encode(world.request(GOOD)).decode()
            collect(role("client", port, 1.0, path=path), 60)  # warm the memo
            phases: list[dict[str, object]] = []
            for round_ in range(args.rounds):
                for attack in ATTACKS:
                    for name in (None, attack):
                        result = phase(name, port, path, args.seconds, server.pid)
                        result["round"] = round_
                        phases.append(result)
                        print(json.dumps(result), flush=True)
            nofile = Path(f"/proc/{server.pid}/limits").read_text()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
        log_lines = [line for line in log_path.read_text().splitlines()
                     if "edge limits acted" in line]
    summary = summarize(phases, args)
    print(summary)
    print("\n".join(log_lines[:5]))
    limit = next((line for line in nofile.splitlines() if "open files" in line), "")
    if not args.no_write:
        write_results(summary, log_lines, limit, unprotected=args.unprotected)
    return 0


def summarize(phases: list[dict[str, object]], args: argparse.Namespace) -> str:
    def median(attack: str, key: str) -> float:
        values = [p["client"][key] for p in phases if p["attack"] == attack]  # type: ignore[index]
        return statistics.median(values) if values else float("nan")

    def median_of(attack: str, key: str) -> float:
        values = [float(p[key]) for p in phases if p["attack"] == attack]  # type: ignore[arg-type]
        return statistics.median(values) if values else float("nan")

    base_p99 = median("none", "p99_ms")
    base_rate = median("none", "rate")
    rows = ["| phase | client p99 (ms) | p99 / no attack | client req/s | req/s / no attack "
            "| client failures | server CPU s | server RSS MB | attacker |",
            "|---|---|---|---|---|---|---|---|---|"]
    for attack in ("none", *ATTACKS):
        attacker = [p["attacker"] for p in phases if p["attack"] == attack]
        failures = sum(p["client"]["failures"] for p in phases  # type: ignore[index,misc]
                       if p["attack"] == attack)
        what = ", ".join(f"{k} {statistics.median(a[k] for a in attacker):.0f}"  # type: ignore[index]
                         for k in (attacker[0] if attacker else {}))
        p99 = median(attack, "p99_ms")
        rate = median(attack, "rate")
        rows.append(f"| {attack} | {p99:.2f} | {p99 / base_p99:.2f} | {rate:.0f} | "
                    f"{rate / base_rate:.2f} | {failures} | {median_of(attack, 'server_cpu_s'):.2f}"
                    f" | {median_of(attack, 'server_rss_mb'):.0f} | {what or '-'} |")
    return (f"{args.rounds} rounds x (no attack, attack) per attack, {args.seconds:.0f} s each, "
            "medians over rounds\n\n" + "\n".join(rows))


def write_results(summary: str, log_lines: list[str], limit: str, *,
                  unprotected: bool = False) -> None:
    title = SECTION + (" (without the edge limits, for comparison)" if unprotected else "")
    section = "\n".join([
        title, "",
        ("`python bench/edge_bench.py --unprotected`: the same, against a worker serving "
         "uvicorn's protocol with the lane and no edge limits (what issue 12 saw). "
         if unprotected else
         "`python bench/edge_bench.py` (issue 12 point 6): one `revoc serve` worker with its "
         "default edge limits. ") + "A well-behaved client sends warm-hit GETs back to back on "
        "keep-alive while one attack runs, phases interleaved with no-attack baselines. "
        "Loopback only, on the shared 2-core machine (other engineers' jobs ran meanwhile, and "
        "the attackers and the client share the two cores with the server): read the ratios, "
        "not the absolute figures. Server CPU is over the client's measuring window.", "",
        summary, "",
        f"Server descriptor limit after start: `{' '.join(limit.split())}`.", "",
        "What the server logged (first lines):", "", "```",
        *(log_lines[:4] or ["(nothing)"]), "```", ""])
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = text.find(title + "\n")
    if start >= 0:
        end = text.find("\n## ", start + len(title))
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
