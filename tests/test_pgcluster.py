"""The restartable cluster other fault tests rely on really stops and comes back."""

from __future__ import annotations

import asyncpg
import pytest

from tests.pgcluster import PgCluster


async def test_cluster_stops_and_restarts_on_the_same_dsn(own_cluster: PgCluster) -> None:
    conn = await asyncpg.connect(own_cluster.dsn)
    assert await conn.fetchval("SELECT count(*) FROM schema_migrations") >= 4
    own_cluster.stop()
    with pytest.raises((asyncpg.InterfaceError, asyncpg.PostgresError, OSError)):
        await conn.fetchval("SELECT 1")
    own_cluster.start()
    conn = await asyncpg.connect(own_cluster.dsn)
    assert await conn.fetchval("SELECT 1") == 1
    await conn.close()
