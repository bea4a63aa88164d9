"""`revoc audit`: prove from the stored bytes that every revocation reaches relying parties.

The audit reads one REPEATABLE READ snapshot and checks what relying parties would get, not the
bookkeeping that produced it: the DER of the stored CRLs and pre-signed OCSP responses is parsed
with `cryptography` (an implementation independent of our encoders) and compared with the
`certificates` table. Each finding is one line whose first word is its kind:

  crl-missing      a revoked certificate is on neither the latest full CRL of its scope (its
                   shard; -1, the issuer-wide CRL, for a certificate without one; and -1 for every
                   certificate of the issuer whenever an issuer-wide CRL exists) nor, for a change
                   newer than that CRL, on the latest delta CRL built after the change.
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
                   serial or CertID hash than its row.
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

Retention (crl_publisher/publisher.py, "Expiry"): the latest full CRL must list a revoked
certificate whose notAfter is later than the thisUpdate of the scope's previous full CRL (all of
them when there is none); a change newer than the latest full CRL is expected on a delta when its
notAfter is later than the latest full CRL's thisUpdate.

Scale. Certificates and responses stream through cursors; one CRL's serials are in memory at a
time (a set of ints, about 100 bytes a serial); each CRL is parsed once. Findings are sorted
by kind, issuer and serial. `audit()` takes a connection and a set of checks, so a
long-running worker can run the CRL checks after each round.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.x509 import ocsp

from revoc.admin import list_issuers, serial_hex
from revoc.crl_paths import UNSHARDED, crl_name
from revoc.der.asn1 import integer_content
from revoc.model import HashAlgorithm, Issuer, Reason
from revoc.queries import queries

DEFAULT_GRACE = 120.0  # seconds a change may take to reach OCSP and the CRLs
DEFAULT_WORKER_THRESHOLD = 300.0  # seconds without a heartbeat before a worker kind is dead
CHECKS = ("crl", "ocsp", "quarantine", "plausibility", "workers")
_PREFETCH = 5_000  # rows per cursor round trip
_LOOKUP_BATCH = 5_000  # serials per lookup of CRL entries that are not revoked in their scope
_WORKER_NOUNS = {"presign": "presigner", "publish": "publisher"}


@dataclass(frozen=True, slots=True)
class Finding:
    """One broken invariant: `kind` is a stable word (module docstring), then who and what."""

    kind: str
    detail: str
    issuer: str = ""
    serial: str = ""  # hex, as `revoc cert revoke --serial` takes it
    subject: str = ""  # when neither issuer nor serial names it (a worker kind)

    def __str__(self) -> str:
        who = self.subject or " ".join(
            part for part in (f"issuer {self.issuer}" if self.issuer else "",
                              f"serial {self.serial}" if self.serial else "") if part)
        return f"{self.kind}: {who}: {self.detail}"

    def sort_key(self) -> tuple[str, str, int, str, str]:
        return self.kind, self.issuer, len(self.serial), self.serial, self.subject


@dataclass(slots=True)
class AuditReport:
    """Findings (empty: every invariant holds), notes on what was skipped, and counts."""

    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Changes younger than the grace period not reflected yet: "crl" (scope listings), "ocsp".
    pending: dict[str, int] = field(default_factory=lambda: {"crl": 0, "ocsp": 0})
    checked: dict[str, int] = field(default_factory=lambda: {
        "scopes": 0, "crls": 0, "crl_listings": 0, "responses": 0, "certificates": 0})
    grace: float = DEFAULT_GRACE

    @property
    def ok(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        c, p = self.checked, self.pending
        head = ("no findings" if self.ok else
                f"{len(self.findings)} finding(s) ({', '.join(self._kinds())})")
        return (f"audit: {head}; checked {c['crl_listings']} revoked certificate listing(s) "
                f"in {c['scopes']} CRL scope(s) ({c['crls']} CRL(s) parsed), "
                f"{c['responses']} OCSP response(s), {c['certificates']} certificate row(s); "
                f"pending within the {self.grace:g} s grace period: {p['crl']} CRL listing(s), "
                f"{p['ocsp']} OCSP response(s)")

    def _kinds(self) -> list[str]:
        counts: dict[str, int] = {}
        for finding in self.findings:
            counts[finding.kind] = counts.get(finding.kind, 0) + 1
        return [f"{kind} {n}" for kind, n in sorted(counts.items())]


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "before change stamps existed"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(seconds: int | None) -> str:
    return "an unrepresentable time" if seconds is None else _when(
        datetime.fromtimestamp(seconds, UTC))


def _reason_name(code: int | None) -> str:
    if code is None:
        return "no reason"
    try:
        return Reason(code).name
    except ValueError:
        return f"reason code {code}"


@dataclass(slots=True)
class _Context:
    conn: asyncpg.Connection
    now: datetime
    cutoff: datetime
    worker_threshold: float
    issuers: list[Issuer]
    report: AuditReport

    def add(self, kind: str, detail: str, issuer: str = "", serial: bytes | None = None,
            subject: str = "") -> None:
        self.report.findings.append(Finding(
            kind, detail, issuer, serial_hex(serial) if serial is not None else "", subject))

    def age(self, moment: datetime | None) -> str:
        if moment is None:
            return "long ago"
        return f"{(self.now - moment).total_seconds():.0f} s ago"


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
    steps: dict[str, Callable[[_Context], Coroutine[Any, Any, None]]] = {
        "crl": _check_crls, "ocsp": _check_ocsp, "quarantine": _check_quarantine,
        "plausibility": _check_plausibility, "workers": _check_workers}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        ctx = _Context(conn, now, now - timedelta(seconds=grace), worker_threshold,
                       await list_issuers(conn), report)
        for name in CHECKS:
            if name in checks:
                await steps[name](ctx)
    report.findings.sort(key=Finding.sort_key)
    return report


# ---------------------------------------------------------------- CRLs


@dataclass(slots=True)
class CrlSerials:
    """The serials a CRL lists: `listed` (revoked), `removed` (removeFromCRL, deltas only)."""

    listed: set[int]
    removed: set[int]


def read_crl(der: bytes, ca_key: CertificateIssuerPublicKeyTypes, *,
             delta: bool) -> CrlSerials:
    """Parse a stored CRL and verify its signature; ValueError says what is wrong.

    Reasons are read only for deltas (removeFromCRL); a full CRL of a million entries costs one
    pass over the serials.
    """
    try:
        crl = x509.load_der_x509_crl(der)
        if not crl.is_signature_valid(ca_key):
            raise ValueError("its signature does not verify with the CA certificate's key")
        if not delta:
            return CrlSerials({entry.serial_number for entry in crl}, set())
        listed: set[int] = set()
        removed: set[int] = set()
        for entry in crl:
            try:
                reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
            except x509.ExtensionNotFound:
                reason = None
            (removed if reason is x509.ReasonFlags.remove_from_crl else listed).add(
                entry.serial_number)
        return CrlSerials(listed, removed)
    except (ValueError, TypeError) as exc:  # cryptography parses lazily: entries fail here
        raise ValueError(str(exc) or type(exc).__name__) from None


@dataclass(slots=True)
class _Crl:
    label: str  # "full CRL acme/2.crl number 17"
    max_change_seq: int
    serials: CrlSerials


class _ScopeCheck:
    """One scope of one issuer: its latest full CRL, the delta built after it, its certificates."""

    def __init__(self, ctx: _Context, issuer: Issuer, ca_key: CertificateIssuerPublicKeyTypes,
                 row: asyncpg.Record) -> None:
        self.ctx = ctx
        self.issuer = issuer
        self.ca_key = ca_key
        self.row = row
        self.shard: int = row["shard"]
        self.full: _Crl | None = None
        self.delta: _Crl | None = None
        self.full_name = crl_name(issuer.name, self.shard, "full")
        self.missing_label = f"any full CRL ({self.full_name} was never published)"

    async def _load(self, crl_id: int, kind: str, number: int, max_change_seq: int) -> _Crl | None:
        label = f"{kind} CRL {crl_name(self.issuer.name, self.shard, kind)} number {number}"
        der = await self.ctx.conn.fetchval(queries()["audit_crl_der"], crl_id)
        self.ctx.report.checked["crls"] += 1
        try:
            serials = read_crl(der, self.ca_key, delta=kind == "delta")
        except ValueError as exc:
            self.ctx.add("crl-invalid", f"{label}: {exc}", self.issuer.name)
            return None
        return _Crl(label, max_change_seq, serials)

    async def run(self) -> None:
        ctx, row = self.ctx, self.row
        ctx.report.checked["scopes"] += 1
        if row["full_id"] is not None:
            number = int(row["full_number"])
            if row["full_next_update"] < ctx.now:
                ctx.add("crl-expired", f"full CRL {self.full_name} number {number} is past its "
                        f"nextUpdate {_when(row['full_next_update'])}", self.issuer.name)
            self.full = await self._load(row["full_id"], "full", number,
                                         row["full_max_change_seq"])
            if self.full is None:
                self.missing_label = f"any valid full CRL ({self.full_name} number {number} " \
                                     "is invalid)"
        if row["delta_id"] is not None and row["full_id"] is not None:
            number = int(row["delta_number"])
            if number >= int(row["full_number"]) and row["delta_next_update"] < ctx.now:
                name = crl_name(self.issuer.name, self.shard, "delta")
                ctx.add("crl-expired", f"delta CRL {name} number {number} is past its "
                        f"nextUpdate {_when(row['delta_next_update'])}", self.issuer.name)
            if self.full is not None and row["delta_max_change_seq"] > self.full.max_change_seq:
                self.delta = await self._load(row["delta_id"], "delta", number,
                                              row["delta_max_change_seq"])
        await self._revoked()
        if self.full is not None and self.full.serials.listed:
            await self._not_revoked(self.full)

    async def _revoked(self) -> None:
        """Each revoked certificate of the scope against the full CRL, then the delta."""
        ctx, q = self.ctx, queries()
        previous = self.row["previous_this_update"]
        latest = self.row["full_this_update"] if self.full is not None else None
        if self.shard == UNSHARDED:
            cursor = ctx.conn.cursor(q["audit_scope_revoked_issuer"], self.issuer.id, previous,
                                     latest, ctx.cutoff, prefetch=_PREFETCH)
        else:
            cursor = ctx.conn.cursor(q["audit_scope_revoked_shard"], self.issuer.id, previous,
                                     latest, ctx.cutoff, self.shard, prefetch=_PREFETCH)
        full, delta = self.full, self.delta
        full_listed = full.serials.listed if full is not None else set()
        async for cert in cursor:
            number = int.from_bytes(cert["serial"], "big", signed=True)
            listed = number in full_listed
            if listed:
                full_listed.discard(number)  # what is left is listed but not revoked here
            if not cert["own"] and self.row["full_id"] is None:
                continue  # a shard's certificate, and no issuer-wide CRL exists to list it
            ctx.report.checked["crl_listings"] += 1
            problem = self._judge_revoked(cert, number, listed, full, delta)
            if problem == "pending":
                ctx.report.pending["crl"] += 1
            elif problem:
                ctx.add("crl-missing", f"revoked {_epoch(cert['revoked_epoch'])} "
                        f"({_reason_name(cert['reason'])}, change {cert['change_seq']} at "
                        f"{_when(cert['changed_at'])}), {problem}", self.issuer.name,
                        cert["serial"])

    def _judge_revoked(self, cert: asyncpg.Record, number: int, listed: bool,
                       full: _Crl | None, delta: _Crl | None) -> str | None:
        """None: fine; "pending": within grace; else why the certificate is on no CRL."""
        seq: int = cert["change_seq"]
        if delta is not None and seq <= delta.max_change_seq and number in delta.serials.removed:
            self.ctx.add("crl-removed", f"{delta.label} (changes up to {delta.max_change_seq}) "
                         f"says removeFromCRL, yet the certificate is revoked since change {seq}",
                         self.issuer.name, cert["serial"])
            return None
        if listed:
            return None
        if full is not None and seq <= full.max_change_seq:
            return (f"not on {full.label}, which reflects changes up to {full.max_change_seq}"
                    if cert["on_full"] else None)
        if full is not None and not cert["on_next"]:
            return None  # expired before the latest full CRL: the next one drops it anyway
        if delta is not None and seq <= delta.max_change_seq:
            return None if number in delta.serials.listed else (
                f"not on {delta.label}, which reflects changes up to {delta.max_change_seq}")
        if not cert["settled"]:
            return "pending"
        where = full.label if full is not None else self.missing_label
        return f"not on {where} nor on a delta CRL built after the change"

    async def _not_revoked(self, full: _Crl) -> None:
        """Serials the full CRL lists that are not revoked in this scope."""
        ctx = self.ctx
        leftover = sorted(full.serials.listed)
        for start in range(0, len(leftover), _LOOKUP_BATCH):
            batch = {integer_content(n): n for n in leftover[start:start + _LOOKUP_BATCH]}
            rows = await ctx.conn.fetch(queries()["audit_certificates_by_serial"],
                                        self.issuer.id, list(batch), ctx.cutoff)
            for cert in rows:
                number = batch.pop(bytes(cert["serial"]))
                if cert["status"] == "revoked":
                    continue  # revoked, listed in another shard's scope as well: harmless
                self._judge_good(cert, number, full)
            for serial in batch:
                ctx.add("crl-unknown", f"{full.label} lists a serial this issuer never "
                        "recorded", self.issuer.name, serial)

    def _judge_good(self, cert: asyncpg.Record, number: int, full: _Crl) -> None:
        seq: int = cert["change_seq"]
        what = (f"good since change {seq} at {_when(cert['changed_at'])}"
                + (" (hold released)" if cert["hold_released"] else ""))
        delta = self.delta
        if delta is not None and seq <= delta.max_change_seq:
            if number in delta.serials.removed:
                return
            problem = f"on {full.label}, and {delta.label}, built after the change, does not " \
                      "say removeFromCRL"
        elif seq <= full.max_change_seq:
            problem = f"yet {full.label}, built after the change, lists it"
        elif not cert["settled"]:
            self.ctx.report.pending["crl"] += 1
            return
        else:
            problem = f"still on {full.label} and no delta CRL removes it"
        self.ctx.add("crl-good-listed", f"{what}, {problem}", self.issuer.name, cert["serial"])


async def _check_crls(ctx: _Context) -> None:
    for issuer in ctx.issuers:
        if issuer.key_path is None:
            ctx.report.notes.append(f"issuer {issuer.name}: no CA key registered, its CRLs are "
                                    "signed elsewhere; CRL checks skipped")
            continue
        ca_key: CertificateIssuerPublicKeyTypes = x509.load_der_x509_certificate(
            issuer.cert_der).public_key()  # type: ignore[assignment]
        for row in await ctx.conn.fetch(queries()["audit_crl_scopes"], issuer.id):
            await _ScopeCheck(ctx, issuer, ca_key, row).run()


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
                             f"({_reason_name(reason)}) since {_epoch(revoked_epoch)}")
    wrong: list[str] = []
    got_time = int(response.revocation_time_utc.timestamp())  # type: ignore[union-attr]
    if revoked_epoch is not None and got_time != revoked_epoch:
        wrong.append(f"revocationTime {_epoch(got_time)}, recorded {_epoch(revoked_epoch)}")
    got_reason = response.revocation_reason
    # unspecified (0) is expressed by omission (OCSP-RESP-12); either form is right.
    got_code = None
    if got_reason is not None and got_reason is not x509.ReasonFlags.unspecified:
        got_code = Reason[got_reason.value].value
    want_code = None if reason in (None, Reason.unspecified) else reason
    if got_code != want_code:
        wrong.append(f"reason {_reason_name(got_code)}, recorded {_reason_name(reason)}")
    return ("ocsp-mismatch", "; ".join(wrong)) if wrong else None


async def _check_ocsp(ctx: _Context) -> None:
    q = queries()
    names = {issuer.id: issuer.name for issuer in ctx.issuers}
    # (kind, issuer id, serial) -> detail and the CertID hashes of the responses that show it.
    grouped: dict[tuple[str, int, bytes], tuple[str, list[str]]] = {}
    async for row in ctx.conn.cursor(q["audit_ocsp_responses"], ctx.cutoff, prefetch=_PREFETCH):
        ctx.report.checked["responses"] += 1
        serial: bytes = row["serial"]
        if row["cert_change_seq"] < row["change_seq"]:
            if not row["settled"]:
                ctx.report.pending["ocsp"] += 1
                continue
            problem: tuple[str, str] | None = (
                "ocsp-stale", f"signed from change {row['cert_change_seq']}; the certificate "
                f"changed ({row['status']}) at change {row['change_seq']}, "
                f"{_when(row['changed_at'])} ({ctx.age(row['changed_at'])})")
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
                                     prefetch=_PREFETCH):
        if not row["settled"]:
            ctx.report.pending["ocsp"] += 1
            continue
        ctx.add("ocsp-missing", f"revoked (change at {_when(row['changed_at'])}), but no "
                "pre-signed response exists", names.get(row["issuer_id"], "?"), row["serial"])


# ---------------------------------------------------------------- rows


async def _check_quarantine(ctx: _Context) -> None:
    for row in await ctx.conn.fetch(queries()["quarantine_all"]):
        ctx.add("quarantined", f"the {row['kind']} worker skips it since "
                f"{_when(row['first_seen'])} (change {row['change_seq']}): {row['error']}",
                row["issuer"], row["serial"])


async def _check_plausibility(ctx: _Context) -> None:
    names = {issuer.id: issuer.name for issuer in ctx.issuers}
    rows = 0
    async for row in ctx.conn.cursor(queries()["audit_implausible"], prefetch=_PREFETCH):
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


async def _check_workers(ctx: _Context) -> None:
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
            ctx.add("worker-dead", f"no {noun} alive since {_when(last['beat_at'])} "
                    f"({ctx.age(last['beat_at'])}; {how}: {last['host']} pid {last['pid']}; "
                    f"threshold {ctx.worker_threshold:g} s)", subject=f"{kind} workers")
            continue
        running = [row for row in mine if row["stopped_at"] is None and row["beat_at"] > horizon]
        failing = [row for row in running if _failing_since(row, horizon)]
        if failing and len(failing) == len(running):
            row = max(failing, key=lambda r: r["last_error_at"])
            ctx.add("worker-failing", f"every running {noun} has failed since its last success "
                    f"for over {ctx.worker_threshold:g} s; {row['host']} pid {row['pid']}: last "
                    f"ok {_when(row['last_ok']) if row['last_ok'] else 'never'}, error at "
                    f"{_when(row['last_error_at'])}: {row['last_error']}",
                    subject=f"{kind} workers")


def _failing_since(row: asyncpg.Record, horizon: datetime) -> bool:
    """The worker's latest event is an error and its last success is older than the horizon."""
    error_at, ok_at = row["last_error_at"], row["last_ok"]
    if error_at is None or (ok_at is not None and ok_at >= error_at):
        return False
    return bool((ok_at or row["started_at"]) < horizon)


__all__ = ["CHECKS", "DEFAULT_GRACE", "DEFAULT_WORKER_THRESHOLD", "AuditReport", "CrlSerials",
           "Finding", "audit", "read_crl", "response_problem"]
