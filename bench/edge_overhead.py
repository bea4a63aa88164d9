"""What the edge limits (responder/edge.py) add to a warm fast-lane hit, in-process.

The same keep-alive GET, answered from the memo by the lane, fed straight into the protocol
(bench/fuzz/targets.py's fake transport, no sockets) 20,000 times, with and without the edge
mixin in front; 7 interleaved rounds, medians. Needs REVOC_DATABASE_URL (a throwaway database).

    REVOC_DATABASE_URL=postgresql://... python bench/edge_overhead.py
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def main() -> None:
    import uvloop
    from edge_world import GOOD, bench_world
    from fuzz.targets import FakeTransport, HttpEdge

    from responder.fast_lane import FastLaneProtocol
    from responder.fast_path import STATE_KEY
    from revoc.db import create_pool
    from revoc.settings import Settings

    with tempfile.TemporaryDirectory() as work, bench_world(Path(work)) as world:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        pool = loop.run_until_complete(create_pool(world.dsn, min_size=1, max_size=2))
        edge = HttpEdge(Settings(database_url=world.dsn), pool)
        loop.run_until_complete(edge.start())
        request = (b"GET /ocsp/" + base64.b64encode(world.request(GOOD))
                   + b" HTTP/1.1\r\nhost: r\r\n\r\n")
        loop.run_until_complete(edge.check(request))  # fills the memo
        # The lane finds the fast path in the lifespan state, as uvicorn hands it over.
        app_state = {STATE_KEY: edge.app.state.responder.fast_path}
        per_request: dict[str, list[float]] = {"plain": [], "edge": []}
        count = 20_000
        for _round in range(7):
            for kind in per_request:
                transport = FakeTransport(loop)
                kwargs = {"config": edge.config, "server_state": edge.server_state,
                          "app_state": app_state}
                protocol = (edge.factory(**kwargs) if kind == "edge"
                            else FastLaneProtocol(**kwargs))  # type: ignore[arg-type]
                transport.protocol = protocol
                protocol.connection_made(transport)
                protocol.data_received(request)
                loop.run_until_complete(asyncio.sleep(0))  # held answers go out
                assert transport.written.startswith(b"HTTP/1.1 200 "), transport.written[:40]
                # Held answers are written once per pass of the loop; here after each request.
                flush = protocol._worker.flush  # type: ignore[union-attr]
                started = time.perf_counter()
                for _ in range(count):
                    protocol.data_received(request)
                    flush()
                    transport.written.clear()
                per_request[kind].append((time.perf_counter() - started) / count * 1e6)
                transport.close()
                loop.run_until_complete(asyncio.sleep(0))
        plain = statistics.median(per_request["plain"])
        edged = statistics.median(per_request["edge"])
        print(f"warm lane hit, protocol only: {plain:.2f} us plain, {edged:.2f} us with the edge "
              f"(+{edged - plain:.2f} us, x{edged / plain:.2f}); rounds: {per_request}")
        loop.run_until_complete(edge.stop())
        loop.run_until_complete(pool.close())


if __name__ == "__main__":
    main()
