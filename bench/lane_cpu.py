"""CPU per warm hit of `revoc serve`'s whole protocol stack (edge + lane), in process.

The keep-alive GET and POST that wrk sends in bench/ocsp_compare.py, answered from the memo, fed
straight into the protocol uvicorn would build (edge mixin in front of the fast lane, the fast
path in the app state as the lifespan hands it over), on a fake transport (no sockets, so this is
the Python side only: the kernel's share of a real request is not in it). `time.process_time`
per request, 7 interleaved rounds of 20,000 requests, medians. Needs REVOC_DATABASE_URL (a
throwaway database is made and dropped).

    REVOC_DATABASE_URL=postgresql://... python bench/lane_cpu.py [--profile out.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def requests(world: Any) -> dict[str, bytes]:
    der = world.request(0x1001)
    return {
        "GET": (b"GET /ocsp/" + base64.b64encode(der)
                + b" HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"),
        "POST": (b"POST /ocsp HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
                 b"Content-Type: application/ocsp-request\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(der)) + der,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", help="write a cProfile of one GET and one POST round")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    import uvloop
    from edge_world import bench_world
    from fuzz.targets import FakeTransport, HttpEdge

    from responder.fast_path import STATE_KEY
    from revoc.db import create_pool
    from revoc.settings import Settings

    with tempfile.TemporaryDirectory() as work, bench_world(Path(work)) as world:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        pool = loop.run_until_complete(create_pool(world.dsn, min_size=1, max_size=2))
        edge = HttpEdge(Settings(database_url=world.dsn, keepalive_timeout=5), pool)
        loop.run_until_complete(edge.start())
        app_state = {STATE_KEY: edge.app.state.responder.fast_path}
        wires = requests(world)

        def connect() -> tuple[Any, Any]:
            transport = FakeTransport(loop)
            protocol = edge.factory(config=edge.config, server_state=edge.server_state,
                                    app_state=app_state)
            transport.protocol = protocol
            protocol.connection_made(transport)
            return transport, protocol

        for wire in wires.values():  # fill the memo (a miss, answered later), then check a hit
            transport, protocol = connect()
            protocol.data_received(wire)
            for _ in range(20):
                loop.run_until_complete(asyncio.sleep(0.01))
            transport.written.clear()
            protocol.data_received(wire)
            loop.run_until_complete(asyncio.sleep(0))  # held answers go out at the pass's end
            assert transport.written.startswith(b"HTTP/1.1 200 "), bytes(transport.written[:80])
            transport.close()
            loop.run_until_complete(asyncio.sleep(0))

        def run(method: str, count: int) -> float:
            transport, protocol = connect()
            data_received = protocol.data_received
            # Held answers are written once per pass of the loop (many connections in a real
            # one); here once per request, run directly.
            worker = getattr(protocol, "_worker", None)
            flush = worker.flush if worker is not None else (lambda: None)
            written = transport.written
            wire = wires[method]
            started = time.process_time()
            for _ in range(count):
                data_received(wire)
                flush()
                written.clear()
            spent = time.process_time() - started
            transport.close()
            loop.run_until_complete(asyncio.sleep(0))
            return spent / count * 1e6

        if args.profile:
            import cProfile
            profile = cProfile.Profile()
            profile.enable()
            run("GET", args.count)
            run("POST", args.count)
            profile.disable()
            profile.dump_stats(args.profile)
        per_request: dict[str, list[float]] = {"GET": [], "POST": []}
        for _round in range(args.rounds):
            for method in per_request:
                per_request[method].append(run(method, args.count))
        for method, values in per_request.items():
            print(f"warm {method}: {statistics.median(values):.2f} us CPU per request "
                  f"(rounds: {' '.join(f'{v:.2f}' for v in values)})")
        loop.run_until_complete(edge.stop())
        loop.run_until_complete(pool.close())


if __name__ == "__main__":
    main()
