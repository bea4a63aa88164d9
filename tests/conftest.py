"""Shared database fixtures: one real PostgreSQL per session, one fresh database per run.

Where the server comes from, first match wins:

1. ``REVOC_DATABASE_URL`` (what ``.ci/run`` exports; any server you point at);
2. with ``CI=true``, the CI server at postgresql://postgres@127.0.0.1:5432/test
   if it answers (a fallback for CI setups that forgot to export the URL);
3. otherwise a throwaway embedded PostgreSQL (``revoc.embedded_pg``,
   ``durable=False``) in a fresh directory under /tmp, stopped at the end (and by its
   supervisor should this process die first: it watches our pid).

On that server the session creates ``revoc_test_<hex>``, migrates it, hands out
its DSN as ``database_url`` and drops it at the end, so runs never see each
other's rows and the server's own databases stay untouched.

``database_url`` is a plain string: sync tests that run the ``revoc`` CLI pass it
on as ``REVOC_DATABASE_URL=<dsn>`` in the subprocess environment.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from revoc.db import create_pool, upgrade
from revoc.embedded_pg import EmbeddedPostgres
from tests.databases import create_migrated, drop
from tests.pgcluster import PgCluster

CI_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/test"

# Fixture modules shared by several test files (never imported from a test module: tests import
# no other test module, tests/test_layering.py checks it).
pytest_plugins = ["tests.responder_world", "tests.presign_pki"]

# Tables a test may fill; clean_db empties them (children first is not needed
# with CASCADE, but listing them all keeps the intent explicit).
_DATA_TABLES = ("ocsp_pending", "quarantine", "workers", "ocsp_responses", "responder_certs",
                "crls", "certificates", "issuers")


def _ci_server_answers() -> bool:
    """A real connection, not a port check: the CI server may be up but refuse us."""

    async def probe() -> None:
        conn = await asyncpg.connect(CI_SERVER_URL, timeout=3)
        await conn.close()

    # Own thread, own loop: asyncio.run in the main thread would reset the event
    # loop that pytest-asyncio manages for the session.
    with ThreadPoolExecutor(max_workers=1) as executor:
        try:
            executor.submit(asyncio.run, probe()).result()
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
    return True


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """An admin DSN on the session's server (may CREATE/DROP DATABASE).

    Sync and session-scoped: one server for the whole run.
    """
    explicit = os.environ.get("REVOC_DATABASE_URL")
    if explicit:
        yield explicit
        return
    if os.environ.get("CI", "").lower() == "true" and _ci_server_answers():
        yield CI_SERVER_URL
        return
    # mkdtemp makes 0700 dirs; as root the server runs as an unprivileged account
    # (revoc-pg), which must be able to pass through. /tmp itself is 1777.
    base = Path(tempfile.mkdtemp(prefix="revoc-test-pg-", dir="/tmp"))
    base.chmod(0o711)
    server = EmbeddedPostgres(base / "pg", durable=False)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def database_url(server_url: str) -> AsyncIterator[str]:
    """DSN of a freshly created and migrated ``revoc_test_<hex>`` database."""
    dsn = await create_migrated(server_url)
    try:
        yield dsn
    finally:
        await drop(server_url, dsn)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """One pool for the whole session (the event loop is session-scoped too)."""
    db_pool = await create_pool(database_url, min_size=1, max_size=10)
    try:
        yield db_pool
    finally:
        await db_pool.close()


@pytest_asyncio.fixture(loop_scope="session")
async def clean_db(pool: asyncpg.Pool) -> asyncpg.Pool:
    """Empty the data tables before the test; request it when a test needs isolation.

    Before, not after: a failed test leaves its rows for inspection, and the next
    test that cares starts clean anyway. The change sequence restarts too, so
    change_seq values are the same whatever ran earlier.
    """
    await pool.execute(
        f"TRUNCATE {', '.join(_DATA_TABLES)} RESTART IDENTITY CASCADE;"
        " ALTER SEQUENCE cert_change_seq RESTART"
    )
    return pool


@pytest_asyncio.fixture(loop_scope="session")
async def own_cluster() -> AsyncIterator[PgCluster]:
    """A private, migrated PostgreSQL the test may stop, kill and restart (tests/pgcluster.py);
    `own_cluster.dsn` stays valid across restarts."""
    cluster = PgCluster()
    try:
        await asyncio.to_thread(cluster.start)
        conn = await asyncpg.connect(cluster.dsn)
        try:
            await upgrade(conn)
        finally:
            await conn.close()
        yield cluster
    finally:
        await asyncio.to_thread(cluster.close)
