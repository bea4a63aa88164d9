"""CPU per cold miss of `revoc serve`'s protocol stack (edge + lane + pipeline + store), in process.

64 keep-alive connections on fake transports (no sockets: the kernel's share of a real request
is not in it), each POSTing the next distinct certificate as soon as its previous answer is
written, against the database `bench/ocsp_compare.py --cold-keep DIR` loaded (every request a
miss: the cache warm-up is off here). `time.process_time` of this process (PostgreSQL's CPU is
not in it) over `--count` misses, after 2,000 to settle; the store's batches are counted too.

    python bench/miss_cpu.py /tmp/cold-keep [--count 30000] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import pickle
import re
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def bodies(lua: Path) -> list[bytes]:
    """The request bodies of a cold wrk script (bench/suite.py `write_cycle_lua`)."""
    text = lua.read_text()
    data = Path(re.search(r'io.open\("([^"]+)"', text).group(1))  # type: ignore[union-attr]
    size = int(re.search(r"local size = (\d+)", text).group(1))  # type: ignore[union-attr]
    raw = data.read_bytes()
    return [raw[n:n + size] for n in range(0, len(raw), size)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("keep", type=Path)
    parser.add_argument("--count", type=int, default=30_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--skip", type=int, default=0, help="start at this request")
    parser.add_argument("--profile")
    args = parser.parse_args()

    import uvloop
    from fuzz.targets import FakeTransport, HttpEdge

    from responder.fast_path import STATE_KEY
    from revoc.db import create_pool
    from revoc.settings import Settings

    meta = pickle.loads((args.keep / "meta.pkl").read_bytes())
    requests = bodies(Path(meta["lua"]))[args.skip:args.skip + args.count + 2000]
    dsn = meta["dsn"]
    del meta  # a million key tuples the collector would scan
    gc.collect()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    pool = loop.run_until_complete(create_pool(dsn))
    edge = HttpEdge(Settings(database_url=dsn, cache_warm=False), pool)
    edge.settings = replace(edge.settings, keepalive_timeout=60, request_timeout=60)
    loop.run_until_complete(edge.start())
    app_state = {STATE_KEY: edge.app.state.responder.fast_path}
    total = args.count + 2000
    sent = 0
    answered = 0
    done = loop.create_future()
    marks: dict[str, float] = {}

    def wire(body: bytes) -> bytes:
        return (b"POST /ocsp HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
                b"Content-Type: application/ocsp-request\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)) + body

    class Client(FakeTransport):
        def write(self, data: Any) -> None:
            nonlocal answered
            assert bytes(data).startswith(b"HTTP/1.1 200 "), bytes(data[:100])
            answered += 1
            if answered == 2000:
                marks["cpu"] = time.process_time()
                marks["wall"] = time.perf_counter()
                marks["batches"] = store.misses.batches
            if answered == total:
                done.set_result(None)
            loop.call_soon(self.next)

        def next(self) -> None:
            nonlocal sent
            if sent < total and not self.closing:
                request = wire(requests[sent % len(requests)])
                sent += 1
                self.protocol.data_received(request)

    store = edge.app.state.responder.state.store
    clients = []
    for _ in range(args.connections):
        client = Client(loop)
        protocol = edge.factory(config=edge.config, server_state=edge.server_state,
                                app_state=app_state)
        client.protocol = protocol
        protocol.connection_made(client)
        clients.append(client)
    profile = None
    if args.profile:
        import cProfile
        profile = cProfile.Profile()
        profile.enable()
    for client in clients:
        client.next()
    loop.run_until_complete(done)
    if profile is not None:
        profile.disable()
        profile.dump_stats(args.profile)
    cpu = time.process_time() - marks["cpu"]
    wall = time.perf_counter() - marks["wall"]
    batches = store.misses.batches - marks["batches"]
    print(f"cold misses: {cpu / args.count * 1e6:.1f} us CPU per miss, {args.count / wall:,.0f} "
          f"misses/s in process, {args.count / max(batches, 1):.1f} keys per batch")
    for client in clients:
        client.close()
    loop.run_until_complete(asyncio.sleep(0.1))
    loop.run_until_complete(edge.stop())
    loop.run_until_complete(pool.close())


if __name__ == "__main__":
    main()
