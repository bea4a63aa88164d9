"""Property: for any sequence of revoke / hold / unhold, base CRL + its delta == a fresh full CRL.

Delta semantics as a relying party applies them (RFC 5280 §5.2.4): an entry of the delta
replaces the base's entry for that serial; removeFromCRL removes it. Compared as
serial -> (revocation date, reason).
"""

from __future__ import annotations

import asyncio
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import asyncpg
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crl_publisher.publisher import publish_round
from revoc import admin
from revoc.db import create_pool
from revoc.model import Reason
from tests.crl_fixtures import START, add_leaves, clock, register_pki, revoke, settings_for

SERIALS = range(1, 6)
Operation = tuple[str, int, Reason]
operations = st.lists(
    st.tuples(st.sampled_from(["revoke", "unhold"]), st.sampled_from(list(SERIALS)),
              st.sampled_from([Reason.keyCompromise, Reason.certificateHold,
                               Reason.superseded, Reason.unspecified])),
    max_size=8)

State = dict[int, tuple[object, x509.ReasonFlags | None]]


def _entries(der: bytes) -> tuple[State, int]:
    crl = x509.load_der_x509_crl(der)
    state: State = {}
    for entry in crl:
        try:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            reason = None
        state[entry.serial_number] = (entry.revocation_date_utc, reason)
    return state, crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _apply(base: State, delta: State) -> State:
    merged = dict(base)
    for serial, (when, reason) in delta.items():
        if reason is x509.ReasonFlags.remove_from_crl:
            merged.pop(serial, None)
        else:
            merged[serial] = (when, reason)
    return merged


async def _perform(conn: asyncpg.Connection, pki_name: str, pki: object,
                   ops: list[Operation], minute: int) -> None:
    for step, (kind, serial, reason) in enumerate(ops):
        at = START + timedelta(minutes=minute, seconds=step)
        try:
            if kind == "unhold":
                await admin.unhold(conn, pki_name, serial)
            else:
                await revoke(conn, pki, serial, reason, at)  # type: ignore[arg-type]
        except admin.AdminError:
            pass  # not allowed in this state (e.g. unhold of a good certificate): a no-op


async def _scenario(dsn: str, before: list[Operation], after: list[Operation]) -> None:
    pool = await create_pool(dsn, min_size=1, max_size=4)
    try:
        await pool.execute("TRUNCATE ocsp_responses, crls, certificates, issuers "
                           "RESTART IDENTITY CASCADE")
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            async with pool.acquire() as conn:
                pki = await register_pki(conn, directory / "pki", "prop")
                await add_leaves(conn, pki, SERIALS)
                await _perform(conn, "prop", pki, before, -30)
            config = settings_for(directory)
            fixed = clock()
            await publish_round(pool, config, clock=fixed)
            base_der = (config.crl_out / "prop.crl").read_bytes()
            async with pool.acquire() as conn:
                await _perform(conn, "prop", pki, after, 1)
            fixed.advance(timedelta(minutes=10))
            # A delta alone here (the full CRL on change waits an hour): base + delta is checked.
            await publish_round(pool, config, clock=fixed, full_on_change_delay=3600)
            delta_der = (config.crl_out / "prop-delta.crl").read_bytes()
            fixed.advance(timedelta(minutes=10))
            await publish_round(pool, config, clock=fixed, force_full=True)
            fresh_der = (config.crl_out / "prop.crl").read_bytes()
            same_time_delta = (config.crl_out / "prop-delta.crl").read_bytes()
    finally:
        await pool.close()
    base, base_number = _entries(base_der)
    delta, _ = _entries(delta_der)
    fresh, fresh_number = _entries(fresh_der)
    assert _apply(base, delta) == fresh
    # The delta issued together with the fresh full CRL (same number) says the same (§5.2.3).
    paired, paired_number = _entries(same_time_delta)
    assert paired_number == fresh_number
    assert _apply(base, paired) == fresh
    assert base_number < fresh_number


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(before=operations, after=operations)
def test_base_plus_delta_equals_fresh_full(database_url: str, before: list[Operation],
                                           after: list[Operation]) -> None:
    # Own thread, own event loop: the session loop of pytest-asyncio must not be touched.
    with ThreadPoolExecutor(max_workers=1) as executor:
        executor.submit(asyncio.run, _scenario(database_url, before, after)).result()
