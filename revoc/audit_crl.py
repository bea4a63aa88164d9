"""The CRL checks of `revoc audit` (kinds crl-*; see revoc/audit.py): every revoked certificate
against the stored bytes of the latest full CRL of its scope and of the delta built after it.

Scopes. A certificate's scope is its shard, or -1 (the issuer-wide CRL) when it has none; while
an issuer-wide CRL exists, it must list every revoked certificate of the issuer as well.

Retention (crl_publisher/publisher.py, "Expiry"): the latest full CRL must list a revoked
certificate whose notAfter is later than the thisUpdate of the scope's previous full CRL (all of
them when there is none); a change newer than the latest full CRL is expected on a delta when its
notAfter is later than the latest full CRL's thisUpdate.

Memory: one scope's CRL serials at a time (a set of ints), the certificates through a cursor.
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
from revoc.der.asn1 import integer_content
from revoc.model import Issuer
from revoc.queries import queries

_LOOKUP_BATCH = 5_000  # serials per lookup of CRL entries that are not revoked in their scope


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
                ctx.add("crl-missing", f"revoked {format_epoch(cert['revoked_epoch'])} "
                        f"({reason_name(cert['reason'])}, change {cert['change_seq']} at "
                        f"{format_time(cert['changed_at'])}), {problem}", self.issuer.name,
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
