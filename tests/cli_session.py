"""Running the `revoc` CLI in-process and reading the database back, for the admin CLI tests."""

from __future__ import annotations

import asyncio

import asyncpg

from revoc.cli import main


def run(*argv: str) -> int:
    return main(list(argv))


def fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(go())
