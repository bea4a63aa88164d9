"""Warm-hit OCSP throughput of `revoc serve` against nginx serving the same bytes (issue 4 item 10).

One run does everything: a database (REVOC_DATABASE_URL, else an embedded PostgreSQL under /tmp),
a test PKI with pre-signed responses, `revoc serve --workers 1` pinned to core 0, nginx (one
worker, core 0) serving the response as a static file, a bare raw-ASGI dict lookup as a baseline
(core 0), and wrk on core 1 (`wrk -t1 -c64 -d10s --latency`, POST via a Lua script). Results go
into the "OCSP serving" section of bench/RESULTS.md (other sections are kept).

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
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revoc.db import create_pool, upgrade  # noqa: E402
from revoc.embedded_pg import EmbeddedPostgres  # noqa: E402
from tests.test_responder import GOOD, setup_world  # noqa: E402

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
def process(command: list[str], env: dict[str, str] | None = None) -> Iterator[None]:
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wrk(url: str, duration: str, connections: int, script: Path | None) -> dict[str, float]:
    command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration}",
               "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]

    def latency(percent: str) -> float:
        match = re.search(rf"\s{percent}%\s+([\d.]+)(us|ms|s)", output)
        assert match, output
        value = float(match.group(1))
        return value / 1000 if match.group(2) == "us" else value * (1000 if match.group(2) == "s"
                                                                     else 1)

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {"rps": rps, "p50": latency("50"), "p99": latency("99"),
            "non2xx": float(errors.group(1)) if errors else 0.0}


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is not installed (apt-get install -y nginx wrk)")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    work = Path(tempfile.mkdtemp(prefix="revoc-bench-", dir="/tmp"))
    work.chmod(0o755)
    server = None
    dsn = os.environ.get("REVOC_DATABASE_URL")
    if not dsn:
        server = EmbeddedPostgres(work / "pg", durable=False)
        dsn = server.start()
    server_dsn = dsn
    dsn = asyncio.run(create_database(server_dsn))
    try:
        request, _ = asyncio.run(prepare(dsn, work / "pki"))
        return run(args, work, dsn, request, nginx)
    finally:
        asyncio.run(drop_database(server_dsn, dsn))
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path, dsn: str, request: bytes, nginx: str) -> int:
    revoc_port, nginx_port, bare_port = free_port(), free_port(), free_port()
    env = {**os.environ, "REVOC_DATABASE_URL": dsn, "REVOC_LOG_LEVEL": "WARNING"}
    get_path = "/ocsp/" + base64.b64encode(request).decode()
    (work / "request.der").write_bytes(request)
    lua = work / "post.lua"
    lua.write_text(textwrap.dedent(f"""
        wrk.method = "POST"
        wrk.headers["Content-Type"] = "application/ocsp-request"
        local f = io.open("{work / 'request.der'}", "rb")
        wrk.body = f:read("*a")
        f:close()
    """))
    results: dict[str, dict[str, float]] = {}
    with process(["taskset", "-c", "0", sys.executable, "-m", "revoc.cli", "serve",
                  "--workers", "1", "--host", "127.0.0.1", "--port", str(revoc_port)], env):
        wait_http(f"http://127.0.0.1:{revoc_port}/healthz")
        deadline = time.monotonic() + 20
        while httpx.get(f"http://127.0.0.1:{revoc_port}/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise SystemExit("revoc serve never became ready")
            time.sleep(0.1)
        response = httpx.post(f"http://127.0.0.1:{revoc_port}/ocsp", content=request).content
        assert httpx.get(f"http://127.0.0.1:{revoc_port}{get_path}").content == response
        # Static copy for nginx and the bare baseline.
        static = work / "www" / "ocsp"
        static.mkdir(parents=True)
        (static / "response.der").write_bytes(response)
        base = f"http://127.0.0.1:{revoc_port}"
        results["revoc POST"] = wrk(base + "/ocsp", args.duration, args.connections, lua)
        results["revoc GET"] = wrk(base + get_path, args.duration, args.connections, None)

    conf = work / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""
        daemon off;
        worker_processes 1;
        pid {work / 'nginx.pid'};
        error_log {work / 'nginx-error.log'};
        events {{ worker_connections 1024; }}
        http {{
            access_log off;
            sendfile on;
            tcp_nopush on;
            keepalive_requests 100000;
            server {{
                listen 127.0.0.1:{nginx_port};
                root {work / 'www'};
                location / {{
                    default_type application/ocsp-response;
                    try_files /ocsp/response.der =404;
                    error_page 405 =200 $uri;
                }}
            }}
        }}
    """))
    with process(["taskset", "-c", "0", nginx, "-c", str(conf), "-e", str(work / "nginx.log")]):
        wait_http(f"http://127.0.0.1:{nginx_port}/ocsp")
        base = f"http://127.0.0.1:{nginx_port}"
        results["nginx POST"] = wrk(base + "/ocsp", args.duration, args.connections, lua)
        results["nginx GET"] = wrk(base + get_path, args.duration, args.connections, None)

    (work / "bare_app.py").write_text(BARE_APP)
    bare_env = {**os.environ, "BARE_RESPONSE": str(work / "www" / "ocsp" / "response.der"),
                "PYTHONPATH": str(work)}
    with process(["taskset", "-c", "0", sys.executable, "-m", "uvicorn", "bare_app:app",
                  "--host", "127.0.0.1", "--port", str(bare_port), "--loop", "uvloop",
                  "--http", "httptools", "--no-access-log", "--log-level", "warning"],
                 bare_env):
        wait_http(f"http://127.0.0.1:{bare_port}/ocsp")
        base = f"http://127.0.0.1:{bare_port}"
        results["bare ASGI POST"] = wrk(base + "/ocsp", args.duration, args.connections, lua)
        results["bare ASGI GET"] = wrk(base + get_path, args.duration, args.connections, None)

    write_results(results, args, len(response))
    for name, figures in results.items():
        print(f"{name:16} {figures['rps']:>10.0f} req/s  p50 {figures['p50']:.2f} ms  "
              f"p99 {figures['p99']:.2f} ms  non-2xx {figures['non2xx']:.0f}")
    return 0


def write_results(results: dict[str, dict[str, float]], args: argparse.Namespace,
                  size: int) -> None:
    lines = [
        SECTION, "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python bench/ocsp_bench.py` "
        f"(wrk -t1 -c{args.connections} -d{args.duration} on core 1; servers pinned to core 0; "
        f"one worker each; warm hits of one pre-signed {size}-byte response). Other work ran on "
        "this 2-core machine at the same time, so figures are noisy.", "",
        "| server | method | requests/s | p50 ms | p99 ms | vs nginx |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for server in ("revoc", "bare ASGI", "nginx"):
        for method in ("POST", "GET"):
            figures = results[f"{server} {method}"]
            ratio = figures["rps"] / results[f"nginx {method}"]["rps"]
            lines.append(f"| {server} | {method} | {figures['rps']:.0f} | {figures['p50']:.2f} "
                         f"| {figures['p99']:.2f} | {ratio:.0%} |")
    lines += ["", "Targets (issue 4): revoc >= 40% of nginx for POST and GET, p99 < 5 ms.", ""]
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    section = "\n".join(lines) + "\n"
    text = pattern.sub(section, text) if pattern.search(text) else text.rstrip("\n") + \
        "\n\n" + section
    RESULTS.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
