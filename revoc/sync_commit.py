"""A commit that PostgreSQL returned without its synchronous standby's confirmation.

With `synchronous_standby_names` set, a commit waits until a standby has flushed it; that is
what makes an acknowledged revocation survive a failover. PostgreSQL ends that wait early when
the backend is cancelled (`pg_cancel_backend`, a `statement_timeout`) and then reports the
commit as done, with only a WARNING saying it "might not have been replicated". A revocation
committed that way is on the primary alone, so revoc does not acknowledge it: `confirmed`
raises `UnconfirmedCommit` (exit 1) when that warning arrived during the block.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg

from revoc.admin import AdminError

_NOT_REPLICATED = "might not have been replicated"


class UnconfirmedCommit(AdminError):
    """Committed on the primary, never confirmed by the synchronous standby."""


@contextlib.asynccontextmanager
async def confirmed(conn: asyncpg.Connection, what: str) -> AsyncIterator[None]:
    """Raise UnconfirmedCommit after the block when PostgreSQL warned that a commit in it was
    not confirmed by the synchronous standby."""
    warnings: list[str] = []

    def listen(_conn: object, message: asyncpg.PostgresLogMessage) -> None:
        text = f"{message.message} {getattr(message, 'detail', '') or ''}"
        if _NOT_REPLICATED in text:
            warnings.append(text)

    conn.add_log_listener(listen)
    try:
        yield
        await asyncio.sleep(0)  # log messages reach listeners through the event loop
    finally:
        conn.remove_log_listener(listen)
    if warnings:
        raise UnconfirmedCommit(
            f"{what} committed on the primary, but its synchronous standby never confirmed it "
            "(the wait was cancelled): not acknowledged; it may be lost in a failover, so run "
            "the command again once the standby is back")
