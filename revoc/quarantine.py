"""Rows a worker could not encode: logged once, counted, skipped; the rest of the round goes on.

A row lands here when the presigner or the publisher fails to encode it (a value the encoders
cannot represent that slipped past the edge checks and the schema's constraints, or a bug). It
stays until it encodes again: its next change (a newer change_seq) is tried afresh. `revoc
status` and `revoc audit` list the rows; `revoc serve` exports `revoc_quarantined_rows` in
/metrics, so a skipped row is an alarm, not a silence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import asyncpg

from revoc.queries import queries

log = logging.getLogger("revoc.quarantine")


async def quarantine_row(conn: asyncpg.Connection | asyncpg.Pool, kind: str, issuer_id: int,
                         issuer_name: str, serial: bytes, change_seq: int,
                         error: BaseException | str) -> None:
    """Record the row; log it the first time (per change_seq) any worker quarantines it."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    first = await conn.fetchval(queries()["quarantine_add"], kind, issuer_id, serial,
                                change_seq, text[:1000])
    if first is not None:
        log.error("%s: issuer %s serial %s quarantined (skipped, the rest goes on): %s",
                  kind, issuer_name, serial.hex().upper(), text)


async def release_rows(conn: asyncpg.Connection | asyncpg.Pool, kind: str, issuer_id: int,
                       serials: Sequence[bytes]) -> None:
    """Rows that encoded after all leave the quarantine."""
    if serials:
        await conn.execute(queries()["quarantine_release"], kind, issuer_id, list(serials))
