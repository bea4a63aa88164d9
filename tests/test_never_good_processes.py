"""Issue 10 point 1 as an operator meets it, with real processes and real OpenSSL: no presigner
runs, `revoc cert revoke` commits, `openssl ocsp` against `revoc serve` never hears `good` again
(tryLater); a presigner starts and the answer is `revoked`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from tests.live_serve import OPENSSL, openssl_ocsp, revoc_serve
from tests.responder_world import GOOD, World

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")


def _cli(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REVOC_DATABASE_URL": world.settings.database_url or ""}
    return subprocess.run([sys.executable, "-m", "revoc.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def _answer(world: World, url: str) -> str:
    out = openssl_ocsp(world, url, "-cert", str(world.leaf_pem(GOOD)), "-no_nonce")
    for word in ("revoked", "good"):
        if f"{world.leaf_pem(GOOD)}: {word}" in out:
            assert "Response verify OK" in out, out
            return word
    assert "Responder Error: trylater (3)" in out, out
    return "tryLater"


async def test_revoke_with_no_presigner_then_start_one(world: World) -> None:
    with revoc_serve(world) as url:
        assert await asyncio.to_thread(_answer, world, url) == "good"
        revoke = await asyncio.to_thread(
            _cli, world, "cert", "revoke", "--issuer", "ca", "--serial", f"{GOOD:X}",
            "--reason", "keyCompromise")
        assert revoke.returncode == 0, revoke.stderr
        seen = [await asyncio.to_thread(_answer, world, url) for _ in range(5)]
        # The NOTIFY reaches the responder before the next request in practice; the catch-up
        # bounds it to a second otherwise. Once it is not good it is never good again.
        first_bad = next(i for i, answer in enumerate(seen) if answer != "good")
        assert all(answer == "tryLater" for answer in seen[first_bad:]), seen
        env = {**os.environ, "REVOC_DATABASE_URL": world.settings.database_url or "",
               "REVOC_PRESIGN_PROCESSES": "1"}
        presigner = subprocess.Popen([sys.executable, "-m", "revoc.cli", "presign"], env=env,  # noqa: ASYNC220
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while (answer := await asyncio.to_thread(_answer, world, url)) != "revoked":
                assert answer == "tryLater", answer
                assert time.monotonic() < deadline, "never revoked"
                await asyncio.sleep(0.05)
        finally:
            presigner.terminate()
            _out, err = presigner.communicate(timeout=30)
        assert presigner.returncode == 143, err
        assert b"Traceback" not in err
