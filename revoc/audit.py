"""`revoc audit`: prove from the stored bytes that every revocation reaches relying parties.

The audit reads one REPEATABLE READ snapshot and checks what relying parties would get, not the
bookkeeping that produced it: the DER of the stored CRLs and pre-signed OCSP responses is parsed
with `cryptography` (an implementation independent of our encoders) and compared with the
`certificates` table. Each finding is one line whose first word is its kind:

  crl-missing      a revoked certificate is on neither the latest full CRL of its scope (its
                   shard; -1, the issuer-wide CRL, for a certificate without one; and -1 for every
                   certificate of the issuer whenever an issuer-wide CRL exists) nor, for a change
                   newer than that CRL, on the latest delta CRL built after the change.
  crl-mismatch     the CRL that reflects a revoked certificate's last change lists it with
                   another revocation date (to the second) or reason than recorded; or a change
                   (a reason raised to keyCompromise) is on no CRL beyond the grace period.
  crl-removed      a delta CRL says removeFromCRL for a certificate revoked when it was built.
  crl-good-listed  a good certificate (a released hold) is on the latest full CRL, and no delta
                   CRL built after the release says removeFromCRL.
  crl-unknown      a CRL lists a serial the issuer never recorded.
  crl-expired      the latest full CRL of a scope, or the delta CRL in use, is past nextUpdate.
  crl-invalid      a stored CRL does not parse or its signature does not verify with the CA key.
  ocsp-good        a pre-signed response says good (or unknown) for a revoked certificate.
  ocsp-revoked     a pre-signed response says revoked for a good certificate.
  ocsp-mismatch    the revocation time (to the second) or reason differs from the database's.
  ocsp-invalid     a pre-signed response does not parse, is not successful, or names another
                   serial or CertID hash than its row, or is stored without its certs field
                   (migration 0007) and responder_certs lacks the element it names.
  ocsp-stale       responses signed before the certificate's last change (never served, but
                   the presigner is not keeping up).
  ocsp-missing     a revoked, unexpired certificate has no pre-signed response at all.
  quarantined      a row a worker could not encode and skips (table quarantine).
  implausible      a row breaking the plausibility constraints of migration 0004 (they are NOT
                   VALID, so rows older than them were never checked).
  worker-dead      no presigner (or publisher) has written a heartbeat within the threshold,
                   though one ran (a worker that stopped in order counts until its last beat
                   is older than the threshold, so `--once` runs from cron are alive).
  worker-failing   every running worker of a kind has failed since its last success, for longer
                   than the threshold.

Grace. A status change younger than `grace` (certificates.changed_at) that is not reflected yet
is not a finding but pending (counted in the summary): the presigner and the publisher need a
moment. A CRL or response that claims to reflect the change (its max_change_seq or
cert_change_seq covers it) and is wrong is a finding at once.

Scopes and the retention rule of the CRL checks: revoc/audit_crl.py.

Scale. Certificates and responses stream through cursors; one CRL's serials are in memory at a
time (about 170 bytes a listed serial); each CRL is parsed once. Findings are sorted
by kind, issuer and serial. `audit()` takes a connection and a set of checks, so a
long-running worker can run the CRL checks after each round:
`await audit(conn, now=clock.now(), checks=("crl",))`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Coroutine
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from cryptography import x509
from cryptography.x509 import ocsp

from revoc.admin import list_issuers
from revoc.audit_crl import CrlSerials, check_crls, read_crl
from revoc.audit_report import (
    DEFAULT_GRACE,
    PREFETCH,
    AuditContext,
    AuditReport,
    Finding,
    format_epoch,
    format_time,
    reason_name,
)
from revoc.model import HashAlgorithm, Reason
from revoc.queries import queries

DEFAULT_WORKER_THRESHOLD = 300.0  # seconds without a heartbeat before a worker kind is dead
CHECKS = ("crl", "ocsp", "quarantine", "plausibility", "workers")
_WORKER_NOUNS = {"presign": "presigner", "publish": "publisher"}


async def audit(conn: asyncpg.Connection, *, now: datetime, grace: float = DEFAULT_GRACE,
                worker_threshold: float = DEFAULT_WORKER_THRESHOLD,
                checks: Collection[str] = CHECKS) -> AuditReport:
    """Run `checks` (a subset of CHECKS) in one read-only snapshot; see the module docstring.

    `now` is the time expiry, grace and heartbeat ages are measured against (timezone-aware).
    """
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown audit checks: {', '.join(sorted(unknown))}")
    if now.tzinfo is None:
        raise ValueError("audit needs a timezone-aware now")
    report = AuditReport(grace=grace)
    steps: dict[str, Callable[[AuditContext], Coroutine[Any, Any, None]]] = {
        "crl": check_crls, "ocsp": _check_ocsp, "quarantine": _check_quarantine,
        "plausibility": _check_plausibility, "workers": _check_workers}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        ctx = AuditContext(conn, now, now - timedelta(seconds=grace), worker_threshold,
                           await list_issuers(conn), report)
        for name in CHECKS:
            if name in checks:
                await steps[name](ctx)
    report.findings.sort(key=Finding.sort_key)
    return report


async def database_now(conn: asyncpg.Connection) -> datetime:
    """The database server's clock, which stamped changed_at and the heartbeats."""
    now: datetime = await conn.fetchval(queries()["status_now"])
    return now


# ---------------------------------------------------------------- OCSP


_HASH_NAMES = {alg.value: alg.hashlib_name for alg in HashAlgorithm}


def response_problem(der: bytes, *, serial: int, hash_alg: int, status: str,
                     reason: int | None, revoked_epoch: int | None) -> tuple[str, str] | None:
    """(kind, detail) when a pre-signed response does not say what the database says."""
    try:
        response = ocsp.load_der_ocsp_response(der)
        if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            return "ocsp-invalid", f"response status {response.response_status.name}"
        got_serial = response.serial_number
        got_hash = response.hash_algorithm.name
        got_status = response.certificate_status
    except ValueError as exc:
        return "ocsp-invalid", f"does not parse as one single response: {exc}"
    if got_serial != serial or got_hash != _HASH_NAMES.get(hash_alg):
        return "ocsp-invalid", (f"names serial {got_serial:X} with a {got_hash} CertID; the row "
                                f"is {serial:X} / {_HASH_NAMES.get(hash_alg, hash_alg)}")
    if status != "revoked":
        if got_status is not ocsp.OCSPCertStatus.GOOD:
            return "ocsp-revoked", f"says {got_status.name.lower()}, the certificate is good"
        return None
    if got_status is not ocsp.OCSPCertStatus.REVOKED:
        return "ocsp-good", (f"says {got_status.name.lower()}, the certificate is revoked "
                             f"({reason_name(reason)}) since {format_epoch(revoked_epoch)}")
    wrong: list[str] = []
    got_time = int(response.revocation_time_utc.timestamp())  # type: ignore[union-attr]
    if revoked_epoch is not None and got_time != revoked_epoch:
        wrong.append(f"revocationTime {format_epoch(got_time)}, "
                     f"recorded {format_epoch(revoked_epoch)}")
    got_reason = response.revocation_reason
    # unspecified (0) is expressed by omission (OCSP-RESP-12); either form is right.
    got_code = None
    if got_reason is not None and got_reason is not x509.ReasonFlags.unspecified:
        got_code = Reason[got_reason.value].value
    want_code = None if reason in (None, Reason.unspecified) else reason
    if got_code != want_code:
        wrong.append(f"reason {reason_name(got_code)}, recorded {reason_name(reason)}")
    return ("ocsp-mismatch", "; ".join(wrong)) if wrong else None


async def _check_ocsp(ctx: AuditContext) -> None:
    q = queries()
    names = {issuer.id: issuer.name for issuer in ctx.issuers}
    # (kind, issuer id, serial) -> detail and the CertID hashes of the responses that show it.
    grouped: dict[tuple[str, int, bytes], tuple[str, list[str]]] = {}
    async for row in ctx.conn.cursor(q["audit_ocsp_responses"], ctx.cutoff, prefetch=PREFETCH):
        ctx.report.checked["responses"] += 1
        serial: bytes = row["serial"]
        if row["cert_change_seq"] < row["change_seq"]:
            if not row["settled"]:
                ctx.report.pending["ocsp"] += 1
                continue
            problem: tuple[str, str] | None = (
                "ocsp-stale", f"signed from change {row['cert_change_seq']}; the certificate "
                f"changed ({row['status']}) at change {row['change_seq']}, "
                f"{format_time(row['changed_at'])} ({ctx.age(row['changed_at'])})")
        elif row["certs_lost"]:
            problem = ("ocsp-invalid", "stored without its certs field, and responder_certs "
                       "lacks the element it names: not servable")
        else:
            problem = response_problem(
                row["der"], serial=int.from_bytes(serial, "big", signed=True),
                hash_alg=row["hash_alg"], status=row["status"], reason=row["reason"],
                revoked_epoch=row["revoked_epoch"])
        if problem is not None:
            key = (problem[0], row["issuer_id"], bytes(serial))
            entry = grouped.setdefault(key, (problem[1], []))
            entry[1].append(_HASH_NAMES.get(row["hash_alg"], str(row["hash_alg"])).upper())
    for (kind, issuer_id, serial), (detail, hashes) in grouped.items():
        ctx.add(kind, f"{detail} [{', '.join(sorted(hashes))}]", names.get(issuer_id, "?"),
                serial)
    signing = [issuer.id for issuer in ctx.issuers if issuer.ocsp_key is not None]
    for issuer in ctx.issuers:
        if issuer.ocsp_key is None:
            ctx.report.notes.append(f"issuer {issuer.name}: no OCSP signing key registered; "
                                    "missing responses not checked")
    async for row in ctx.conn.cursor(q["audit_ocsp_missing"], ctx.now, ctx.cutoff, signing,
                                     prefetch=PREFETCH):
        if not row["settled"]:
            ctx.report.pending["ocsp"] += 1
            continue
        ctx.add("ocsp-missing", f"revoked (change at {format_time(row['changed_at'])}), but no "
                "pre-signed response exists", names.get(row["issuer_id"], "?"), row["serial"])


# ---------------------------------------------------------------- rows


async def _check_quarantine(ctx: AuditContext) -> None:
    for row in await ctx.conn.fetch(queries()["quarantine_all"]):
        ctx.add("quarantined", f"the {row['kind']} worker skips it since "
                f"{format_time(row['first_seen'])} (change {row['change_seq']}): {row['error']}",
                row["issuer"], row["serial"])


async def _check_plausibility(ctx: AuditContext) -> None:
    names = {issuer.id: issuer.name for issuer in ctx.issuers}
    rows = 0
    async for row in ctx.conn.cursor(queries()["audit_implausible"], prefetch=PREFETCH):
        rows += 1
        problems = []
        if row["bad_serial"]:
            problems.append(f"serial octets {bytes(row['serial']).hex() or '(none)'} are not a "
                            "positive minimal DER INTEGER of 1 to 20 octets")
        for column in ("revoked_at", "invalidity_date", "not_after"):
            if row[f"bad_{column}"]:
                problems.append(f"{column} {row[column]} is not between 1950 and 9999")
        ctx.add("implausible", "; ".join(problems) + " (a row older than the constraints)",
                names.get(row["issuer_id"], "?"), row["serial"])
    ctx.report.checked["certificates"] = await ctx.conn.fetchval(
        queries()["audit_certificate_count"])


# ---------------------------------------------------------------- workers


async def _check_workers(ctx: AuditContext) -> None:
    rows = await ctx.conn.fetch(queries()["audit_workers"])
    horizon = ctx.now - timedelta(seconds=ctx.worker_threshold)
    for kind, noun in _WORKER_NOUNS.items():
        mine = [row for row in rows if row["kind"] == kind]
        if not mine:
            continue  # never ran here (or not for a week): nothing to miss
        # A heartbeat within the threshold, even the last one of a worker that stopped in order
        # (a `--once` run from cron), says the kind is alive.
        if not any(row["beat_at"] > horizon for row in mine):
            last = max(mine, key=lambda row: row["beat_at"])
            how = "stopped" if last["stopped_at"] is not None else "last heartbeat"
            ctx.add("worker-dead", f"no {noun} alive since {format_time(last['beat_at'])} "
                    f"({ctx.age(last['beat_at'])}; {how}: {last['host']} pid {last['pid']}; "
                    f"threshold {ctx.worker_threshold:g} s)", subject=f"{kind} workers")
            continue
        running = [row for row in mine if row["stopped_at"] is None and row["beat_at"] > horizon]
        failing = [row for row in running if _failing_since(row, horizon)]
        if failing and len(failing) == len(running):
            row = max(failing, key=lambda r: r["last_error_at"])
            ctx.add("worker-failing", f"every running {noun} has failed since its last success "
                    f"for over {ctx.worker_threshold:g} s; {row['host']} pid {row['pid']}: last "
                    f"ok {format_time(row['last_ok']) if row['last_ok'] else 'never'}, error at "
                    f"{format_time(row['last_error_at'])}: {row['last_error']}",
                    subject=f"{kind} workers")


def _failing_since(row: asyncpg.Record, horizon: datetime) -> bool:
    """The worker's latest event is an error and its last success is older than the horizon."""
    error_at, ok_at = row["last_error_at"], row["last_ok"]
    if error_at is None or (ok_at is not None and ok_at >= error_at):
        return False
    return bool((ok_at or row["started_at"]) < horizon)


__all__ = ["CHECKS", "DEFAULT_GRACE", "DEFAULT_WORKER_THRESHOLD", "AuditReport", "CrlSerials",
           "Finding", "audit", "database_now", "read_crl", "response_problem"]
