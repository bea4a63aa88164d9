"""The one rule through the admin API (issue 10 point 1, issue 14 point 3): a revocation the API
acknowledges is never answered `good` again by a responder that had `good` cached, with no
presigner running; single and batch revocations alike."""

from __future__ import annotations

import asyncio
import os
import time

import httpx

from admin_api.app import create_app
from revoc.model import Reason
from revoc.settings import Settings
from revoc.tokens import Scope, create_token
from tests.responder_world import GOOD, LATER, World, parsed, post, serve_asgi

TRY_LATER = b"0\x03\n\x01\x03"


async def _answer(client: httpx.AsyncClient, world: World, serial: int) -> str:
    response = await post(client, world.request(serial))
    if response.content == TRY_LATER:
        return "tryLater"
    return parsed(response).certificate_status.name.lower()


async def _until_not_good(client: httpx.AsyncClient, world: World, serial: int) -> str:
    deadline = time.monotonic() + 5
    while (answer := await _answer(client, world, serial)) == "good":
        assert time.monotonic() < deadline, "still good after the API revoked it"
        await asyncio.sleep(0.02)
    return answer


async def test_api_revocations_are_never_good_again(world: World) -> None:
    async with world.pool.acquire() as conn:
        token = await create_token(conn, f"never-good-{os.getpid()}", Scope.revoke)
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(Settings(),
                                                                          pool=world.pool)),
                            base_url="http://admin")
    headers = {"Authorization": f"Bearer {token}"}
    async with api, serve_asgi(world) as (_app, client):
        assert await _answer(client, world, GOOD) == "good"
        assert await _answer(client, world, LATER) == "good"
        single = await api.post("/v1/revocations", headers=headers, json={
            "issuer": "ca", "serial": f"{GOOD:X}", "reason": Reason.keyCompromise.name})
        assert single.status_code in (200, 201), single.text
        batch = await api.post("/v1/revocations/batch", headers=headers, json={
            "revocations": [{"issuer": "ca", "serial": f"{LATER:X}",
                             "reason": Reason.superseded.name}]})
        assert batch.status_code in (200, 201), batch.text
        for serial in (GOOD, LATER):
            assert await _until_not_good(client, world, serial) == "tryLater"
            for _ in range(10):  # no presigner: it stays tryLater, never the old good
                assert await _answer(client, world, serial) == "tryLater"
        pending = await world.pool.fetchval(
            "SELECT count(*) FROM ocsp_pending WHERE serial = ANY($1::bytea[])",
            [GOOD.to_bytes(2, "big"), LATER.to_bytes(2, "big")])
        assert pending == 2
