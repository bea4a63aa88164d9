"""A light self-check after every round: are the latest status changes on the CRLs that say so?

The publisher's own audit, independent of how CRLs are built (`revoc audit` is the full one).
For each issuer with a CA key it takes the most recent status changes (SAMPLE of them: the ones
most at risk) and checks each against its scope's latest CRLs, parsed with cryptography:

- a change at or below the latest full CRL's `max_change_seq` must be on that full CRL (a
  revocation, with the recorded reason and date) or absent from it (a released hold);
- a newer change at or below the latest delta's `max_change_seq` must be on that delta (a
  released hold as removeFromCRL);
- a change newer than both is not reflected yet: that is what the heartbeat's
  `oldest_unreflected_crl_seconds` measures, not a finding.

A CRL is parsed once per publication (cached per scope) and only up to MAX_CRL_BYTES, so the
check stays light next to the round. Each finding is logged once, as an error, and counted in
the heartbeat (`crl_selfcheck_findings`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import asyncpg
from cryptography import x509

from revoc.admin import list_issuers
from revoc.crl_paths import UNSHARDED, crl_name
from revoc.model import Issuer, Reason
from revoc.queries import queries

log = logging.getLogger("revoc.publish")

SAMPLE = 20
MAX_CRL_BYTES = 16 * 1024 * 1024


def _entry_reason(entry: x509.RevokedCertificate) -> Reason | None:
    try:
        flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None
    return Reason[flag.value]


class CrlSelfCheck:
    """Keeps the parsed latest CRLs between rounds and the findings already logged."""

    def __init__(self) -> None:
        self._parsed: dict[int, x509.CertificateRevocationList] = {}  # by crls.id
        self._reported: set[str] = set()

    async def run(self, conn: asyncpg.Connection) -> list[str]:
        """The findings, one line each (every one, not only the new ones)."""
        findings: list[str] = []
        kept: dict[int, x509.CertificateRevocationList] = {}
        q = queries()
        for issuer in await list_issuers(conn):
            if issuer.key_path is None:
                continue
            latest: dict[int, dict[str, asyncpg.Record]] = {}
            for row in await conn.fetch(q["crl_selfcheck_recent"], issuer.id, SAMPLE):
                shard = row["shard"] if row["shard"] is not None else UNSHARDED
                if shard not in latest:
                    latest[shard] = {r["kind"]: r for r in await conn.fetch(
                        q["crl_selfcheck_latest"], issuer.id, shard)}
                text = await self._check(conn, issuer, shard, latest[shard], row, kept)
                if text is not None:
                    findings.append(text)
        self._parsed = kept
        for text in findings:
            if text not in self._reported:
                log.error("CRL self-check: %s", text)
        self._reported = set(findings)
        return findings

    async def _crl(self, conn: asyncpg.Connection, stored: asyncpg.Record,
                   kept: dict[int, x509.CertificateRevocationList]
                   ) -> x509.CertificateRevocationList | None:
        crl_id = stored["id"]
        crl = kept.get(crl_id) or self._parsed.get(crl_id)
        if crl is None:
            if stored["size"] > MAX_CRL_BYTES:
                return None
            der = await conn.fetchval(queries()["crl_der_by_id"], crl_id)
            crl = x509.load_der_x509_crl(bytes(der))
        kept[crl_id] = crl
        return crl

    async def _check(self, conn: asyncpg.Connection, issuer: Issuer, shard: int,
                     latest: dict[str, asyncpg.Record], row: asyncpg.Record,
                     kept: dict[int, x509.CertificateRevocationList]) -> str | None:
        full, delta = latest.get("full"), latest.get("delta")
        if full is None:
            return None
        seq = row["change_seq"]
        if seq <= full["max_change_seq"]:
            target = full
        elif (delta is not None and delta["base_number"] == full["number"]
              and seq <= delta["max_change_seq"]):
            target = delta
        else:
            return None  # not reflected yet: the unreflected-age gauge's business
        crl = await self._crl(conn, target, kept)
        if crl is None:
            return None
        serial = int.from_bytes(bytes(row["serial"]), "big", signed=True)
        entry = crl.get_revoked_certificate_by_serial_number(serial)
        where = (f"{crl_name(issuer.name, shard, target['kind'])} number {target['number']}")
        who = f"issuer {issuer.name} serial {bytes(row['serial']).hex().upper()}"
        if row["status"] == "revoked":
            if entry is None:
                return f"{who} is revoked (change {seq}) but not on {where}"
            want = Reason(row["reason"]) if row["reason"] is not None else None
            if want is Reason.unspecified:
                want = None
            got = _entry_reason(entry)
            if got != want:
                return (f"{who}: {where} says reason {got.name if got else 'none'}, the "
                        f"database {want.name if want else 'none'}")
            if row["revoked_epoch"] is not None:
                recorded = datetime.fromtimestamp(row["revoked_epoch"], UTC)
                if entry.revocation_date_utc != recorded:
                    return (f"{who}: {where} says revoked at "
                            f"{entry.revocation_date_utc.isoformat()}, the database "
                            f"{recorded.isoformat()}")
            return None
        if target is full:
            return (f"{who} was released from hold (change {seq}) but is still on {where}"
                    if entry is not None else None)
        if entry is None or _entry_reason(entry) is not Reason.removeFromCRL:
            return f"{who} was released from hold (change {seq}) but {where} has no removeFromCRL"
        return None
