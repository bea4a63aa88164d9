"""Warm-hit OCSP throughput of `revoc serve` against nginx serving the same bytes (issue 4 item 10).

One run does everything: a database (REVOC_DATABASE_URL, else an embedded PostgreSQL under /tmp),
a test PKI with pre-signed responses, `revoc serve --workers 1` pinned to core 0 (with the
protocol-level lane of responder/fast_lane.py, and again without it), nginx (one worker, core 0)
serving the response as a static file (tuned, and a stock-style configuration), a bare raw-ASGI
dict lookup as a baseline (core 0), and wrk on core 1 (`wrk -t1 -c64 -d10s --latency`, POST via a
Lua script). Results go into the "OCSP serving" section of bench/RESULTS.md (other sections are
kept).

    python bench/ocsp_bench.py [--duration 10s] [--connections 64]

Needs wrk, nginx and taskset on PATH (it installs nothing). Run it on an otherwise idle machine:
other load on the two cores makes the figures noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revoc.db import create_pool, upgrade  # noqa: E402
from revoc.embedded_pg import EmbeddedPostgres  # noqa: E402
from tests.world import GOOD, setup_world  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## OCSP serving"

BARE_APP = '''
RESPONSES = {}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    if scope["method"] == "POST":
        message = await receive()
        body = message.get("body", b"")
    der = RESPONSES.get(body or scope["raw_path"], RESPONSE)
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/ocsp-response"),
        (b"content-length", str(len(der)).encode())]})
    await send({"type": "http.response.body", "body": der})

import pathlib, os
RESPONSE = pathlib.Path(os.environ["BARE_RESPONSE"]).read_bytes()
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


@contextmanager
def process(command: list[str], env: dict[str, str] | None = None,
            log: Path | None = None, cwd: Path | str | None = None
            ) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` in a session of its own; on exit (also on Ctrl-C or an exception) SIGTERM
    its whole process group (uvicorn workers, openssl -multi children), SIGKILL after 10 s."""
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(command, env=env, stdout=out, stderr=out if log else subprocess.PIPE,
                            start_new_session=True, cwd=cwd)
    try:
        yield proc
    finally:
        stop_group(proc)
        if log is not None:
            out.close()  # type: ignore[union-attr]


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with suppress(ProcessLookupError):  # children that outlived their parent
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.stderr is not None:
        proc.stderr.close()


def wrk(url: str, duration: str, connections: int, script: Path | None,
        timeout: float | None = None) -> dict[str, float]:
    """wrk -t1 on core 1; rps, p50/p99 in ms, non-2xx count, socket errors, requests done."""
    command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration}",
               "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    if timeout is None:
        timeout = seconds(duration) + 60
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True,
                            timeout=timeout).stdout
    return parse_wrk(output)


def seconds(duration: str) -> float:
    """wrk's duration syntax: 10, 10s, 2m, 1h."""
    units = {"s": 1, "m": 60, "h": 3600}
    if duration[-1] in units:
        return float(duration[:-1]) * units[duration[-1]]
    return float(duration)


def parse_wrk(output: str) -> dict[str, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]

    def latency(percent: str) -> float:
        match = re.search(rf"\s{percent}%\s+([\d.]+)(us|ms|s)", output)
        assert match, output
        value = float(match.group(1))
        return value / 1000 if match.group(2) == "us" else value * (1000 if match.group(2) == "s"
                                                                     else 1)

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    done = re.search(r"(\d+) requests in", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        output)
    return {"rps": rps, "p50": latency("50"), "p99": latency("99"),
            "non2xx": float(errors.group(1)) if errors else 0.0,
            "requests": float(done.group(1)) if done else 0.0,
            "socket_errors": float(sum(int(g) for g in sockets.groups())) if sockets else 0.0}


async def create_database(server_dsn: str) -> str:
    """A fresh `revoc_bench_<hex>` database: never touch the rows of a database in use."""
    name = f"revoc_bench_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return urlunsplit(urlsplit(server_dsn)._replace(path="/" + name))


async def drop_database(server_dsn: str, dsn: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{urlsplit(dsn).path[1:]}" WITH (FORCE)')
    finally:
        await admin.close()


async def prepare(dsn: str, directory: Path) -> tuple[bytes, bytes]:
    conn = await asyncpg.connect(dsn)
    try:
        await upgrade(conn)
    finally:
        await conn.close()
    pool = await create_pool(dsn)
    try:
        world = await setup_world(pool, dsn, directory)
    finally:
        await pool.close()
    return world.request(GOOD), b""


def find_tools(*tools: str) -> dict[str, str]:
    """Absolute paths of the tools (also /usr/sbin, where Debian puts nginx), or exit saying
    which one is missing."""
    found: dict[str, str] = {}
    for tool in tools:
        path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
        if path is None:
            raise SystemExit(f"{tool} is not installed (apt-get install -y nginx wrk)")
        found[tool] = path
    return found


@contextmanager
def postgres_server(work: Path) -> Iterator[str]:
    """The DSN of a PostgreSQL server for the block: REVOC_DATABASE_URL's, else an embedded one
    under `work` (stopped afterwards)."""
    server_dsn = os.environ.get("REVOC_DATABASE_URL")
    if server_dsn:
        yield server_dsn
        return
    server = EmbeddedPostgres(work / "pg", durable=False)
    try:
        yield server.start()
    finally:
        server.stop()


@contextmanager
def fresh_database(server_dsn: str) -> Iterator[str]:
    """A new empty database on that server for the block, dropped afterwards."""
    dsn = asyncio.run(create_database(server_dsn))
    try:
        yield dsn
    finally:
        asyncio.run(drop_database(server_dsn, dsn))


@contextmanager
def database(work: Path) -> Iterator[tuple[str, str]]:
    """(server DSN, DSN of a fresh database on it) for the length of the block."""
    with postgres_server(work) as server_dsn, fresh_database(server_dsn) as dsn:
        yield server_dsn, dsn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    nginx = find_tools("wrk", "nginx", "taskset")["nginx"]
    work = Path(tempfile.mkdtemp(prefix="revoc-bench-", dir="/tmp"))
    work.chmod(0o755)
    try:
        with database(work) as (_server_dsn, dsn):
            request, _ = asyncio.run(prepare(dsn, work / "pki"))
            return run(args, work, dsn, request, nginx)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_post_lua(work: Path, request: bytes, name: str = "post") -> Path:
    """A wrk script POSTing `request` (application/ocsp-request)."""
    body = work / f"{name}.der"
    body.write_bytes(request)
    lua = work / f"{name}.lua"
    lua.write_text(textwrap.dedent(f"""
        wrk.method = "POST"
        wrk.headers["Content-Type"] = "application/ocsp-request"
        local f = io.open("{body}", "rb")
        wrk.body = f:read("*a")
        f:close()
    """))
    return lua


def get_path(request: bytes, prefix: str = "/ocsp/") -> str:
    return prefix + base64.b64encode(request).decode()


def revoc_env(dsn: str) -> dict[str, str]:
    return {**os.environ, "REVOC_DATABASE_URL": dsn, "REVOC_LOG_LEVEL": "WARNING"}


def revoc_serve_command(port: int, workers: int = 1, core: str = "0") -> list[str]:
    return ["taskset", "-c", core, sys.executable, "-m", "revoc.cli", "serve",
            "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port)]


def wait_ready(base: str, timeout: float = 30) -> None:
    """/healthz answers, then /readyz says 200."""
    wait_http(f"{base}/healthz", timeout)
    deadline = time.monotonic() + timeout
    while httpx.get(f"{base}/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"{base} never became ready")
        time.sleep(0.1)


def write_nginx_conf(work: Path, port: int, name: str = "nginx", *, tuned: bool = True) -> Path:
    """One worker serving work/www/ocsp/response.der for every path and method (POST too).

    `tuned` is the strongest simple configuration for a tiny static file: open_file_cache (no
    open/fstat per request) and sendfile off (one writev instead of headers + sendfile). Without
    it, the stock-style configuration earlier runs of this benchmark used.
    """
    conf = work / f"{name}.conf"
    tuning = ("open_file_cache max=64 inactive=60s; open_file_cache_valid 60s;" if tuned
              else "")
    conf.write_text(textwrap.dedent(f"""
        daemon off;
        worker_processes 1;
        pid {work / (name + '.pid')};
        error_log {work / (name + '-error.log')};
        events {{ worker_connections 1024; }}
        http {{
            access_log off;
            sendfile {"off" if tuned else "on"};
            tcp_nopush on;
            keepalive_requests 100000;
            {tuning}
            server {{
                listen 127.0.0.1:{port};
                root {work / 'www'};
                location / {{
                    default_type application/ocsp-response;
                    try_files /ocsp/response.der =404;
                    error_page 405 =200 $uri;
                }}
            }}
        }}
    """))
    return conf


def nginx_command(nginx: str, conf: Path, core: str = "0") -> list[str]:
    return ["taskset", "-c", core, nginx, "-c", str(conf), "-e", str(conf.with_suffix(".log"))]


def run(args: argparse.Namespace, work: Path, dsn: str, request: bytes, nginx: str) -> int:
    path = get_path(request)
    lua = write_post_lua(work, request)
    results: dict[str, dict[str, float]] = {}

    def measure(name: str, base: str) -> None:
        results[f"{name} POST"] = wrk(base + "/ocsp", args.duration, args.connections, lua)
        results[f"{name} GET"] = wrk(base + path, args.duration, args.connections, None)

    response = b""
    for name, lane in (("revoc", "true"), ("revoc, lane off", "false")):
        port = free_port()
        with process(revoc_serve_command(port), {**revoc_env(dsn), "REVOC_FAST_LANE": lane}):
            base = f"http://127.0.0.1:{port}"
            wait_ready(base)
            response = httpx.post(f"{base}/ocsp", content=request).content
            assert httpx.get(f"{base}{path}").content == response
            measure(name, base)
    # Static copy for nginx and the bare baseline.
    static = work / "www" / "ocsp"
    static.mkdir(parents=True)
    (static / "response.der").write_bytes(response)

    for name, tuned in (("nginx", True), ("nginx stock", False)):
        port = free_port()
        conf = write_nginx_conf(work, port, name.replace(" ", "-"), tuned=tuned)
        with process(nginx_command(nginx, conf)):
            wait_http(f"http://127.0.0.1:{port}/ocsp")
            measure(name, f"http://127.0.0.1:{port}")

    (work / "bare_app.py").write_text(BARE_APP)
    bare_env = {**os.environ, "BARE_RESPONSE": str(work / "www" / "ocsp" / "response.der"),
                "PYTHONPATH": str(work)}
    bare_port = free_port()
    with process(["taskset", "-c", "0", sys.executable, "-m", "uvicorn", "bare_app:app",
                  "--host", "127.0.0.1", "--port", str(bare_port), "--loop", "uvloop",
                  "--http", "httptools", "--no-access-log", "--log-level", "warning"],
                 bare_env):
        wait_http(f"http://127.0.0.1:{bare_port}/ocsp")
        measure("bare ASGI", f"http://127.0.0.1:{bare_port}")

    write_results(results, args, len(response))
    for name, figures in results.items():
        print(f"{name:22} {figures['rps']:>10.0f} req/s  p50 {figures['p50']:.2f} ms  "
              f"p99 {figures['p99']:.2f} ms  non-2xx {figures['non2xx']:.0f}")
    return 0


SERVERS = ("revoc", "revoc, lane off", "bare ASGI", "nginx", "nginx stock")


def write_results(results: dict[str, dict[str, float]], args: argparse.Namespace,
                  size: int) -> None:
    lines = [
        SECTION, "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python bench/ocsp_bench.py` "
        f"(wrk -t1 -c{args.connections} -d{args.duration} on core 1; servers pinned to core 0; "
        f"one worker each; warm hits of one pre-signed {size}-byte response). \"nginx\" is tuned "
        "for a tiny static file (open_file_cache, sendfile off); \"nginx stock\" is the plain "
        "configuration of earlier runs. \"lane off\" is `revoc serve` with REVOC_FAST_LANE=false "
        "(every request through the ASGI app). Figures move from run to run on this 2-core VM; "
        "compare ratios.", "",
        "| server | method | requests/s | p50 ms | p99 ms | vs nginx | vs nginx stock |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for server in SERVERS:
        for method in ("POST", "GET"):
            figures = results[f"{server} {method}"]
            ratio = figures["rps"] / results[f"nginx {method}"]["rps"]
            stock = figures["rps"] / results[f"nginx stock {method}"]["rps"]
            lines.append(f"| {server} | {method} | {figures['rps']:.0f} | {figures['p50']:.2f} "
                         f"| {figures['p99']:.2f} | {ratio:.0%} | {stock:.0%} |")
    verdicts = []
    for method in ("POST", "GET"):
        ratio = results[f"revoc {method}"]["rps"] / results[f"nginx {method}"]["rps"]
        p99 = results[f"revoc {method}"]["p99"]
        met_ratio = "met" if ratio >= 0.4 else "NOT met"
        met_p99 = "met" if p99 < 5 else "NOT met"
        verdicts.append(f"{method} {ratio:.0%} of tuned nginx ({met_ratio}), "
                        f"p99 {p99:.2f} ms ({met_p99})")
    lines += ["", "Targets (issue 4): revoc >= 40% of nginx for POST and GET, p99 < 5 ms at "
              f"{args.connections} connections. This run: " + "; ".join(verdicts) + ".", ""]
    replace_section(SECTION, "\n".join(lines) + "\n")


def replace_section(title: str, section: str) -> None:
    """Put `section` (starting with its `title` line) into bench/RESULTS.md in place of the old
    one, or append it; the other sections stay as they are."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
