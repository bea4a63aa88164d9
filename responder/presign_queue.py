"""The presigner's change queue: sign every queued status change exactly once, lose none.

A trigger (sql/migrations/0004_never_lose.sql) puts a row in `ocsp_pending` in the transaction
that revokes a certificate, changes its reason or releases its hold. `drain_queue` claims up to
`CLAIM_ROWS` rows, oldest first, with FOR UPDATE SKIP LOCKED, reads those certificates, signs them
(per issuer, through `Presigner.sign`), and in the same transaction stores the responses, deletes
the rows it reflected (only those whose change_seq is at most the one it signed from, so a change
made meanwhile stays queued) and sends NOTIFY `ocsp_changed`. So each change is signed by exactly
one presigner however many run, none is lost while none runs or while PostgreSQL is away, and a
presigner that starts (or reconnects) catches up by draining the queue instead of sweeping.

A large backlog (a mass revocation: a million queued changes) is drained by `DRAIN_LANES`
concurrent claim-sign-store transactions on separate connections: while one lane waits for the
signing processes, another claims, reads, stores or dequeues, so PostgreSQL and the signers work
at the same time instead of in turn. SKIP LOCKED keeps the lanes' claims disjoint, exactly as it
does between presigners.

Rows that cannot be encoded are quarantined by `Presigner.sign` and stay queued (their age keeps
the "oldest unreflected change" alarm honest), but are not claimed again until their certificate
changes again (a newer change_seq) or a retry pass asks for them (`retry_quarantined`:
`presign --once`, and the continuous mode every `QUARANTINE_RETRY` seconds). Rows of an issuer
whose key cannot be used are left queued for the next drain.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from responder.presigner import Presigner, PresignError, PresignReport, make_executor
from revoc.admin import list_issuers, serial_hex
from revoc.clock import Clock
from revoc.model import Issuer
from revoc.notify import encode_serial_change
from revoc.quarantine import release_rows
from revoc.queries import queries
from revoc.settings import Settings

log = logging.getLogger("revoc.presign")

CLAIM_ROWS = 2_000  # queued changes claimed, signed and stored per transaction
DRAIN_LANES = 3  # concurrent claim-sign-store transactions of one drain (module docstring)
QUARANTINE_RETRY = 600.0  # seconds between retries of quarantined changes (continuous mode)
TURN_BUDGET = 10.0  # seconds of draining per turn of the continuous mode (then a heartbeat)


@dataclass(slots=True)
class _Drain:
    issuers: dict[int, Issuer]
    reloaded: bool = False
    skip: set[int] = field(default_factory=set)  # issuers that cannot be signed for now
    tried: set[tuple[int, bytes]] = field(default_factory=set)  # rows claimed by this drain
    failed: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    certificates: int = 0
    responses: int = 0
    changes: int = 0


async def drain_queue(
    presigner: Presigner, *, issuers: Mapping[int, Issuer] | None = None,
    retry_quarantined: bool = False, observe_lag: Callable[[float], None] | None = None,
    budget: float | None = None,
) -> PresignReport:
    """Sign and dequeue every claimable queued change; then, with `retry_quarantined`, one batch
    of the quarantined ones. `observe_lag` gets, per change reflected, the seconds from its
    commit to ours (the `ocsp_lag_seconds` histogram). With a `budget` (seconds), no batch is
    started after it has passed and the report's `drained` says whether the queue was emptied
    (the continuous mode beats its heartbeat between slices of a large backlog)."""
    started = time.perf_counter()
    if issuers is None:
        async with presigner.pool.acquire() as conn:
            issuers = {i.id: i for i in await list_issuers(conn)}
    state = _Drain(dict(issuers))

    async def lane() -> bool:
        # True: this lane found nothing more it could move (the queue is drained, or what is
        # left is claimed by another lane, which goes on until it finds nothing either).
        while budget is None or time.perf_counter() - started < budget:
            if not await _drain_batch(presigner, state, False, observe_lag):
                return True
        return False

    lanes = [asyncio.ensure_future(lane()) for _ in range(DRAIN_LANES)]
    try:
        drained = all(await asyncio.gather(*lanes))
    except BaseException:
        for task in lanes:  # one lane failed: stop the others before the error goes up
            task.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
        raise
    if retry_quarantined and drained:
        await _drain_batch(presigner, state, True, observe_lag)
    return PresignReport(
        issuers=len(state.issuers), failed_issuers=tuple(dict.fromkeys(state.failed)),
        certificates=state.certificates, responses=state.responses,
        seconds=time.perf_counter() - started, changes=state.changes,
        quarantined=tuple(dict.fromkeys(state.quarantined)), drained=drained,
    )


async def _drain_batch(presigner: Presigner, state: _Drain, quarantined: bool,
                       observe_lag: Callable[[float], None] | None) -> bool:
    """One claim, sign, store, dequeue transaction. False when there is nothing (more) to do:
    nothing claimed, or nothing in the batch could move (guards against spinning)."""
    q = queries()
    # Progress of this batch alone (other lanes move the shared counters meanwhile).
    quarantined_before, skipped_before = len(state.quarantined), len(state.skip)
    async with presigner.pool.acquire() as conn, conn.transaction():
        claimed = await conn.fetch(q.presign_pending_claim, sorted(state.skip), quarantined,
                                   CLAIM_ROWS)
        if quarantined:  # not what this drain quarantined a moment ago
            claimed = [r for r in claimed
                       if (r["issuer_id"], bytes(r["serial"])) not in state.tried]
        if not claimed:
            return False
        state.tried.update((r["issuer_id"], bytes(r["serial"])) for r in claimed)
        rows = await conn.fetch(
            q.presign_pending_certificates, [r["issuer_id"] for r in claimed],
            [r["serial"] for r in claimed], presigner.expired_before(presigner.now()))
        records: list[tuple[object, ...]] = []
        # A queued row whose certificate is gone (a TRUNCATE, a hand-made row; deletes dequeue
        # by trigger, migration 0008): nothing to sign, dequeued so it does not age forever.
        found = {(int(r["issuer_id"]), bytes(r["serial"])) for r in rows}
        done: list[tuple[int, bytes, int]] = [
            (r["issuer_id"], r["serial"], r["change_seq"]) for r in claimed
            if (int(r["issuer_id"]), bytes(r["serial"])) not in found]
        payloads: list[str] = []
        for issuer_id, group in itertools.groupby(rows, key=lambda r: int(r["issuer_id"])):
            issuer_rows = list(group)
            issuer = await _issuer(conn, state, issuer_id)
            if issuer is None:
                continue
            try:
                plan = presigner.plan(issuer)
                times = presigner.times(plan)
            except PresignError:
                state.skip.add(issuer_id)
                state.failed.append(issuer.name)
                continue
            # Past retention: nothing to sign, the change is done with.
            done += [(issuer_id, r["serial"], r["change_seq"]) for r in issuer_rows
                     if r["expired"]]
            signed = await presigner.sign(
                plan, times, [r for r in issuer_rows if not r["expired"]], conn)
            records += presigner.records(plan, times, signed)
            done += [(issuer_id, r["serial"], r["change_seq"]) for r in signed.rows]
            payloads += [encode_serial_change(issuer_id, r["serial"]) for r in signed.rows]
            state.certificates += len(signed.rows)
            state.quarantined += [f"{issuer.name} {serial_hex(r['serial'])}"
                                  for r, _error in signed.failures]
            await release_rows(conn, "presign", issuer_id, [r["serial"] for r in signed.rows])
        await presigner.merge(conn, records)
        state.responses += len(records)
        await conn.execute(q.presign_pending_done_plan)
        deleted = await conn.fetch(q.presign_pending_done, [d[0] for d in done],
                                   [d[1] for d in done], [d[2] for d in done])
        if payloads:
            await conn.execute(q.presign_notify_changed, payloads)
    state.changes += len(deleted)
    presigner.count("changes_signed", len(deleted))
    if observe_lag is not None:
        now = datetime.now(UTC)
        for row in deleted:
            observe_lag((now - row["changed_at"]).total_seconds())
    return bool(deleted) or (len(state.quarantined), len(state.skip)) != (quarantined_before,
                                                                         skipped_before)


async def _issuer(conn: asyncpg.Connection, state: _Drain, issuer_id: int) -> Issuer | None:
    """The issuer of queued rows; an id not seen yet reloads the list once per drain."""
    issuer = state.issuers.get(issuer_id)
    if issuer is None and not state.reloaded:
        state.reloaded = True
        state.issuers = {i.id: i for i in await list_issuers(conn)}
        issuer = state.issuers.get(issuer_id)
    if issuer is None:
        state.skip.add(issuer_id)
    return issuer


async def presign_once(
    pool: asyncpg.Pool, settings: Settings, *, clock: Clock | None = None
) -> PresignReport:
    """Drain the change queue (quarantined rows retried too), then sign every due or missing
    response of every issuer, once; the report counts failed issuers and quarantined rows."""
    executor = make_executor(settings.presign_processes)
    try:
        presigner = Presigner(pool, settings, executor, clock)
        drained = await drain_queue(presigner, retry_quarantined=True)
        report = drained + await presigner.sweep()
        log.info("presign: %d response(s) for %d certificate(s) in all (%d queued change(s))",
                 report.responses, report.certificates, report.changes)
        return report
    finally:
        await asyncio.to_thread(executor.shutdown, True, cancel_futures=True)
