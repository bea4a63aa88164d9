"""Issuer and certificate operations shared by the CLI and (later) the admin API.

Each operation is one transaction on an asyncpg connection. Every change to a certificate row
takes a new `change_seq` (the 0004 triggers stamp it and queue it in `ocsp_pending` in the same
transaction) and sends NOTIFY `cert_changed` (revoc/notify.py) so the presigner and the
publisher react at once.

Two kinds of error, which the CLI maps to exit statuses (INTERFACE.md):
`InputError`, a malformed value (bad serial, a date out of range, an unreadable file): exit 2;
`AdminError`, a well-formed request refused or failed (already revoked, no such issuer, not
issued by this CA, a CA registered twice): exit 1. Either is raised before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from revoc.audit_trail import Actor, certificate_state, record
from revoc.clock import Clock, SystemClock, utc_seconds
from revoc.crl_paths import crl_url
from revoc.der.asn1 import integer_content
from revoc.der.crl import encode_crl_entry
from revoc.model import BR_ALLOWED_REASONS, HashAlgorithm, Issuer, Profile, Reason
from revoc.notify import encode_serial_change
from revoc.queries import queries
from revoc.signing import (
    SigningError,
    is_pkcs11_uri,
    open_signer,
    public_key_matches,
    subject_public_key_bits,
)

_ISSUER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHARD_TAIL = re.compile(r"/(?P<issuer>[^/]+)/(?P<shard>0|[1-9][0-9]*)\.crl$")
_HEX = re.compile(r"[0-9a-f]+")
MAX_SHARDS = 10000  # issuers.crl_shards CHECK

# Dates a revocation may carry (point 2 of issue 10; the 0004 CHECK backs it): from 1950, where
# UTCTime starts, to now plus a little clock skew between the CA and this service.
EARLIEST_DATE = datetime(1950, 1, 1, tzinfo=UTC)
FUTURE_SKEW = timedelta(minutes=5)


class AdminError(Exception):
    """A well-formed request that is refused or failed (already revoked, no such issuer, not
    issued by this CA, a CA registered twice): exit 1 (admin API: 409).

    `item`: in a batch, the index of the request at fault (admin API error field)."""

    item: int | None = None


class NotFound(AdminError):
    """The issuer or certificate named does not exist: exit 1 (admin API: 404)."""


class InputError(AdminError):
    """A malformed value (bad serial, date out of range, unreadable or malformed file): exit 2
    (admin API: 422 naming `field`, the request field at fault, when known)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# ---------------------------------------------------------------- issuers


def load_certificate(path: Path | str) -> x509.Certificate:
    """Read one PEM or DER certificate, with a clear error for anything else."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise InputError(f"{path} is not a PEM or DER X.509 certificate") from None


def load_certificates(path: Path | str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (or the one DER certificate) in a file."""
    data = Path(path).read_bytes() if Path(path).exists() else b""
    if not data:
        raise InputError(f"cannot read {path}: no such file or empty")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise InputError(f"{path} is not a PEM or DER X.509 certificate") from None


def _is_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """True when `ca`'s name and key issued `cert` (signature checked, not just names).

    cryptography's check covers every algorithm revoc signs with (RSA PKCS#1 v1.5 and PSS,
    ECDSA, EdDSA, ML-DSA); a key type it does not know is "not issued by".
    """
    if cert.issuer.public_bytes() != ca.subject.public_bytes():
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _key_id(cert: x509.Certificate) -> bytes:
    """The CA's SKI, which CRLs name in authorityKeyIdentifier (CONFORMANCE CRL-8)."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def _check_ca(cert: x509.Certificate, path: str) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise AdminError(f"{path} is not a CA certificate (basicConstraints cA is not set)")


def _key_ref(value: str) -> str:
    """What is stored for a --key/--ocsp-key: an absolute file path, or the pkcs11: URI as given
    (it names the key; the PIN is never part of it, revoc/hsm.py refuses pin-value)."""
    return value if is_pkcs11_uri(value) else str(Path(value).resolve())


def _load_signer(key_path: str, cert: x509.Certificate, what: str) -> None:
    try:
        signer = open_signer(key_path)
    except SigningError as exc:
        raise InputError(str(exc)) from None
    if not public_key_matches(signer, cert):
        raise AdminError(f"{key_path} does not match the public key of the {what} certificate")


def _check_delegate(delegate: x509.Certificate, ca: x509.Certificate, path: str) -> None:
    """CONFORMANCE OCSP-SIGNER-1/2: issued directly by this CA, EKU id-kp-OCSPSigning."""
    if not _is_issued_by(delegate, ca):
        raise AdminError(f"{path} was not issued by this CA (OCSP responders must be)")
    try:
        eku = delegate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        raise AdminError(f"{path} lacks the OCSPSigning extended key usage")


@dataclass(frozen=True, slots=True)
class IssuerRequest:
    """What `revoc issuer add` was asked to register."""

    name: str
    cert_path: str
    key_path: str | None = None
    ocsp_cert_path: str | None = None
    ocsp_key_path: str | None = None
    crl_shards: int = 0
    profile: Profile = Profile.PRIVATE
    replace: bool = False


def prepare_issuer(request: IssuerRequest) -> list[Any]:
    """Validate an issuer request and return the `issuer_insert` arguments."""
    if not _ISSUER_NAME.match(request.name):
        raise InputError(
            f"issuer name {request.name!r} must be 1-64 letters, digits, '.', '_' or '-'"
        )
    if request.crl_shards < 0 or request.crl_shards > MAX_SHARDS:
        raise InputError(f"--crl-shards must be between 0 and {MAX_SHARDS}")
    ca = load_certificate(request.cert_path)
    _check_ca(ca, request.cert_path)
    if (request.ocsp_cert_path is None) != (request.ocsp_key_path is None):
        raise InputError("--ocsp-cert and --ocsp-key go together")
    if request.key_path is None and request.ocsp_key_path is None:
        raise InputError("give --key, or --ocsp-cert and --ocsp-key: nothing could sign")
    usage = _key_usage(ca)
    key_path = _key_ref(request.key_path) if request.key_path else None
    if key_path is not None:
        _load_signer(key_path, ca, "CA")
        # CONFORMANCE CRL-16: the key signs CRLs, so the certificate must allow it.
        if usage is not None and not usage.crl_sign:
            raise AdminError(f"{request.cert_path} does not assert keyUsage cRLSign")
        # CONFORMANCE OCSP-SIGNER-5: a CA signing OCSP itself needs digitalSignature.
        if request.ocsp_cert_path is None and usage is not None and not usage.digital_signature:
            raise AdminError(
                f"{request.cert_path} lacks keyUsage digitalSignature, so it cannot sign OCSP "
                "responses itself; register a delegated responder with --ocsp-cert/--ocsp-key"
            )
    ocsp_der: bytes | None = None
    ocsp_key_path: str | None = None
    if request.ocsp_cert_path is not None and request.ocsp_key_path is not None:
        delegate = load_certificate(request.ocsp_cert_path)
        _check_delegate(delegate, ca, request.ocsp_cert_path)
        ocsp_key_path = _key_ref(request.ocsp_key_path)
        _load_signer(ocsp_key_path, delegate, "OCSP responder")
        ocsp_der = delegate.public_bytes(Encoding.DER)
    subject = ca.subject.public_bytes()
    key_bits = subject_public_key_bits(ca)
    hashes_: list[bytes] = []
    for algorithm in HashAlgorithm:
        hashes_ += [algorithm.digest(subject), algorithm.digest(key_bits)]
    return [
        request.name, ca.public_bytes(Encoding.DER), subject, _key_id(ca), *hashes_,
        key_path, ocsp_der, ocsp_key_path, request.crl_shards, request.profile.value,
    ]


def _describe_ca(cert_der: bytes, key_sha256: bytes) -> str:
    """How an error names a CA: its subject and the SHA-256 of its key (CertID issuerKeyHash)."""
    try:
        subject = x509.load_der_x509_certificate(cert_der).subject.rfc4514_string()
    except ValueError:
        subject = "(unreadable certificate)"
    return f"subject {subject}, key SHA-256 {key_sha256.hex()}"


async def add_issuer(conn: asyncpg.Connection, request: IssuerRequest,
                    actor: Actor | None = None) -> int:
    """Register (or with `replace`, update) an issuer; returns its id.

    A CA (subject and key, the CertID identity) is registered once: a second name for it would
    make one of the two unreachable through CertID lookup (issue 10, point 4). `replace` may
    change anything but that identity. The unique index issuers_identity backs the check against
    a concurrent registration.
    """
    args = prepare_issuer(request)
    cert_der, subject, key_sha256 = args[1], args[2], args[7]
    q = queries()
    try:
        async with conn.transaction():
            existing = await conn.fetchrow(q["issuer_by_name"], request.name)
            if existing is not None and not request.replace:
                raise AdminError(
                    f"issuer {request.name!r} exists already (use --replace to update)")
            if existing is not None and (bytes(existing["subject_der"]) != subject
                                         or bytes(existing["key_sha256"]) != key_sha256):
                raise AdminError(
                    f"--replace may not change the CA's subject or key (the CertID identity): "
                    f"issuer {request.name!r} is "
                    f"{_describe_ca(bytes(existing['cert_der']), bytes(existing['key_sha256']))}"
                    f"; register the new CA under a new name")
            await _refuse_second_registration(conn, request.name, cert_der, subject,
                                              key_sha256)
            if existing is not None:
                issuer_id: int = await conn.fetchval(q["issuer_update"], *args)
            else:
                issuer_id = await conn.fetchval(q["issuer_insert"], *args)
            await record(conn, actor or Actor.cli(),
                         "issuer_replace" if existing is not None else "issuer_add",
                         issuer=request.name, details={
                             "profile": request.profile.value, "crl_shards": request.crl_shards,
                             # issuer_insert's $13-$15: key path, OCSP cert, OCSP key path
                             "key": args[12], "ocsp_key": args[14],
                             "delegated_ocsp": args[13] is not None})
    except asyncpg.UniqueViolationError as exc:
        # A concurrent `issuer add` committed between our check and our insert.
        if exc.constraint_name == "issuers_identity":
            await _refuse_second_registration(conn, request.name, cert_der, subject,
                                              key_sha256)
        raise AdminError(f"issuer {request.name!r} exists already (use --replace to update)"
                         ) from None
    return issuer_id


async def _refuse_second_registration(conn: asyncpg.Connection, name: str, cert_der: bytes,
                                      subject: bytes, key_sha256: bytes) -> None:
    other = await conn.fetchval(queries()["issuer_by_identity"], subject, key_sha256, name)
    if other is not None:
        raise AdminError(f"this CA ({_describe_ca(cert_der, key_sha256)}) is already registered "
                         f"as issuer {other!r}")


def issuer_from_row(row: asyncpg.Record) -> Issuer:
    return Issuer(
        id=row["id"],
        name=row["name"],
        cert_der=bytes(row["cert_der"]),
        subject_der=bytes(row["subject_der"]),
        key_id=bytes(row["key_id"]),
        name_hashes={a: bytes(row[f"name_{a.hashlib_name}"]) for a in HashAlgorithm},
        key_hashes={a: bytes(row[f"key_{a.hashlib_name}"]) for a in HashAlgorithm},
        key_path=row["key_path"],
        ocsp_cert_der=bytes(row["ocsp_cert_der"]) if row["ocsp_cert_der"] else None,
        ocsp_key_path=row["ocsp_key_path"],
        crl_shards=row["crl_shards"],
        profile=Profile(row["profile"]),
    )


async def get_issuer(conn: asyncpg.Connection, name: str) -> Issuer:
    row = await conn.fetchrow(queries()["issuer_by_name"], name)
    if row is None:
        raise NotFound(f"no issuer named {name!r} (register it with `revoc issuer add`)")
    return issuer_from_row(row)


async def list_issuers(conn: asyncpg.Connection) -> list[Issuer]:
    return [issuer_from_row(row) for row in await conn.fetch(queries()["issuer_all"])]


# ---------------------------------------------------------------- certificates


def parse_serial(text: str) -> int:
    """A serial as operators write it: hex, optionally with 0x or colons."""
    return checked_serial(text.strip().lower().removeprefix("0x").replace(":", ""), text)


def checked_serial(digits: str, text: str) -> int:
    """A certificate serial from hex digits (and nothing else: no sign, no '_', no spaces, which
    int() would take): positive and at most 20 octets as a DER INTEGER (RFC 5280 4.1.2.2)."""
    if not _HEX.fullmatch(digits.lower()):
        raise InputError(f"serial {text!r} is not hexadecimal (digits 0-9 and A-F only)")
    value = int(digits, 16)
    serial_octets(value, repr(text))
    return value


def serial_octets(value: int, shown: str | None = None) -> bytes:
    """The stored form of a serial (DER INTEGER content octets), checked: positive, at most 20
    octets (RFC 5280 4.1.2.2; the certificates_serial_valid CHECK)."""
    shown = shown or f"{value:X}"
    if value <= 0:
        raise InputError(f"serial {shown} is {'zero' if value == 0 else 'negative'}; serials "
                         "are positive (RFC 5280 4.1.2.2)")
    octets = integer_content(value)
    if len(octets) > 20:
        raise InputError(f"serial {shown} is longer than 20 octets (RFC 5280 4.1.2.2)")
    return octets


def check_date(moment: datetime, option: str, now: datetime, shown: str | None = None
               ) -> datetime:
    """A revocation or invalidity date DER can carry and that is plausible: from 1950-01-01 to
    now plus FUTURE_SKEW, in whole seconds. Raises InputError naming the bound crossed; the
    message shows the value as `shown` (default ISO 8601)."""
    what = f"{option} {shown or _iso(moment)}"
    try:
        value = utc_seconds(moment)
    except OverflowError:
        raise InputError(f"{what} is outside the years 1950-9999 that RFC 5280 dates can "
                         "hold") from None
    if value < EARLIEST_DATE:
        raise InputError(f"{what} is before 1950-01-01 (RFC 5280 dates start at 1950)")
    limit = now + FUTURE_SKEW
    if value > limit:
        raise InputError(f"{what} lies in the future (after now plus "
                         f"{int(FUTURE_SKEW.total_seconds()) // 60} minutes, {_iso(limit)})")
    return value


def check_invalidity(invalidity: datetime | None, revoked_at: datetime, what: str) -> None:
    """RFC 5280 5.3.2: the invalidity date is when the key was (suspected) compromised, so it is
    not after the revocation."""
    if invalidity is not None and invalidity > revoked_at:
        raise InputError(f"{what} is after the revocation time {_iso(revoked_at)} "
                         "(RFC 5280 5.3.2: the invalidity date "
                         "is when the key was compromised, at or before the revocation)")


def serial_hex(serial_bytes: bytes) -> str:
    return serial_bytes.hex().upper()


def shard_url(public_url: str, issuer: str, shard: int) -> str:
    """The URL of a shard's full CRL under this service (INTERFACE: /crl/{issuer}/{shard}.crl)."""
    return crl_url(public_url, issuer, shard)


def shard_of_serial(serial: int, shards: int) -> int:
    """The stable rule for certificates without a distribution point: serial mod K."""
    return serial % shards


def _distribution_point(cert: x509.Certificate) -> str | None:
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return None
    for point in points:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier):
                return str(name.value)
    return None


@dataclass(frozen=True, slots=True)
class CertAdded:
    serial: str
    added: bool
    shard: int | None


async def add_certificates(
    conn: asyncpg.Connection, issuer_name: str, paths: Sequence[str], actor: Actor | None = None
) -> list[CertAdded]:
    """Record issued certificates from files as good. Known serials are left as they are."""
    certs = [(path, cert) for path in paths for cert in load_certificates(path)]
    return await add_certificate_objects(conn, issuer_name, certs, actor)


async def add_certificate_objects(
    conn: asyncpg.Connection, issuer_name: str, certs: Sequence[tuple[str, x509.Certificate]],
    actor: Actor | None = None,
) -> list[CertAdded]:
    """Record issued certificates, each with a label for errors (a file name, a list index),
    as good, all or none. Known serials are left as they are."""
    actor = actor or Actor.cli()
    issuer = await get_issuer(conn, issuer_name)
    ca = x509.load_der_x509_certificate(issuer.cert_der)
    rows: list[tuple[bytes, datetime, str | None, int | None]] = []
    for item, (path, cert) in enumerate(certs):
        try:
            rows.append(_certificate_row(issuer, ca, path, cert))
        except AdminError as exc:
            exc.item = item
            raise
    q = queries()
    results: list[CertAdded] = []
    async with conn.transaction():
        for serial, not_after, url, shard in rows:
            seq = await conn.fetchval(q["cert_insert"], issuer.id, serial, not_after, url, shard)
            results.append(CertAdded(serial_hex(serial), seq is not None, shard))
            if seq is not None:
                await record(conn, actor, "cert_add", issuer=issuer.name,
                             serial=serial_hex(serial), after={"status": "good"},
                             details={"not_after": _iso(not_after), "shard": shard})
                await conn.execute(q["notify_cert_changed"],
                                   encode_serial_change(issuer.id, serial))
    return results


def _certificate_row(issuer: Issuer, ca: x509.Certificate, path: str, cert: x509.Certificate
                     ) -> tuple[bytes, datetime, str | None, int | None]:
    if not _is_issued_by(cert, ca):
        raise AdminError(f"{path}: serial {cert.serial_number:X} was not issued by "
                         f"{issuer.name}")
    try:
        serial = serial_octets(cert.serial_number)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    not_after = cert.not_valid_after_utc
    if not_after < EARLIEST_DATE:
        raise InputError(f"{path}: serial {cert.serial_number:X} expires before "
                         "1950-01-01 (RFC 5280 dates start at 1950)")
    url = _distribution_point(cert)
    shard = _shard_of_certificate(issuer, url, path)
    return serial, not_after, url, shard


def _shard_of_certificate(issuer: Issuer, url: str | None, path: str) -> int | None:
    """The CRL scope a certificate names (issue 10, point 5): the shard k when its distribution
    point ends in /{issuer}/{k}.crl, for unsharded issuers too (the publisher publishes every
    shard that rows carry, so the URL in the certificate gets a CRL); else None, the
    issuer-wide CRL. A sharded issuer takes only certificates that name one of its shards."""
    match = _SHARD_TAIL.search(url or "")
    if match is None or match["issuer"] != issuer.name:
        if issuer.crl_shards:
            raise AdminError(
                f"{path}: issuer {issuer.name} is sharded, but the certificate's CRL "
                f"distribution point {url!r} does not end in /{issuer.name}/<shard>.crl"
            )
        return None
    shard = int(match["shard"])
    if issuer.crl_shards and shard >= issuer.crl_shards:
        raise AdminError(f"{path}: shard {shard} is not below --crl-shards {issuer.crl_shards}")
    if shard >= MAX_SHARDS:
        raise AdminError(f"{path}: the CRL distribution point {url!r} names shard {shard}; "
                         f"shard numbers stay below {MAX_SHARDS}")
    return shard


def _check_reason(issuer: Issuer, reason: Reason) -> None:
    if reason is Reason.removeFromCRL:
        raise InputError("removeFromCRL is not a revocation reason; use `revoc cert unhold`",
                         field="reason")
    if issuer.profile is Profile.BR and reason not in BR_ALLOWED_REASONS:
        raise AdminError(
            f"issuer {issuer.name} has the br profile, which forbids reason {reason.name} "
            "(CA/B Forum BR 7.2.2: keyCompromise, affiliationChanged, superseded, "
            "cessationOfOperation, privilegeWithdrawn or unspecified)"
        )


@dataclass(frozen=True, slots=True)
class RevokeRequest:
    issuer: str
    serial: int
    reason: Reason
    revoked_at: datetime | None = None
    invalidity_date: datetime | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """A certificate's state before and after a change, and the change_seq it took."""

    issuer: str
    serial: str
    change_seq: int
    before: dict[str, Any] | None
    after: dict[str, Any] | None


async def revoke(
    conn: asyncpg.Connection, request: RevokeRequest, clock: Clock | None = None,
    actor: Actor | None = None,
) -> int:
    """Revoke a known certificate; returns the new change_seq.

    A revoked certificate may only be revoked again to raise its reason to keyCompromise
    (CONFORMANCE BR-10, boulder#8096); its revocation date stays as it was.
    """
    return (await revoke_many(conn, [request], clock, actor))[0].change_seq


async def revoke_many(
    conn: asyncpg.Connection, requests: Sequence[RevokeRequest], clock: Clock | None = None,
    actor: Actor | None = None,
) -> list[Change]:
    """Revoke every request in one transaction: all of them or, on any error, none. An error
    carries the index of the request at fault in `item`."""
    actor = actor or Actor.cli()
    now = utc_seconds((clock or SystemClock()).now())
    issuers: dict[str, Issuer] = {}
    checked: list[tuple[Issuer, bytes, datetime | None, datetime | None]] = []
    for item, request in enumerate(requests):
        try:
            serial = _serial_field(request.serial)
            if request.issuer not in issuers:
                issuers[request.issuer] = await get_issuer(conn, request.issuer)
            issuer = issuers[request.issuer]
            _check_reason(issuer, request.reason)
            revoked_at = _checked_date(request.revoked_at, "--revoked-at", now, "revoked_at")
            invalidity = _checked_date(request.invalidity_date, "--invalidity-date", now,
                                       "invalidity_date")
        except AdminError as exc:
            exc.item = item
            raise
        checked.append((issuer, serial, revoked_at, invalidity))
    changes: list[Change] = []
    async with conn.transaction():
        for item, (request, (issuer, serial, revoked_at, invalidity)) in enumerate(
                zip(requests, checked, strict=True)):
            try:
                changes.append(await _revoke_locked(conn, issuer, serial, request,
                                                    revoked_at or now, invalidity, actor))
            except AdminError as exc:
                exc.item = item
                raise
    return changes


def _serial_field(value: int) -> bytes:
    try:
        return serial_octets(value)
    except InputError as exc:
        exc.field = "serial"
        raise


def _checked_date(moment: datetime | None, option: str, now: datetime, field: str
                  ) -> datetime | None:
    if moment is None:
        return None
    try:
        return check_date(moment, option, now)
    except InputError as exc:
        exc.field = field
        raise


async def _revoke_locked(conn: asyncpg.Connection, issuer: Issuer, serial: bytes,
                         request: RevokeRequest, revoked_at: datetime,
                         invalidity: datetime | None, actor: Actor) -> Change:
    q = queries()
    row = await conn.fetchrow(q["cert_for_update"], issuer.id, serial)
    if row is None:
        raise NotFound(f"serial {serial_hex(serial)} is not a known certificate of "
                       f"{issuer.name} (add it with `revoc cert add` first)")
    if row["status"] == "revoked":
        current = Reason(row["reason"])
        if request.reason is not Reason.keyCompromise or current is Reason.keyCompromise:
            raise AdminError(
                f"serial {serial_hex(serial)} is already revoked ({current.name}); a second "
                "revocation may only change the reason to keyCompromise"
            )
        revoked_at = row["revoked_at"]
        invalidity = invalidity or row["invalidity_date"]
    if invalidity is not None:
        try:
            check_invalidity(invalidity, revoked_at, f"--invalidity-date {_iso(invalidity)}")
        except InputError as exc:
            exc.field = "invalidity_date"
            raise
    try:
        entry = encode_crl_entry(request.serial, revoked_at, request.reason, invalidity)
    except ValueError as exc:  # a row stored before the 0004 checks (`revoc audit` lists it)
        raise AdminError(f"serial {serial_hex(serial)} of {issuer.name}: its stored "
                         f"revocation cannot be encoded ({exc})") from None
    seq: int = await conn.fetchval(q["cert_revoke"], issuer.id, serial, revoked_at,
                                   int(request.reason), invalidity, entry)
    before = certificate_state(row)
    after = certificate_state({"status": "revoked", "reason": int(request.reason),
                               "revoked_at": revoked_at, "invalidity_date": invalidity})
    await record(conn, actor, "revoke", issuer=issuer.name, serial=serial_hex(serial),
                 before=before, after=after, details={"change_seq": seq})
    await conn.execute(q["notify_cert_changed"], encode_serial_change(issuer.id, serial))
    return Change(issuer.name, serial_hex(serial), seq, before, after)


async def unhold(conn: asyncpg.Connection, issuer_name: str, serial_value: int,
                 actor: Actor | None = None) -> int:
    """Release a certificateHold: the certificate is good again (removeFromCRL in next delta)."""
    return (await unhold_change(conn, issuer_name, serial_value, actor)).change_seq


async def unhold_change(conn: asyncpg.Connection, issuer_name: str, serial_value: int,
                        actor: Actor | None = None) -> Change:
    """`unhold`, returning the certificate's state before and after."""
    serial = _serial_field(serial_value)
    issuer = await get_issuer(conn, issuer_name)
    if issuer.profile is Profile.BR:
        raise AdminError(f"issuer {issuer.name} has the br profile, which allows no holds")
    q = queries()
    async with conn.transaction():
        row = await conn.fetchrow(q["cert_for_update"], issuer.id, serial)
        if row is None:
            raise NotFound(f"serial {serial_hex(serial)} is not a known certificate of "
                           f"{issuer.name}")
        if row["status"] != "revoked" or row["reason"] != int(Reason.certificateHold):
            raise AdminError(f"serial {serial_hex(serial)} is not on hold (certificateHold)")
        seq: int = await conn.fetchval(q["cert_unhold"], issuer.id, serial)
        before, after = certificate_state(row), {"status": "good", "reason": None,
                                                 "revoked_at": None, "invalidity_date": None}
        await record(conn, actor or Actor.cli(), "unhold", issuer=issuer.name,
                     serial=serial_hex(serial), before=before, after=after,
                     details={"change_seq": seq})
        await conn.execute(q["notify_cert_changed"], encode_serial_change(issuer.id, serial))
    return Change(issuer.name, serial_hex(serial), seq, before, after)


def parse_time(text: str, what: str) -> datetime:
    """ISO 8601 from the command line; a time without zone is taken as UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{what} {text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise InputError(f"{what} {text} is outside the years 1950-9999 that RFC 5280 dates "
                         "can hold") from None


def _iso(moment: datetime) -> str:
    """ISO 8601 in UTC with four-digit years (strftime's %Y drops the zeros of year 1)."""
    try:
        t = moment.astimezone(UTC) if moment.tzinfo is not None else moment
    except OverflowError:
        return moment.isoformat()
    return (f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:"
            f"{t.second:02d}Z")

