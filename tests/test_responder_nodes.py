"""Several responder nodes (issue 15 point 4): three `revoc serve` processes behind nginx
(an `upstream` block, round-robin), each warmed from PostgreSQL in bulk, `revoc presign` running.
`revoc cert revoke` revokes a certificate every node holds cached as `good`; each node is polled
directly and through nginx (which says which node answered) until all say `revoked`.

What must hold (normal suite): every node ends at `revoked`, directly and through nginx, and no
node says `good` again once it has said anything else. Nodes learn of the change separately (each
its own NOTIFY, or its catch-up within a second), so for a few milliseconds one node may still
say `good` while another no longer does; that is not asserted away, it is measured. Under the
`timing` marker: each node stops saying `good` within 1 s of the revoking transaction's start
(ARCHITECTURE invariant 1, issue 15 point 4), and says `revoked` within 1 s of the first node
that did. A fourth node
started afterwards warms up with the revoked answer.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.x509 import ocsp as x509_ocsp

from tests.daemons import Daemon
from tests.live_serve import revoc_serve
from tests.nginx_run import NGINX
from tests.nginx_upstream import nginx_upstream
from tests.responder_world import GOOD, OCSP_TYPE, World

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed")

NODES = 3
TRY_LATER = b"0\x03\n\x01\x03"
WARM_DONE = 'revoc_cache_warm_state{state="done"} 1.0'


@dataclass(frozen=True)
class Seen:
    at: float  # seconds after the revoking transaction began (its changed_at)
    via: str  # "direct" or "nginx"
    node: str  # host:port of the node that answered
    status: str  # good, revoked or tryLater


def _env(world: World) -> dict[str, str]:
    return {**os.environ, "REVOC_DATABASE_URL": world.settings.database_url or "",
            "REVOC_PRESIGN_PROCESSES": "1", "REVOC_LOG_LEVEL": "WARNING"}


def _node(url: str) -> str:
    return urlsplit(url).netloc


async def _status(client: httpx.AsyncClient, url: str, body: bytes) -> tuple[str, str]:
    """(node that answered, status) of one OCSP POST."""
    response = await client.post(url + "/ocsp", content=body,
                                 headers={"content-type": "application/ocsp-request"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == OCSP_TYPE
    node = response.headers.get("x-upstream", _node(url))
    if response.content == TRY_LATER:
        return node, "tryLater"
    parsed = x509_ocsp.load_der_ocsp_response(response.content)
    assert parsed.response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL
    return node, parsed.certificate_status.name.lower()


async def _warmed(client: httpx.AsyncClient, url: str, deadline: float) -> None:
    while WARM_DONE not in (await client.get(url + "/metrics")).text:
        assert time.monotonic() < deadline, f"{url} never finished warming"
        await asyncio.sleep(0.05)


@contextmanager
def _nodes(world: World, directory: Path) -> Iterator[tuple[list[str], str]]:
    """The presigner, NODES warmed responders, nginx over them: (node URLs, nginx URL)."""
    with ExitStack() as stack:
        presigner = Daemon(["presign"], _env(world))
        stack.callback(presigner.kill)
        urls = [stack.enter_context(revoc_serve(world)) for _ in range(NODES)]
        port = stack.enter_context(
            nginx_upstream(directory, [urlsplit(url).port or 0 for url in urls]))
        yield urls, f"http://127.0.0.1:{port}"


async def _revoke_and_watch(world: World, urls: list[str], edge: str) -> list[Seen]:
    """Revoke GOOD with `revoc cert revoke` while polling every node, directly and through
    nginx, one request at a time; until every node said `revoked` both ways (30 s at most)."""
    body = world.request(GOOD)
    async with httpx.AsyncClient(timeout=5) as client:
        deadline = time.monotonic() + 30
        for url in urls:
            await _warmed(client, url, deadline)
        for url in urls:  # warm, and answering from memory
            assert (await _status(client, url, body))[1] == "good"
            assert "revoc_ocsp_store_keys_total 0.0" in (await client.get(url + "/metrics")).text
        revoke = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "revoc.cli", "cert", "revoke", "--issuer", "ca",
            "--serial", f"{GOOD:X}", "--reason", "keyCompromise", env=_env(world),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        done = asyncio.ensure_future(revoke.communicate())
        polled: list[tuple[float, str, str, str]] = []
        acknowledged: float | None = None
        while True:
            for url in urls:
                node, status = await _status(client, url, body)
                polled.append((time.time(), "direct", node, status))
            for _ in urls:  # round-robin: one request per node
                node, status = await _status(client, edge, body)
                polled.append((time.time(), "nginx", node, status))
            if acknowledged is None and done.done():
                out, err = done.result()
                assert revoke.returncode == 0, (out + err).decode()
                acknowledged = time.time()
            if acknowledged is not None:
                last = {(via, node): status for _t, via, node, status in polled}
                if (len(last) == 2 * len(urls)
                        and all(status == "revoked" for status in last.values())):
                    break
            assert time.monotonic() < deadline, f"not revoked everywhere: {polled[-12:]}"
            await asyncio.sleep(0.005)
    assert acknowledged is not None
    # The transaction's start (same host, same clock): the commit came later, so times measured
    # from here are upper bounds of the times from the commit.
    changed = await world.pool.fetchval(
        "SELECT extract(epoch FROM changed_at)::float8 FROM certificates WHERE serial = $1",
        GOOD.to_bytes(2, "big"))
    print(f"revoc cert revoke acknowledged {acknowledged - changed:.3f} s after its "
          "transaction began")
    return [Seen(t - changed, via, node, status) for t, via, node, status in polled]


def _check(seen: list[Seen], urls: list[str]) -> dict[str, tuple[float, float]]:
    """Per node: never `good` after anything else, ending `revoked` directly and through nginx;
    returns (first not good, first revoked) seconds after the revoking transaction began."""
    firsts: dict[str, tuple[float, float]] = {}
    for node in map(_node, urls):
        answers = [s for s in seen if s.node == node]
        assert {s.via for s in answers} == {"direct", "nginx"}, f"{node} not reached both ways"
        assert {s.status for s in answers} <= {"good", "tryLater", "revoked"}
        not_good = next(i for i, s in enumerate(answers) if s.status != "good")
        assert all(s.status != "good" for s in answers[not_good:]), (
            f"{node} said good again: {answers[not_good:]}")
        assert answers[-1].status == "revoked"
        revoked = next(s for s in answers if s.status == "revoked")
        firsts[node] = (answers[not_good].at, revoked.at)
    return firsts


async def _fourth_node_warms_revoked(world: World) -> None:
    """A node started after the revocation warms up with the new (revoked) answer."""
    with revoc_serve(world) as url:
        async with httpx.AsyncClient(timeout=5) as client:
            await _warmed(client, url, time.monotonic() + 30)
            assert (await _status(client, url, world.request(GOOD)))[1] == "revoked"
            # (Whether from memory is not asserted: a catch-up may conservatively drop a
            # certificate changed shortly before; tests/test_cache_warm.py checks the fill.)
            assert "revoc_cache_warm_responses 0.0" not in (
                await client.get(url + "/metrics")).text


async def test_nodes_behind_nginx_all_see_a_revocation(world: World, tmp_path: Path) -> None:
    with _nodes(world, tmp_path) as (urls, edge):
        seen = await _revoke_and_watch(world, urls, edge)
    firsts = _check(seen, urls)
    assert len(firsts) == NODES
    await _fourth_node_warms_revoked(world)


@pytest.mark.timing
async def test_each_node_shows_a_revocation_within_a_second(world: World,
                                                            tmp_path: Path) -> None:
    with _nodes(world, tmp_path) as (urls, edge):
        seen = await _revoke_and_watch(world, urls, edge)
    firsts = _check(seen, urls)
    print("seconds after the revocation (first not good, first revoked):", firsts)
    for node, (not_good, _revoked) in firsts.items():
        assert not_good <= 1.0, f"{node} said good {not_good:.3f} s after the revocation"
    # Once the presigner's revoked answer exists, every node shows it within a second (how
    # soon it exists is the presigner's lag, measured in bench/visibility_bench.py).
    revoked = [first_revoked for _not_good, first_revoked in firsts.values()]
    assert max(revoked) - min(revoked) <= 1.0, firsts
