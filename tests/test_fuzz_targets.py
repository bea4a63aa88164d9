"""Bounded hypothesis runs of the fuzz targets in bench/fuzz/targets.py (issue 12, point 7).

The long runs (atheris or the mutation driver, a million inputs) are `bench/fuzz/run.py`; these
take the same targets through a few hundred inputs each, so a regression shows in the suite:
the OCSP request parser and the GET path decoder raise nothing but MalformedRequest, and raw
bytes on a connection into `revoc serve`'s protocol stack (edge limits, fast lane, app, real
database) get well-formed HTTP answers, never a 5xx, every OCSP answer a DER OCSPResponse whose
signature verifies, and nothing logged at ERROR. Cases: CONFORMANCE OCSP-REQ-1, OCSP-HTTP-2,
OCSP-HTTP-8.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.edge_world import GOOD, REVOKED, World, fill_world
from bench.fuzz.targets import HttpEdge, get_path, ocsp_request
from revoc.db import create_pool
from revoc.der.ocsp import cert_id_der, encode_ocsp_request
from revoc.model import HashAlgorithm
from revoc.settings import Settings

_SEED = encode_ocsp_request(
    [cert_id_der(HashAlgorithm.SHA256, b"\x30\x00", b"\x01" * 65, 0x80AB12)] * 2,
    nonce=b"0123456789abcdef")


def _mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A seed with a few byte edits (replace, insert, delete), or arbitrary bytes."""
    edit = st.tuples(st.integers(0, 4096), st.integers(0, 255),
                     st.sampled_from(["replace", "insert", "delete"]))

    def apply(seed: bytes, edits: list[tuple[int, int, str]]) -> bytes:
        data = bytearray(seed)
        for position, value, action in edits:
            position = min(position, max(len(data) - 1, 0))
            if action == "replace" and data:
                data[position] = value
            elif action == "insert":
                data.insert(position, value)
            elif data:
                del data[position]
        return bytes(data)

    return st.one_of(st.binary(max_size=400),
                     st.builds(apply, st.sampled_from(seeds), st.lists(edit, max_size=4)))


@settings(max_examples=400, deadline=None)
@given(_mutated([_SEED]))
def test_ocsp_request_target_OCSP_REQ_1(data: bytes) -> None:
    ocsp_request(data)


@settings(max_examples=400, deadline=None)
@given(_mutated([base64.b64encode(_SEED), base64.urlsafe_b64encode(_SEED).rstrip(b"="),
                 base64.b64encode(_SEED).replace(b"/", b"%2F")]))
def test_get_path_target_OCSP_HTTP_2(data: bytes) -> None:
    get_path(data)


@pytest_asyncio.fixture(loop_scope="session")
async def fuzz_world(clean_db: asyncpg.Pool, database_url: str, tmp_path: Path) -> World:
    return await fill_world(database_url, tmp_path / "pki")


@pytest.fixture
def edge(fuzz_world: World) -> Iterator[tuple[HttpEdge, asyncio.AbstractEventLoop, list[bytes]]]:
    """The HTTP edge target on its own loop and pool (hypothesis drives it synchronously)."""
    loop = asyncio.new_event_loop()
    pool = loop.run_until_complete(create_pool(fuzz_world.dsn, min_size=1, max_size=4))
    target = HttpEdge(Settings(database_url=fuzz_world.dsn), pool, fuzz_world.issuer_public_key)
    loop.run_until_complete(target.start())
    seeds = []
    for der in (fuzz_world.request(GOOD), fuzz_world.request(REVOKED, HashAlgorithm.SHA256)):
        path = b"/ocsp/" + base64.b64encode(der)
        seeds += [b"GET " + path + b" HTTP/1.1\r\nhost: r\r\n\r\n",
                  b"POST /ocsp HTTP/1.1\r\ncontent-type: application/ocsp-request\r\n"
                  b"content-length: %d\r\n\r\n" % len(der) + der,
                  b"HEAD " + path + b" HTTP/1.0\r\nif-none-match: *\r\n\r\n"]
    try:
        yield target, loop, seeds
    finally:
        loop.run_until_complete(target.stop())
        loop.run_until_complete(pool.close())
        loop.close()


def test_http_edge_target_OCSP_HTTP_8(
        edge: tuple[HttpEdge, asyncio.AbstractEventLoop, list[bytes]]) -> None:
    target, loop, seeds = edge
    # The seeds themselves: answered, and the GOOD/REVOKED ones successfully (the oracle works).
    for seed in seeds:
        answers = loop.run_until_complete(target.check(seed))
        assert answers and answers[0][0] in (200, 304), (seed[:40], answers)
    assert target.successful >= 4

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_mutated(seeds), st.integers(1, 3))
    def one(data: bytes, pieces: int) -> None:
        loop.run_until_complete(target.check(data, pieces))

    one()
