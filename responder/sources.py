"""What the answer sources (responder/answer_sources.py) read: the issuer index, PostgreSQL and the
issuers' live-signing keys.

`IssuerIndex` maps a CertID's (hash, issuerNameHash, issuerKeyHash) to an issuer with one dict
lookup; `ResponseStore` reads pre-signed responses (batched by responder/miss_batch.py) and
certificate status with short timeouts (a database in trouble must turn into `tryLater`, not hung
requests); `IssuerSigner` signs on demand when `live_signing` is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from cryptography import x509

from responder.cache import CacheKey
from responder.miss_batch import Fetch, Key, MissBatcher, Row
from revoc.admin import issuer_from_row
from revoc.der.ocsp import ResponseTemplate, SingleResponse, responder_key_hash
from revoc.der.ocsp_certs import splice_certs
from revoc.model import CertStatus, HashAlgorithm, Issuer, Reason
from revoc.queries import queries
from revoc.signing import SigningError, open_signer

log = logging.getLogger("revoc.responder")

# Errors that mean "the store is unreachable or too slow right now".
STORE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
    asyncpg.TargetServerAttributeNotMatched,  # no host of the DSN as asked: failing over
)


# What the store answers for a certificate it knows but holds no servable response for: none
# signed yet, or only one signed before the certificate's latest change (a revocation the
# presigner has not reflected yet). The endpoint answers `tryLater` (or signs live), never the
# old response (ARCHITECTURE invariant 1).
PENDING: Row = (b"", 0, 0)


class StoreUnavailable(Exception):
    """PostgreSQL could not answer in time: the request gets `tryLater`."""


@dataclass(frozen=True, slots=True)
class CertRecord:
    """What the live signer needs about one certificate (None from the store: never issued)."""

    status: CertStatus
    revoked_at: datetime | None
    reason: Reason | None
    invalidity_date: datetime | None = None


class IssuerSigner:
    """Signs responses for one issuer on demand with its OCSP key (delegate's, else the CA's)."""

    __slots__ = ("_backdate", "_template", "_validity")

    def __init__(self, template: ResponseTemplate, validity: int, backdate: int) -> None:
        self._template = template
        self._validity = timedelta(seconds=validity)
        self._backdate = timedelta(seconds=backdate)

    @classmethod
    def for_issuer(
        cls, issuer: Issuer, validity: int, backdate: int, *, rsa_pss: bool = False
    ) -> IssuerSigner | None:
        """None when the issuer has no usable OCSP key here (logged once per load)."""
        key_path = issuer.ocsp_key
        if key_path is None:
            return None
        try:
            signer = open_signer(key_path, rsa_pss=rsa_pss)
        except SigningError as exc:
            log.warning("issuer %s: no live signing: %s", issuer.name, exc)
            return None
        cert_der = issuer.ocsp_cert_der or issuer.cert_der
        cert = x509.load_der_x509_certificate(cert_der)
        # A delegated responder's certificate travels with the response (OCSP-SIGNER-8).
        certs = [issuer.ocsp_cert_der] if issuer.ocsp_cert_der else []
        template = ResponseTemplate(
            signer=signer, responder_key_hash=responder_key_hash(cert), certs=certs)
        return cls(template, validity, backdate)

    def times(self, now: datetime) -> tuple[datetime, datetime, datetime]:
        """(producedAt, thisUpdate, nextUpdate) for a response signed now (OCSP-RESP-6/8)."""
        produced_at = now.astimezone(UTC).replace(microsecond=0)
        this_update = produced_at - self._backdate
        return produced_at, this_update, this_update + self._validity

    def sign(
        self,
        answers: Sequence[tuple[bytes, CertRecord | None]],
        now: datetime,
        nonce: bytes | None,
    ) -> tuple[bytes, int, int]:
        """Sign one response covering every (CertID DER, record); returns (der, this, next)."""
        produced_at, this_update, next_update = self.times(now)
        singles = []
        for cert_id, record in answers:
            if record is None:  # never issued: never `good` (CONFORMANCE OCSP-RESP-11)
                singles.append(SingleResponse(cert_id, CertStatus.UNKNOWN, this_update,
                                              next_update))
            else:
                singles.append(SingleResponse(
                    cert_id, record.status, this_update, next_update,
                    revocation_time=record.revoked_at, revocation_reason=record.reason,
                    invalidity_date=record.invalidity_date))
        der = self._template.build_many(singles, produced_at, nonce=nonce)
        return der, int(this_update.timestamp()), int(next_update.timestamp())


@dataclass(frozen=True, slots=True)
class IssuerEntry:
    issuer: Issuer
    signer: IssuerSigner | None  # None: live signing off, or no usable key for this issuer


class IssuerIndex:
    """(hash algorithm, issuerNameHash, issuerKeyHash) -> issuer, built from the issuers table.

    Built once per load, so mapping a CertID to an issuer is one dict lookup (OCSP-REQ-3/4: the
    issuer is found by its hashes, never by the SKI).
    """

    __slots__ = ("by_cert_id", "by_id")

    def __init__(self, entries: Sequence[IssuerEntry]) -> None:
        self.by_id = {entry.issuer.id: entry for entry in entries}
        self.by_cert_id: dict[tuple[HashAlgorithm, bytes, bytes], IssuerEntry] = {}
        for entry in entries:
            for algorithm in HashAlgorithm:
                key = (algorithm, entry.issuer.name_hashes[algorithm],
                       entry.issuer.key_hashes[algorithm])
                self.by_cert_id[key] = entry

    @classmethod
    def build(
        cls, issuers: Sequence[Issuer], *, live_signing: bool, validity: int, backdate: int,
        previous: IssuerIndex | None = None, rsa_pss: bool = False,
    ) -> IssuerIndex:
        """Index the issuers; signers are reused from `previous` when the issuer is unchanged."""
        entries = []
        for issuer in issuers:
            signer = None
            if live_signing:
                old = previous.by_id.get(issuer.id) if previous else None
                if old is not None and old.issuer == issuer and old.signer is not None:
                    signer = old.signer
                else:
                    signer = IssuerSigner.for_issuer(issuer, validity, backdate,
                                                     rsa_pss=rsa_pss)
            entries.append(IssuerEntry(issuer, signer))
        return cls(entries)


class ResponseStore:
    """Reads of PostgreSQL with a deadline: every failure becomes StoreUnavailable.

    Pre-signed responses are read through a `MissBatcher` (concurrent misses merged and read in
    batches); `generation` is the response cache's invalidation counter it needs for merging.
    The batch reads reuse their connections: one that read without error waits, unreset, for the
    next run of batches, and goes back to the pool (with asyncpg's reset round trip) only after
    `READER_IDLE_SECONDS` unused, on an error, or at `close()`. The batch query leaves no session
    state behind, so skipping the reset in between is safe, and a miss costs one round trip.
    """

    READER_IDLE_SECONDS = 1.0

    __slots__ = ("_batch_sql", "_cert_sql", "_certs_blocks", "_certs_sql", "_closed", "_idle",
                 "_idle_timer", "_issuers_sql", "_pool", "_timeout", "misses")

    def __init__(self, pool: asyncpg.Pool, timeout: float, *,
                 generation: Callable[[], int] = lambda: 0, max_inflight: int = 4) -> None:
        q = queries()
        self._pool = pool
        self._timeout = timeout
        self._batch_sql = q["responder_ocsp_response_batch"]
        self._cert_sql = q["responder_cert_status"]
        self._certs_sql = q["responder_certs_by_id"]
        # responder_certs id -> certs element spliced into stored stems (never changes per id)
        self._certs_blocks: dict[int, bytes] = {}
        self._issuers_sql = q["responder_issuers"]
        self.misses = MissBatcher(self._reader, generation=generation, timeout=timeout,
                                  max_inflight=max_inflight)
        self._idle: list[tuple[asyncpg.Connection, float]] = []  # (connection, idle since)
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closed = False

    async def close(self) -> None:
        """Hand the idle reader connections back to the pool (the lifespan's end)."""
        self._closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        idle, self._idle = self._idle, []
        for conn, _since in idle:
            await self._release(conn)

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                return await conn.fetchrow(sql, *args, timeout=self._timeout)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def response(self, issuer_id: int, serial: bytes,
                       algorithm: int) -> tuple[bytes, int, int] | None:
        """(der, thisUpdate, nextUpdate as epoch seconds) of the pre-signed response; `PENDING`
        for a known certificate without a servable one; None for a serial never recorded."""
        try:
            return await self.misses.get(CacheKey(issuer_id, serial, algorithm))
        except TimeoutError:
            raise StoreUnavailable("no answer from PostgreSQL in time") from None
        except StoreUnavailable as exc:  # one instance per waiter: tracebacks do not pile up
            raise StoreUnavailable(str(exc)) from None

    @contextlib.asynccontextmanager
    async def _reader(self) -> AsyncIterator[Fetch]:
        """A connection for a run of batches (responder/miss_batch.py): an idle one kept from an
        earlier run, else one from the pool; kept again afterwards unless a read failed."""
        if self._idle:
            conn, _since = self._idle.pop()
        else:
            try:
                conn = await self._pool.acquire(timeout=self._timeout)
            except STORE_ERRORS as exc:
                raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        failed: list[BaseException] = []

        async def fetch(keys: list[Key]) -> dict[Key, Row]:
            try:
                return await self._read_batch(conn, keys)
            except BaseException as exc:
                failed.append(exc)
                raise

        try:
            yield fetch
        except BaseException as exc:
            failed.append(exc)
            raise
        finally:
            if failed or self._closed or conn.is_closed():
                await self._release(conn)
            else:
                self._idle.append((conn, time.monotonic()))
                if self._idle_timer is None:
                    self._idle_timer = asyncio.get_running_loop().call_later(
                        self.READER_IDLE_SECONDS, self._release_idle)

    def _release_idle(self) -> None:
        """Timer: give back the connections idle for READER_IDLE_SECONDS; look again later for
        the others."""
        self._idle_timer = None
        now = time.monotonic()
        keep = []
        for conn, since in self._idle:
            if now - since >= self.READER_IDLE_SECONDS:
                task = asyncio.get_running_loop().create_task(self._release(conn))
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
            else:
                keep.append((conn, since))
        self._idle = keep
        if keep:
            self._idle_timer = asyncio.get_running_loop().call_later(
                self.READER_IDLE_SECONDS, self._release_idle)

    async def _release(self, conn: asyncpg.Connection) -> None:
        try:
            await self._pool.release(conn, timeout=self._timeout)
        except Exception:  # a broken connection: the pool replaces it
            log.debug("releasing a store connection failed", exc_info=True)

    async def _read_batch(self, conn: asyncpg.Connection, keys: list[Key]) -> dict[Key, Row]:
        try:
            rows = await conn.fetch(
                self._batch_sql, [key[0] for key in keys], [key[1] for key in keys],
                [key[2] for key in keys], timeout=self._timeout)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        try:
            return self._rows(keys, rows)
        except KeyError:  # a certs element not read yet (the first of each id, or a new one)
            pass
        ids = {row["certs_id"] for row in rows} - {None} - self._certs_blocks.keys()
        try:
            found = await conn.fetch(self._certs_sql, list(ids), timeout=self._timeout)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        self._certs_blocks.update((row["id"], bytes(row["certs_block"])) for row in found)
        for missing in ids - self._certs_blocks.keys():
            log.error("stored responses name certs element %d, which responder_certs lacks: "
                      "they are not served", missing)
        return self._rows(keys, rows, strict=False)

    def _rows(self, keys: list[Key], rows: list[asyncpg.Record], *,
              strict: bool = True) -> dict[Key, Row]:
        """Batch rows as the batcher wants them: (full DER, thisUpdate, nextUpdate) or PENDING.
        A certs id not in `_certs_blocks` raises KeyError when `strict`; otherwise (it was
        looked for and is not there) that response is PENDING: unservable, never a guess."""
        blocks = self._certs_blocks
        out: dict[Key, Row] = {}
        for n, der, this_update, next_update, block_id in rows:
            if der is None:
                out[keys[n - 1]] = PENDING
            elif block_id is None:  # a whole response (CA-signed, or stored before 0007)
                out[keys[n - 1]] = (der, this_update, next_update)
            elif (block := blocks.get(block_id)) is not None:
                out[keys[n - 1]] = (splice_certs(der, block), this_update, next_update)
            elif strict:
                raise KeyError(block_id)
            else:
                out[keys[n - 1]] = PENDING
        return out

    async def certificate(self, issuer_id: int, serial: bytes) -> CertRecord | None:
        row = await self._fetchrow(self._cert_sql, issuer_id, serial)
        if row is None:
            return None
        if row["status"] == "revoked":
            return CertRecord(CertStatus.REVOKED, row["revoked_at"], Reason(row["reason"]),
                              row["invalidity_date"])
        return CertRecord(CertStatus.GOOD, None, None)

    async def issuers(self, conn: asyncpg.Connection) -> list[Issuer]:
        rows = await conn.fetch(self._issuers_sql, timeout=self._timeout)
        return [issuer_from_row(row) for row in rows]
