"""A daemon's stop (revoc/runtime.py `close_pool`, used by `revoc presign` and `revoc publish`)
ends quietly even when a round was cut off inside PostgreSQL: the pool is terminated after the
grace period, the round's task then fails with "connection was closed in the middle of
operation", and that outcome is collected instead of surfacing as asyncio's shutdown traceback
(seen once in CI as a Traceback in `revoc presign`'s stderr after SIGTERM)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent("""
    import asyncio, sys
    import asyncpg
    from revoc.runtime import close_pool

    async def main() -> None:
        pool = await asyncpg.create_pool(sys.argv[1], min_size=1, max_size=2)

        async def round_in_progress() -> None:
            async with pool.acquire() as conn:
                await conn.fetch("SELECT pg_sleep(30)")

        task = asyncio.ensure_future(round_in_progress())
        while not pool.get_size() or pool.get_idle_size() == pool.get_size():
            await asyncio.sleep(0.01)  # until the round holds its connection
        await close_pool(pool, grace=0.5)
        print("stopped", task.done(), flush=True)

    asyncio.run(main())
""")


def test_a_round_cut_off_at_stop_leaves_no_traceback(database_url: str) -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM, database_url], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped True"
    assert "Traceback" not in done.stderr and "exception" not in done.stderr.lower(), done.stderr
