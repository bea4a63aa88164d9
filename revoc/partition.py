"""Hash partitioning of certificates, ocsp_responses and ocsp_pending by (issuer_id, serial).

`revoc db partition --count N`, or REVOC_DB_PARTITIONS=N at `revoc db upgrade`, converts the
three tables into tables PARTITION BY HASH (issuer_id, serial) with N partitions each (the same
N, so a certificate's row, responses and queued change sit in partitions of one number). The
conversion is sql/queries/partition.sql: a function created in the session's pg_temp that reads
each table's definition from the catalog and re-creates it around the copied rows, in one
transaction. Queries stay as they are; a lookup by (issuer_id, serial) reads one partition.
"""

from __future__ import annotations

import asyncpg

from revoc.queries import queries

__all__ = ["MAX_PARTITIONS", "PartitionError", "apply_setting", "partition", "partition_state"]

MAX_PARTITIONS = 1024


class PartitionError(RuntimeError):
    """The tables cannot be converted as asked (already partitioned, bad count, missing table)."""


async def partition_state(conn: asyncpg.Connection) -> dict[str, int | None]:
    """Per table: 0 when plain, the partition count when partitioned, None when missing."""
    rows = await conn.fetch(queries().partition_state)
    return {row["name"]: row["partitions"] for row in rows}


async def partition(conn: asyncpg.Connection, count: int) -> list[str]:
    """Convert the three tables into `count` hash partitions each, in one transaction.

    Returns one line per table (rows copied). Refuses, changing nothing, when a table is already
    partitioned, the count is outside 2..MAX_PARTITIONS, or a table carries something the
    conversion does not re-create (a policy, a rule, a publication, extended statistics).
    """
    if not 2 <= count <= MAX_PARTITIONS:
        raise PartitionError(f"the partition count must be between 2 and {MAX_PARTITIONS}, "
                             f"not {count}")
    q = queries()
    try:
        async with conn.transaction():
            await conn.execute(q.partition_define)
            report: list[str] = await conn.fetchval(q.partition_run, count)
    except (asyncpg.ObjectNotInPrerequisiteStateError, asyncpg.FeatureNotSupportedError,
            asyncpg.InvalidParameterValueError, asyncpg.UndefinedTableError) as exc:
        raise PartitionError(str(exc)) from None
    await conn.execute(q.partition_analyze)
    return report


async def apply_setting(conn: asyncpg.Connection, count: int) -> list[str]:
    """What `revoc db upgrade` does with REVOC_DB_PARTITIONS (0: nothing).

    Plain tables are converted; tables already in `count` partitions are left alone (so the
    setting can stay in the environment of every upgrade); any other layout is an error, because
    changing the partition count of populated tables is not something an upgrade should start.
    """
    if count == 0:
        return []
    state = await partition_state(conn)
    if all(n == count for n in state.values()):
        return []
    if all(n == 0 for n in state.values()):
        try:
            return await partition(conn, count)
        except PartitionError:
            # Another upgrade with the same setting converted them while this one waited on
            # the lock: that is the layout asked for.
            if all(n == count for n in (await partition_state(conn)).values()):
                return []
            raise
    layout = ", ".join(f"{name}: {n if n else 'plain'}" for name, n in state.items())
    raise PartitionError(f"REVOC_DB_PARTITIONS={count} but the tables are laid out otherwise "
                         f"({layout}); the partition count of a partitioned table is not changed")
