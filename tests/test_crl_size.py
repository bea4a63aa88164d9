"""Issue 13 point 5: CRL size and entries in /metrics, a warning and a flag past the size limit
(CONFORMANCE ROOT-2), and `revoc crl plan` at the bytes per entry revoc really encodes (measured
on a published CRL with asn1crypto)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from asn1crypto import crl as asn1_crl
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from crl_publisher.publisher import publish_round
from responder.crl_files import CrlSizeCollector, CrlStore
from revoc.der.asn1 import integer_content
from revoc.mass_revoke import revoke_serials
from revoc.model import Reason
from tests.crl_fixtures import START, clock, register_pki, settings_for

_REVOC = str(Path(sys.executable).with_name("revoc"))
COUNT = 2000
BASE = 0x40 << 120  # 16-octet serials, high bit clear


async def test_size_metrics_warning_and_plan(clean_db: asyncpg.Pool, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "p", "big")
        issuer_id = await conn.fetchval("SELECT id FROM issuers WHERE name = 'big'")
        await conn.copy_records_to_table(
            "certificates", columns=["issuer_id", "serial", "not_after"],
            records=[(issuer_id, integer_content(BASE + i), START + timedelta(days=90))
                     for i in range(COUNT)])
        await revoke_serials(conn, pki.name, [f"{BASE + i:X}" for i in range(COUNT)],
                             Reason.keyCompromise, revoked_at=START - timedelta(hours=1),
                             clock=clock())
    settings = settings_for(tmp_path, crl_size_limit=50_000, crl_delta_interval=0)
    caplog.set_level(logging.WARNING, logger="revoc.publish")
    report = await publish_round(clean_db, settings, clock=clock())
    der = (settings.crl_out / "big.crl").read_bytes()
    assert len(der) > 50_000 and report.oversize == ["big.crl"]
    assert "big.crl is" in caplog.text and "REVOC_CRL_SIZE_LIMIT" in caplog.text

    store = CrlStore()
    await store.load(clean_db)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CrlSizeCollector(store, settings.crl_size_limit))
    text = generate_latest(registry).decode()
    labels = '{issuer="big",kind="full",shard="-1"}'
    assert f"revoc_crl_bytes{labels} {float(len(der))}" in text
    assert f"revoc_crl_entries{labels} {float(COUNT)}" in text
    assert f"revoc_crl_over_size_limit{labels} 1.0" in text

    # The plan's bytes per entry is what a real CRL of ours spends per entry.
    entries = asn1_crl.CertificateList.load(der)["tbs_cert_list"]["revoked_certificates"]
    sizes = {len(entry.dump()) for entry in entries}
    plan = await asyncio.to_thread(
        subprocess.run, [_REVOC, "crl", "plan", "--certificates", str(COUNT),
                         "--revocation-rate", "100%", "--serial-octets", "16",
                         "--crl-size-limit", "50000", "--json"],
        capture_output=True, text=True, check=False)
    assert plan.returncode == 0, plan.stderr
    estimate = json.loads(plan.stdout)
    assert sizes == {estimate["bytes_per_entry"]}
    assert estimate["crl_bytes_unsharded"] >= len(der)
    assert estimate["recommended_shards"] * 25_000 >= len(der)  # each shard under limit / 2
    bad = await asyncio.to_thread(
        subprocess.run, [_REVOC, "crl", "plan", "--certificates", "10",
                         "--revocation-rate", "150%"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
