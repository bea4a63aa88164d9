"""The CRL checks of `revoc audit` (kinds crl-*; see revoc/audit.py): every revoked certificate
against the stored bytes of the latest full CRL of its scope and of the delta built after it:
listed, with the recorded revocation date and reason (OCSP-RESP-12: CRLs and OCSP agree).

Scopes. A certificate's scope is its shard, or -1 (the issuer-wide CRL) when it has none; while
an issuer-wide CRL exists, it must list every revoked certificate of the issuer as well.

Retention (crl_publisher/publisher.py, "Expiry"): the latest full CRL must list a revoked
certificate whose notAfter is later than the thisUpdate of the scope's previous full CRL (all of
them when there is none); a change newer than the latest full CRL is expected on a delta when its
notAfter is later than the latest full CRL's thisUpdate.

Memory: one scope's CRL entries at a time (a dict of two small ints a serial, about 170 bytes),
the certificates through a cursor.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

from revoc.audit_report import (
    PREFETCH,
    AuditContext,
    format_epoch,
    format_time,
    reason_name,
)
from revoc.crl_paths import UNSHARDED, crl_name
from revoc.crl_signature import crl_signature_valid
from revoc.der.asn1 import integer_content
from revoc.model import Issuer, Reason
from revoc.queries import queries

_LOOKUP_BATCH = 5_000  # serials per lookup of CRL entries that are not revoked in their scope
_PENDING = ("pending", "")


@dataclass(slots=True)
class CrlSerials:
    """What a CRL lists. `listed`: serial -> revocationDate (epoch seconds) * 16 + reason code
    (0: none or unspecified, expressed by omission, CRL-10), one small int a serial to keep a
    million entries affordable; `removed`: removeFromCRL entries (deltas only)."""

    listed: dict[int, int]
    removed: set[int]


def pack_entry(revoked_epoch: int, reason: int | None) -> int:
    return revoked_epoch * 16 + (reason or 0)


def unpack_entry(value: int) -> tuple[int, int]:
    """(revocationDate as epoch seconds, reason code; 0 for none or unspecified)."""
    return value >> 4, value & 15


def read_crl(der: bytes, ca_key: CertificateIssuerPublicKeyTypes) -> CrlSerials:
    """Parse a stored CRL and verify its signature; ValueError says what is wrong."""
    try:
        crl = x509.load_der_x509_crl(der)
        if not crl_signature_valid(crl, der, ca_key):
            raise ValueError("its signature does not verify with the CA certificate's key")
        listed: dict[int, int] = {}
        removed: set[int] = set()
        for entry in crl:
            try:
                reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
            except x509.ExtensionNotFound:
                reason = None
            if reason is x509.ReasonFlags.remove_from_crl:
                removed.add(entry.serial_number)
                continue
            code = Reason[reason.value].value if reason is not None else None
            listed[entry.serial_number] = pack_entry(
                int(entry.revocation_date_utc.timestamp()), code)
        return CrlSerials(listed, removed)
    except (ValueError, TypeError, KeyError) as exc:  # cryptography parses lazily: entries fail
        raise ValueError(str(exc) or type(exc).__name__) from None


def entry_problem(packed: int, revoked_epoch: int | None, reason: int | None) -> str | None:
    """What a CRL entry says differently from the database (OCSP-RESP-12: OCSP and CRLs agree,
    both say what the database says), or None."""
    got_epoch, got_reason = unpack_entry(packed)
    wrong = []
    if revoked_epoch is not None and got_epoch != revoked_epoch:
        wrong.append(f"revocationDate {format_epoch(got_epoch)}, recorded "
                     f"{format_epoch(revoked_epoch)}")
    if got_reason != (reason or 0):
        wrong.append(f"reason {reason_name(got_reason or None)}, recorded {reason_name(reason)}")
    return "; ".join(wrong) or None


@dataclass(slots=True)
class _Crl:
    label: str  # "full CRL acme/2.crl number 17"
    max_change_seq: int
    serials: CrlSerials


class _ScopeCheck:
    """One scope of one issuer: its latest full CRL, the delta built after it, its certificates."""

    def __init__(self, ctx: AuditContext, issuer: Issuer, ca_key: CertificateIssuerPublicKeyTypes,
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
            serials = read_crl(der, self.ca_key)
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
                        f"nextUpdate {format_time(row['full_next_update'])}", self.issuer.name)
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
                        f"nextUpdate {format_time(row['delta_next_update'])}", self.issuer.name)
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
                                     latest, ctx.cutoff, prefetch=PREFETCH)
        else:
            cursor = ctx.conn.cursor(q["audit_scope_revoked_shard"], self.issuer.id, previous,
                                     latest, ctx.cutoff, self.shard, prefetch=PREFETCH)
        full, delta = self.full, self.delta
        full_listed = full.serials.listed if full is not None else {}
        async for cert in cursor:
            number = int.from_bytes(cert["serial"], "big", signed=True)
            entry = full_listed.pop(number, None)  # what is left is listed but not revoked here
            if not cert["own"] and self.row["full_id"] is None:
                continue  # a shard's certificate, and no issuer-wide CRL exists to list it
            ctx.report.checked["crl_listings"] += 1
            verdict = self._judge_revoked(cert, number, entry, full, delta)
            if verdict is _PENDING:
                ctx.report.pending["crl"] += 1
            elif verdict is not None:
                ctx.add(verdict[0], f"revoked {format_epoch(cert['revoked_epoch'])} "
                        f"({reason_name(cert['reason'])}, change {cert['change_seq']} at "
                        f"{format_time(cert['changed_at'])}), {verdict[1]}", self.issuer.name,
                        cert["serial"])

    def _judge_revoked(self, cert: asyncpg.Record, number: int, entry: int | None,
                       full: _Crl | None, delta: _Crl | None) -> tuple[str, str] | None:
        """None: fine; _PENDING: not reflected yet, within grace; else (kind, what is wrong).

        `entry`: the full CRL's entry for the serial (packed, see CrlSerials), if it lists it.
        The CRL that reflects the certificate's last change (max_change_seq) must list it with
        the recorded date and reason; a change no CRL reflects yet is pending within grace.
        """
        seq: int = cert["change_seq"]
        epoch, reason = cert["revoked_epoch"], cert["reason"]
        if delta is not None and seq <= delta.max_change_seq and number in delta.serials.removed:
            return "crl-removed", (f"{delta.label} (changes up to {delta.max_change_seq}) says "
                                   "removeFromCRL")
        if full is not None and seq <= full.max_change_seq:
            if entry is not None:
                wrong = entry_problem(entry, epoch, reason)
                return ("crl-mismatch", f"{full.label} says {wrong}") if wrong else None
            return ("crl-missing", f"not on {full.label}, which reflects changes up to "
                    f"{full.max_change_seq}") if cert["on_full"] else None
        if full is not None and not cert["on_next"]:
            return None  # expired before the latest full CRL: the next one drops it anyway
        if delta is not None and seq <= delta.max_change_seq:
            got = delta.serials.listed.get(number)
            if got is None:
                return "crl-missing", (f"not on {delta.label}, which reflects changes up to "
                                       f"{delta.max_change_seq}")
            wrong = entry_problem(got, epoch, reason)
            return ("crl-mismatch", f"{delta.label} says {wrong}") if wrong else None
        # No CRL reflects the change yet.
        wrong = entry_problem(entry, epoch, reason) if entry is not None else None
        if entry is not None and wrong is None:
            return None  # the full CRL already says what the database says
        if not cert["settled"]:
            return _PENDING
        if full is not None and wrong is not None:
            return "crl-mismatch", (f"{full.label} still says {wrong}, and no delta CRL was "
                                    "built after the change")
        where = full.label if full is not None else self.missing_label
        return "crl-missing", f"not on {where} nor on a delta CRL built after the change"

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
        what = (f"good since change {seq} at {format_time(cert['changed_at'])}"
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


async def check_crls(ctx: AuditContext) -> None:
    for issuer in ctx.issuers:
        if issuer.key_path is None:
            ctx.report.notes.append(f"issuer {issuer.name}: no CA key registered, its CRLs are "
                                    "signed elsewhere; CRL checks skipped")
            continue
        ca_key: CertificateIssuerPublicKeyTypes = x509.load_der_x509_certificate(
            issuer.cert_der).public_key()  # type: ignore[assignment]
        for row in await ctx.conn.fetch(queries()["audit_crl_scopes"], issuer.id):
            await _ScopeCheck(ctx, issuer, ca_key, row).run()
