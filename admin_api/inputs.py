"""Request bodies and query parameters of the admin API, checked into typed values.

Every problem is an `InputError` naming the field at fault (422 `{"error", "field"}`); the
values themselves go through revoc/admin.py's own checks (serials, dates, reasons), so the API
refuses exactly what the CLI refuses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cryptography import x509

from revoc import admin
from revoc.admin import InputError
from revoc.audit_trail import MAX_LIMIT, AuditFilter
from revoc.model import Reason

ISSUER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SERIAL_PATTERN = r"^(0[xX])?[0-9A-Fa-f:]{1,64}$"
ACTOR_PATTERN = r"^[^\x00-\x1f\x7f]{1,128}$"
_ISSUER = re.compile(ISSUER_PATTERN)
_SERIAL = re.compile(SERIAL_PATTERN)
_ACTOR = re.compile(ACTOR_PATTERN)
MAX_BATCH = 1000
MAX_PEM_CHARS = 64 * 1024


def _object(body: Any, field: str | None, allowed: set[str], required: set[str]
            ) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise InputError("expected a JSON object", field=field)
    prefix = f"{field}." if field else ""
    for key in body:
        if key not in allowed:
            raise InputError(f"unknown field {key!r}", field=f"{prefix}{key}")
    for key in sorted(required):
        if key not in body:
            raise InputError(f"{key} is required", field=f"{prefix}{key}")
    return body


def _string(body: Mapping[str, Any], key: str, field: str) -> str:
    value = body[key]
    if not isinstance(value, str):
        raise InputError(f"{key} must be a string", field=field)
    return value


def issuer_name(text: str, field: str = "issuer") -> str:
    if not _ISSUER.match(text):
        raise InputError(f"issuer name {text!r} must be 1-64 letters, digits, '.', '_' or '-'",
                         field=field)
    return text


def serial(text: str, field: str = "serial") -> int:
    if not _SERIAL.match(text):
        raise InputError(f"serial {text!r} is not hexadecimal (digits 0-9 and A-F only)",
                         field=field)
    try:
        return admin.parse_serial(text)
    except InputError as exc:
        exc.field = field
        raise


def time(text: str, field: str) -> datetime:
    try:
        return admin.parse_time(text, field)
    except InputError as exc:
        exc.field = field
        raise


def revoke_request(body: Any, field: str | None = None) -> admin.RevokeRequest:
    prefix = f"{field}." if field else ""
    fields = _object(body, field, {"issuer", "serial", "reason", "revoked_at",
                                   "invalidity_date"}, {"issuer", "serial", "reason"})
    reason_text = _string(fields, "reason", f"{prefix}reason")
    try:
        reason = Reason.from_name(reason_text)
    except ValueError as exc:
        raise InputError(str(exc), field=f"{prefix}reason") from None
    times: dict[str, datetime | None] = {}
    for key in ("revoked_at", "invalidity_date"):
        value = fields.get(key)
        if value is not None and not isinstance(value, str):
            raise InputError(f"{key} must be an ISO 8601 string", field=f"{prefix}{key}")
        times[key] = time(value, f"{prefix}{key}") if value is not None else None
    return admin.RevokeRequest(
        issuer=issuer_name(_string(fields, "issuer", f"{prefix}issuer"), f"{prefix}issuer"),
        serial=serial(_string(fields, "serial", f"{prefix}serial"), f"{prefix}serial"),
        reason=reason, revoked_at=times["revoked_at"], invalidity_date=times["invalidity_date"])


def revoke_batch(body: Any) -> list[admin.RevokeRequest]:
    fields = _object(body, None, {"revocations"}, {"revocations"})
    items = fields["revocations"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise InputError(f"revocations must be a list of 1 to {MAX_BATCH} revocations",
                         field="revocations")
    return [revoke_request(item, f"revocations[{i}]") for i, item in enumerate(items)]


def unhold_request(body: Any) -> tuple[str, int]:
    fields = _object(body, None, {"issuer", "serial"}, {"issuer", "serial"})
    return (issuer_name(_string(fields, "issuer", "issuer")),
            serial(_string(fields, "serial", "serial")))


def certificates_request(body: Any) -> tuple[str, list[tuple[str, x509.Certificate]]]:
    fields = _object(body, None, {"issuer", "certificates"}, {"issuer", "certificates"})
    name = issuer_name(_string(fields, "issuer", "issuer"))
    items = fields["certificates"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise InputError(f"certificates must be a list of 1 to {MAX_BATCH} PEM certificates",
                         field="certificates")
    certs: list[tuple[str, x509.Certificate]] = []
    for i, item in enumerate(items):
        label = f"certificates[{i}]"
        if not isinstance(item, str) or len(item) > MAX_PEM_CHARS:
            raise InputError(f"{label} must be one PEM certificate (a string of at most "
                             f"{MAX_PEM_CHARS} characters)", field=label)
        try:
            loaded = x509.load_pem_x509_certificates(item.encode("utf-8", "replace"))
        except ValueError:
            loaded = []
        if len(loaded) != 1:
            raise InputError(f"{label} is not one PEM X.509 certificate", field=label)
        certs.append((label, loaded[0]))
    return name, certs


def _int_param(params: Mapping[str, str], key: str, default: int | None, low: int,
               high: int) -> int | None:
    text = params.get(key)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise InputError(f"{key} must be a whole number from {low} to {high}", field=key)
    return int(text)


def _known_params(params: Mapping[str, str], allowed: set[str]) -> None:
    for key in params:
        if key not in allowed:
            raise InputError(f"unknown query parameter {key!r}", field=key)


MAX_SEQ = (1 << 63) - 1


def changes_query(params: Mapping[str, str]) -> tuple[int, str | None, int]:
    _known_params(params, {"since", "issuer", "limit"})
    since = _int_param(params, "since", 0, 0, MAX_SEQ)
    limit = _int_param(params, "limit", 100, 1, MAX_LIMIT)
    issuer = params.get("issuer")
    assert since is not None and limit is not None
    return since, issuer_name(issuer) if issuer is not None else None, limit


def audit_query(params: Mapping[str, str]) -> AuditFilter:
    _known_params(params, {"issuer", "serial", "actor", "since", "before_id", "limit"})
    issuer = params.get("issuer")
    serial_text = params.get("serial")
    actor = params.get("actor")
    if actor is not None and not _ACTOR.match(actor):
        raise InputError("actor must be 1-128 printable characters", field="actor")
    since = params.get("since")
    limit = _int_param(params, "limit", 100, 1, MAX_LIMIT)
    assert limit is not None
    return AuditFilter(
        issuer=issuer_name(issuer) if issuer is not None else None,
        serial=(admin.serial_hex(admin.serial_octets(serial(serial_text)))
                if serial_text is not None else None),
        actor=actor,
        since=time(since, "since") if since is not None else None,
        before_id=_int_param(params, "before_id", None, 1, MAX_SEQ),
        limit=limit)
