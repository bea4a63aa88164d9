"""What `revoc audit` reports: findings, notes and counts (revoc/audit.py), and the context the
checks share (revoc/audit.py for OCSP, rows and workers; revoc/audit_crl.py for CRLs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from revoc.admin import serial_hex
from revoc.model import Issuer, Reason

DEFAULT_GRACE = 120.0  # seconds a change may take to reach OCSP and the CRLs
PREFETCH = 5_000  # rows per cursor round trip


@dataclass(frozen=True, slots=True)
class Finding:
    """One broken invariant: `kind` is a stable word (revoc/audit.py lists them), then who and
    what."""

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


def format_time(moment: datetime | None) -> str:
    if moment is None:
        return "before change stamps existed"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_epoch(seconds: int | None) -> str:
    return "an unrepresentable time" if seconds is None else format_time(
        datetime.fromtimestamp(seconds, UTC))


def reason_name(code: int | None) -> str:
    if code is None:
        return "unspecified"  # no reasonCode: what unspecified looks like in DER (CRL-10)
    try:
        return Reason(code).name
    except ValueError:
        return f"reason code {code}"


@dataclass(slots=True)
class AuditContext:
    """What every check needs: the snapshot's connection, the clock and the report."""

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
