"""Run a fuzz target of bench/fuzz/targets.py for a given number of inputs.

    python bench/fuzz/run.py ocsp-request --inputs 1000000 [--engine atheris|mutate] [--seed N]
    python bench/fuzz/run.py get-path --inputs 1000000
    REVOC_DATABASE_URL=postgresql://... python bench/fuzz/run.py http-edge --inputs 100000

Engines: `atheris` (coverage-guided, libFuzzer's mutator; `pip install atheris`), the default
when it imports; `mutate`, this file's own seeded mutation driver (byte flips, inserts, deletes,
splices of seed inputs and of DER/HTTP fragments), for machines where atheris does not build.
Both start from the same seeds (real requests for a test PKI's certificates, GET paths, HTTP
requests). The http-edge target needs a PostgreSQL server: a fresh database is made on
REVOC_DATABASE_URL's server and dropped afterwards (bench/edge_world.py).

Exit status 0 when every input held, 1 on the first finding (the input is written to
`--crash-dir`, default /tmp, and its traceback printed). The last line says how many inputs ran.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE.parent)]

TARGETS = ("ocsp-request", "get-path", "http-edge")
FRAGMENTS = [b"\x30\x80", b"\x30\x81\xff", b"\x30\x84\xff\xff\xff\xff", b"\x02\x00", b"\x05\x00",
             b"\xa0\x03\x02\x01\x00", b"\xa2\x00", b"\x04\x00", b"%2F", b"%2B", b"%3D", b"%", b"=",
             b"/", b"+", b"-", b"_", b" ", b"\r\n", b"\r\n\r\n", b"content-length: 99\r\n",
             b"transfer-encoding: chunked\r\n", b"expect: 100-continue\r\n",
             b"connection: close\r\n", b"if-none-match: *\r\n", b"HTTP/1.0", b"\x00", b"\xff"]


def ocsp_seeds(requests: list[bytes]) -> list[bytes]:
    from revoc.der.ocsp import cert_id_der, encode_ocsp_request
    from revoc.model import HashAlgorithm

    seeds = list(requests)
    cert_id = cert_id_der(HashAlgorithm.SHA256, b"\x30\x00", b"\x01" * 65, 0x80AB12)
    seeds.append(encode_ocsp_request([cert_id] * 2, nonce=b"0123456789abcdef"))
    seeds.append(encode_ocsp_request([cert_id], nonce=b"\x01"))
    return seeds


def http_seeds(requests: list[bytes]) -> list[bytes]:
    seeds = []
    for der in requests[:2]:
        path = b"/ocsp/" + base64.b64encode(der)
        seeds += [
            b"GET " + path + b" HTTP/1.1\r\nhost: r\r\n\r\n",
            b"GET " + path.replace(b"/", b"%2F")[:-4] + b" HTTP/1.0\r\n\r\n",
            b"POST /ocsp HTTP/1.1\r\nhost: r\r\ncontent-type: application/ocsp-request\r\n"
            b"content-length: %d\r\n\r\n" % len(der) + der,
            b"POST /ocsp HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n" % len(der)
            + der + b"\r\n0\r\n\r\n",
            b"HEAD " + path + b" HTTP/1.1\r\nif-none-match: *\r\n\r\n",
            b"GET " + path + b" HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
        ]
    seeds.append(b"GET /crl/ca.crl HTTP/1.1\r\nhost: r\r\n\r\n")
    return seeds


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.choice((1, 1, 2, 3, 4, 8))):
        where = rng.randrange(len(data) + 1)
        action = rng.randrange(6)
        if action == 0 and data:
            data[min(where, len(data) - 1)] = rng.randrange(256)
        elif action == 1 and data:
            data[min(where, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif action == 2:
            del data[where:where + rng.randint(1, 16)]
        elif action == 3:
            data[where:where] = rng.choice(FRAGMENTS)
        elif action == 4:
            other = rng.choice(seeds)
            start = rng.randrange(len(other))
            data[where:where] = other[start:start + rng.randint(1, 64)]
        else:
            data[where:where] = bytes([rng.randrange(256)]) * rng.randint(1, 300)
    return bytes(data)


def run_mutate(target: Callable[[bytes], None], seeds: list[bytes], inputs: int, seed: int,
               crash_dir: Path) -> int:
    rng = random.Random(seed)
    started = time.monotonic()
    for count in range(inputs):
        data = seeds[count] if count < len(seeds) else mutate(rng, seeds)
        try:
            target(data)
        except Exception:
            path = crash_dir / f"crash-{int(time.time())}-{count}.bin"
            path.write_bytes(data)
            traceback.print_exc()
            print(f"FINDING after {count} inputs; input written to {path}")
            return 1
        if count and count % 100_000 == 0:
            print(f"{count} inputs, {count / (time.monotonic() - started):.0f}/s", flush=True)
    print(f"{inputs} inputs, no finding ({time.monotonic() - started:.0f} s, engine mutate)")
    return 0


def run_atheris(target: Callable[[bytes], None], seeds: list[bytes], inputs: int, seed: int,
                crash_dir: Path) -> int:
    import atheris

    corpus = Path(tempfile.mkdtemp(prefix="revoc-fuzz-corpus-"))
    for index, data in enumerate(seeds):
        (corpus / f"seed{index}").write_bytes(data)
    done = 0
    started = time.monotonic()

    def one(data: bytes) -> None:
        nonlocal done
        done += 1
        target(data)
        if done % 100_000 == 0:
            print(f"{done} inputs, {done / (time.monotonic() - started):.0f}/s", flush=True)
        if done == inputs:  # libFuzzer exits from C after the last run, past any Python code
            print(f"{done} inputs, no finding ({time.monotonic() - started:.0f} s, engine "
                  "atheris)", flush=True)

    argv = [sys.argv[0], f"-runs={inputs}", f"-seed={seed or 1}", "-max_len=4096",
            f"-artifact_prefix={crash_dir}/", "-print_final_stats=1", str(corpus)]
    atheris.Setup(argv, one)
    try:
        atheris.Fuzz()
    except SystemExit as exit_:  # libFuzzer exits after -runs; a finding exits non-zero
        code = int(exit_.code or 0)
        print(f"{done} inputs, {'no finding' if code == 0 else 'FINDING'} "
              f"({time.monotonic() - started:.0f} s, engine atheris)")
        return code
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--engine", choices=("atheris", "mutate"), default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crash-dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    engine = args.engine
    if engine is None:
        try:
            import atheris
            engine = "atheris"
        except ImportError:
            engine = "mutate"
    if engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=["revoc", "responder"]):
            import responder.ocsp_endpoint  # noqa: F401
            import revoc.der.ocsp  # noqa: F401
    runner = run_atheris if engine == "atheris" else run_mutate

    from edge_world import GOOD, REVOKED, bench_world
    from fuzz import targets

    if args.target in ("ocsp-request", "get-path"):
        from revoc.der.ocsp import cert_id_der, encode_ocsp_request
        from revoc.model import HashAlgorithm

        requests = [encode_ocsp_request([cert_id_der(algorithm, b"\x30\x03\x31\x01\x00",
                                                     b"\x00\x01\x02", serial)])
                    for algorithm in HashAlgorithm for serial in (1, 0x80, 2**159)]
        seeds = ocsp_seeds(requests)
        if args.target == "ocsp-request":
            return runner(targets.ocsp_request, seeds, args.inputs, args.seed, args.crash_dir)
        paths = [base64.b64encode(s) for s in seeds] + [
            base64.urlsafe_b64encode(s).rstrip(b"=") for s in seeds]
        return runner(targets.get_path, paths, args.inputs, args.seed, args.crash_dir)

    with tempfile.TemporaryDirectory() as work, bench_world(Path(work)) as world:
        return run_http_edge(world, runner, args, [world.request(GOOD), world.request(REVOKED)])


def run_http_edge(world: object, runner: Callable[..., int], args: argparse.Namespace,
                  requests: list[bytes]) -> int:
    import uvloop
    from fuzz.targets import HttpEdge

    from revoc.db import create_pool
    from revoc.settings import Settings

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    dsn: str = world.dsn  # type: ignore[attr-defined]
    pool = loop.run_until_complete(create_pool(dsn, min_size=1, max_size=4))
    edge = HttpEdge(Settings(database_url=dsn), pool, world.issuer_public_key)  # type: ignore[attr-defined]
    loop.run_until_complete(edge.start())
    rng = random.Random(args.seed)

    def target(data: bytes) -> None:
        loop.run_until_complete(edge.check(data, pieces=rng.choice((1, 1, 1, 2, 3))))

    try:
        code = runner(target, http_seeds(requests), args.inputs, args.seed, args.crash_dir)
        print(f"successful OCSP answers checked: {edge.successful}")
        return code
    finally:
        loop.run_until_complete(edge.stop())
        loop.run_until_complete(pool.close())


if __name__ == "__main__":
    sys.exit(main())
