"""`revoc demo`: a demo PKI imported into the database, with the commands that check it."""

from __future__ import annotations

import contextlib

import asyncpg
from cryptography import x509

from revoc import admin, db
from revoc.demo_pki import ISSUER_NAME, REVOKED, DemoPki, create_demo_pki
from revoc.der.asn1 import integer_content
from revoc.model import Reason
from revoc.queries import queries
from revoc.settings import Settings


async def import_demo(conn: asyncpg.Connection, settings: Settings) -> DemoPki:
    """Create (or reuse) the demo PKI under --home and bring the database in line with it."""
    pki = create_demo_pki(settings.home.resolve() / "demo", settings.public_url)
    await db.upgrade(conn)
    known = {issuer.name for issuer in await admin.list_issuers(conn)}
    if ISSUER_NAME not in known:
        await admin.add_issuer(conn, admin.IssuerRequest(
            name=ISSUER_NAME, cert_path=str(pki.ca), key_path=str(pki.ca_key),
            ocsp_cert_path=str(pki.ocsp), ocsp_key_path=str(pki.ocsp_key)))
    await admin.add_certificates(conn, ISSUER_NAME, [str(p) for p in pki.leaves])
    for index, reason in REVOKED.items():
        serial = x509.load_pem_x509_certificate(pki.leaf(index).read_bytes()).serial_number
        with contextlib.suppress(admin.AdminError):  # revoked by an earlier run of the demo
            await admin.revoke(conn, admin.RevokeRequest(ISSUER_NAME, serial,
                                                         Reason.from_name(reason)))
    return pki


async def leaf_statuses(conn: asyncpg.Connection, pki: DemoPki) -> dict[int, str]:
    """Each leaf's status as the database has it now: an earlier run, or an operator in another
    shell, may have revoked or released any of them since the PKI was made."""
    issuer = await admin.get_issuer(conn, ISSUER_NAME)
    statuses: dict[int, str] = {}
    async with conn.transaction():  # cert_for_update: the row as the revoking commands see it
        for index, path in enumerate(pki.leaves, 1):
            serial = x509.load_pem_x509_certificate(path.read_bytes()).serial_number
            row = await conn.fetchrow(queries()["cert_for_update"], issuer.id,
                                      integer_content(serial))
            if row is None:
                statuses[index] = "not in the database"
            elif row["status"] == "revoked":
                statuses[index] = f"revoked ({Reason(row['reason']).name})"
            else:
                statuses[index] = str(row["status"])
    return statuses


def describe(pki: DemoPki, statuses: dict[int, str]) -> str:
    """What the demo made, with each leaf's status now, for a newcomer."""
    lines = [
        f"demo PKI in {pki.directory}:",
        f"  root CA            {pki.root}",
        f"  issuing CA         {pki.ca}  (issuer name {ISSUER_NAME!r})",
        f"  OCSP responder     {pki.ocsp}  (delegated, signs OCSP for {ISSUER_NAME})",
    ]
    for index, path in enumerate(pki.leaves, 1):
        lines.append(f"  leaf {index}             {path}  {statuses.get(index, 'unknown')}")
    return "\n".join(lines)


def check_commands(pki: DemoPki, settings: Settings, statuses: dict[int, str]) -> str:
    """The commands a newcomer pastes to see a good and a revoked answer from the running demo.

    The leaves are picked by their status now, and the CRL check takes the delta CRL too
    (-use_deltas), so a revocation made while the demo runs shows there within seconds.
    """
    good = next((i for i, s in sorted(statuses.items()) if s == "good"), 1)
    revoked = next((i for i, s in sorted(statuses.items()) if s.startswith("revoked")),
                   min(REVOKED))
    ocsp = (f"openssl ocsp -issuer {pki.ca} -CAfile {pki.chain} -url {settings.public_url}/ocsp "
            "-no_nonce -resp_text -cert")
    crl = settings.crl_out.resolve() / f"{ISSUER_NAME}.crl"
    verify = f"openssl verify -crl_check -CAfile {pki.chain} -CRLfile {crl}"
    if settings.crl_delta_interval:
        delta = settings.crl_out.resolve() / f"{ISSUER_NAME}-delta.crl"
        verify += f" -use_deltas -CRLfile {delta}"

    def outcome(index: int, good_text: str, revoked_text: str) -> str:
        status = statuses.get(index, "unknown")
        return good_text if status == "good" else revoked_text if status.startswith(
            "revoked") else status

    return "\n".join([
        "check it (OCSP; pre-signed answers carry no nonce, hence -no_nonce):",
        f"  {ocsp} {pki.leaf(good)}        # {outcome(good, 'good', 'revoked')}",
        f"  {ocsp} {pki.leaf(revoked)}     # {outcome(revoked, 'good', 'revoked')}",
        "check it (CRL, full and delta):",
        f"  {verify} {pki.leaf(good)}      # "
        f"{outcome(good, 'OK', 'error 23: certificate revoked')}",
        f"  {verify} {pki.leaf(revoked)}   # "
        f"{outcome(revoked, 'OK', 'error 23: certificate revoked')}",
        f"  curl -sI {settings.public_url}/crl/{ISSUER_NAME}.crl",
    ])
