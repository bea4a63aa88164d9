"""The responder as users meet it: `revoc serve` under uvicorn queried by `openssl ocsp`, and a
PostgreSQL outage on a server of its own (the session's server is never stopped)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.live_serve import OPENSSL, openssl_ocsp, revoc_serve
from tests.responder_world import GOOD, NEVER, REVOKED, World, post

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")


async def test_openssl_against_uvicorn(world: World) -> None:
    with revoc_serve(world) as url:
        for hash_flag in ([], ["-sha256"]):
            good = await asyncio.to_thread(
                openssl_ocsp, world, url, "-cert", str(world.leaf_pem(GOOD)), *hash_flag)
            assert f"{world.leaf_pem(GOOD)}: good" in good, good
            assert "Response verify OK" in good, good
            assert "WARNING: Status times invalid" not in good
            revoked = await asyncio.to_thread(
                openssl_ocsp, world, url, "-cert", str(world.leaf_pem(REVOKED)), *hash_flag)
            assert f"{world.leaf_pem(REVOKED)}: revoked" in revoked, revoked
            assert "Reason: keyCompromise" in revoked, revoked
            assert "Revocation Time: Jun  1 12:00:00 2025 GMT" in revoked, revoked
            never = await asyncio.to_thread(
                openssl_ocsp, world, url, "-serial", hex(NEVER), *hash_flag)
            assert ": good" not in never, never
            assert "unauthorized" in never, never
        # Pre-signed answers carry no nonce: OpenSSL warns, which RFC 5019 allows.
        nonce = await asyncio.to_thread(
            openssl_ocsp, world, url, "-cert", str(world.leaf_pem(GOOD)), "-nonce")
        assert "WARNING: no nonce in response" in nonce, nonce
        assert "Response verify OK" in nonce and ": good" in nonce, nonce
        # GET through the real server gives the same bytes as POST.
        async with httpx.AsyncClient(base_url=url) as client:
            der = world.request(GOOD)
            posted = await post(client, der)
            import base64

            got = await client.get("/ocsp/" + base64.b64encode(der).decode())
            assert got.content == posted.content and got.headers["date"]
            assert got.headers["content-length"] == str(len(got.content))


async def test_openssl_live_signing(live_world: World) -> None:
    world = live_world
    with revoc_serve(world, "--live-signing", "true", "--workers", "2") as url:
        for hash_flag in ([], ["-sha256"], ["-sha384"]):
            answer = await asyncio.to_thread(
                openssl_ocsp, world, url, "-cert", str(world.leaf_pem(REVOKED)), "-nonce",
                *hash_flag)
            assert f"{world.leaf_pem(REVOKED)}: revoked" in answer, answer
            assert "Response verify OK" in answer, answer
            assert "WARNING: no nonce" not in answer, answer
        never = await asyncio.to_thread(openssl_ocsp, world, url, "-serial", hex(NEVER))
        assert ": unknown" in never and "Response verify OK" in never, never
        both = await asyncio.to_thread(
            openssl_ocsp, world, url, "-cert", str(world.leaf_pem(GOOD)),
            "-cert", str(world.leaf_pem(REVOKED)))
        assert ": good" in both and ": revoked" in both and "Response verify OK" in both, both
