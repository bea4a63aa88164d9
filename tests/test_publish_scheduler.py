"""Continuous mode: NOTIFY cert_changed brings the next delta forward; crl_published is sent."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from cryptography import x509

from crl_publisher.scheduler import run_forever
from revoc.model import Reason
from tests.crl_fixtures import add_leaves, register_pki, revoke, settings_for


async def test_revocation_triggers_delta_and_notify(clean_db: asyncpg.Pool,
                                                    tmp_path: Path) -> None:
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "live")
        await add_leaves(conn, pki, [1, 2])
    settings = settings_for(tmp_path, crl_delta_on_change=True, crl_delta_interval=3600,
                            crl_full_interval=86400)
    published: list[str] = []
    def on_published(*args: object) -> None:
        published.append(str(args[3]))

    listener = await clean_db.acquire()
    await listener.add_listener("crl_published", on_published)
    stop = asyncio.Event()
    task = asyncio.create_task(run_forever(clean_db, settings, stop=stop))
    try:
        delta_path = settings.crl_out / "live-delta.crl"
        deadline = asyncio.get_running_loop().time() + 20
        while not delta_path.exists() or len(published) < 2:
            assert asyncio.get_running_loop().time() < deadline, "first round never finished"
            await asyncio.sleep(0.05)
        issuer_id = await clean_db.fetchval("SELECT id FROM issuers WHERE name='live'")
        assert sorted(p.split(":")[2] for p in published) == ["delta", "full"]
        assert all(p.startswith(f"{issuer_id}:-1:") for p in published)
        async with clean_db.acquire() as conn:
            await revoke(conn, pki, 2, Reason.keyCompromise,
                         datetime.now(UTC) - timedelta(seconds=5))
        while True:
            assert asyncio.get_running_loop().time() < deadline + 10, "no delta after NOTIFY"
            crl = x509.load_der_x509_crl(delta_path.read_bytes())
            # The file is renamed into place before the NOTIFY arrives: wait for both.
            if [r.serial_number for r in crl] == [2] and len(published) >= 3:
                break
            await asyncio.sleep(0.05)
        assert len(published) == 3 and published[-1].startswith(f"{issuer_id}:-1:delta:")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        await listener.remove_listener("crl_published", on_published)
        await clean_db.release(listener)
