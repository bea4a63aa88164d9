"""Published CRL files: atomic replacement, and repair from the database after a crash.

The publisher writes files after its transaction commits (crl_publisher/publisher.py); a publisher
killed in between leaves the files behind the database, so every round first mirrors the latest
stored CRLs to disk (`mirror_latest`) and removes temp files of dead writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from pathlib import Path

import asyncpg

from revoc.crl_paths import crl_name
from revoc.queries import queries

log = logging.getLogger("revoc.publish")


def write_atomically(root: Path, name: str, data: bytes) -> None:
    """Replace root/name with data so readers see the old file or the new one, never a mix.

    Temp file in the same directory, fsync, rename over the target, fsync the directory (so
    the rename itself survives a power cut). The temp name starts with a dot: static servers
    and CDN origins serving `root` do not list it.
    """
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with memoryview(data) as view:
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _file_digest(path: Path) -> bytes | None:
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").digest()
    except FileNotFoundError:
        return None


async def mirror_latest(conn: asyncpg.Connection, root: Path) -> list[str]:
    """Make the files under `root` equal the latest stored CRL of every scope and kind.

    Only files whose SHA-256 differs are fetched and rewritten; leftover temp files of a killed
    publisher are removed. Returns the relative names rewritten.
    """
    q = queries()
    repaired: list[str] = []
    for row in await conn.fetch(q["crl_latest_digests"]):
        name = crl_name(row["issuer"], row["shard"], row["kind"])
        digest = await asyncio.to_thread(_file_digest, root / name)
        if digest == bytes(row["sha256"]):
            continue
        stored = await conn.fetchrow(q["crl_der_by_id"], row["id"])
        await asyncio.to_thread(write_atomically, root, name, bytes(stored["der"]))
        repaired.append(name)
        log.warning("rewrote %s from the database (it was %s)", name,
                    "missing" if digest is None else "not the latest CRL")
    await asyncio.to_thread(_remove_leftovers, root)
    return repaired


def _remove_leftovers(root: Path) -> None:
    """Delete temp files of publishers that died between writing and renaming."""
    if not root.is_dir():
        return
    for leftover in [*root.glob(".*.tmp-*"), *root.glob("*/.*.tmp-*")]:
        if not _pid_alive(leftover.name.rsplit("-", 1)[-1]):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _pid_alive(text: str) -> bool:
    """Whether the writer of a temp file still runs (then the file is not a leftover)."""
    try:
        pid = int(text)
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
