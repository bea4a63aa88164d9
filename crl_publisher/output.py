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
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from revoc.crl_paths import crl_name
from revoc.queries import queries

log = logging.getLogger("revoc.publish")
WRITERS = 8  # files written and fsynced at once by write_all_atomically
REPAIR_CHUNK = 8 * 1024 * 1024  # a stored CRL is copied to its file this many bytes at a time


def write_atomically(root: Path, name: str, data: bytes) -> None:
    """Replace root/name with data so readers see the old file or the new one, never a mix.

    Temp file in the same directory, fsync, rename over the target, fsync the directory (so
    the rename itself survives a power cut). The temp name starts with a dot: static servers
    and CDN origins serving `root` do not list it.
    """
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_path(target)
    _write_temp(temp, data)
    os.replace(temp, target)
    _fsync_directory(target.parent)


def _temp_path(target: Path) -> Path:
    """Where `target` is written before the rename: a dot file naming this process, which
    `_remove_leftovers` deletes once the process is gone."""
    return target.parent / f".{target.name}.tmp-{os.getpid()}"


def _write_temp(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_fd(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def write_all_atomically(root: Path, files: Sequence[tuple[str, bytes]]
                               ) -> dict[str, OSError]:
    """`write_atomically` for several files at once; returns the names not written, with why.

    The same guarantees per file (temp file, fsync, rename, fsync of the directory), with the
    waits shared: the temp files are written and fsynced concurrently (one thread each, at most
    WRITERS at a time), then renamed, then each directory is fsynced once (16 shards: 32 files,
    2 directories, instead of 32 sequential file + directory fsync pairs).
    """
    errors: dict[str, OSError] = {}
    temps: dict[str, tuple[Path, Path]] = {}
    for name, _data in files:
        target = root / name
        temps[name] = (target, _temp_path(target))
    limit = asyncio.Semaphore(WRITERS)

    async def one(name: str, data: bytes) -> None:
        target, temp = temps[name]
        async with limit:
            try:
                await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
                await asyncio.to_thread(_write_temp, temp, data)
            except OSError as exc:
                errors[name] = exc

    await asyncio.gather(*(one(name, data) for name, data in files))
    directories: dict[Path, list[str]] = {}
    for name, (target, temp) in temps.items():
        if name in errors:
            with contextlib.suppress(OSError):
                temp.unlink()
            continue
        try:
            os.replace(temp, target)
        except OSError as exc:
            errors[name] = exc
            continue
        directories.setdefault(target.parent, []).append(name)
    for directory, names in directories.items():
        try:
            await asyncio.to_thread(_fsync_directory, directory)
        except OSError as exc:
            for name in names:
                errors[name] = exc
    return errors


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
        await _rewrite_from_database(conn, root, name, row["id"], bytes(row["sha256"]))
        repaired.append(name)
        log.warning("rewrote %s from the database (it was %s)", name,
                    "missing" if digest is None else "not the latest CRL")
    await asyncio.to_thread(_remove_leftovers, root)
    return repaired


async def _rewrite_from_database(conn: asyncpg.Connection, root: Path, name: str, crl_id: int,
                                 sha256: bytes) -> None:
    """`write_atomically` of a stored CRL, fetched REPAIR_CHUNK bytes at a time: a 49 MB CRL
    fetched whole costs about twice its size in buffers (asyncpg's read buffer, then the bytes),
    on top of what the round itself then holds. The bytes written are checked against the
    stored SHA-256 before the file replaces the old one."""
    target = root / name
    temp = _temp_path(target)
    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    fd = await asyncio.to_thread(os.open, temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        digest = hashlib.sha256()
        offset = 1  # substring() counts from 1
        while True:
            chunk = await conn.fetchval(queries()["crl_der_slice"], crl_id, offset, REPAIR_CHUNK)
            if chunk is None:
                raise OSError(f"{name}: CRL {crl_id} left the database while it was copied")
            digest.update(chunk)
            await asyncio.to_thread(_write_fd, fd, chunk)
            offset += len(chunk)
            if len(chunk) < REPAIR_CHUNK:
                break
        if digest.digest() != sha256:
            raise OSError(f"{name}: the bytes read back differ from the stored CRL's SHA-256")
        await asyncio.to_thread(os.fsync, fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    os.close(fd)
    os.replace(temp, target)
    await asyncio.to_thread(_fsync_directory, target.parent)


def _write_fd(fd: int, data: bytes) -> None:
    with memoryview(data) as view:
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])


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
