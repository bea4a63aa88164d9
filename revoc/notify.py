"""Every NOTIFY channel of revoc and its payload, encoded and decoded here and nowhere else.

- `cert_changed`: a certificate's status or the certificate set changed (admin -> presigner,
  publisher, responders). Payload `<issuer id>:<SERIAL HEX>`, or `<issuer id>:*` for many.
- `ocsp_changed`: new pre-signed responses are stored (presigner -> responders). Same payload.
- `crl_published`: a CRL was stored (publisher -> responders).
  Payload `<issuer id>:<shard>:<kind>:<number>`.

Notifications only make things faster: every consumer also finds changes by asking PostgreSQL
(revoc/changes.py, `ocsp_pending`, CRL `max_change_seq`), so a lost one delays, never loses.
"""

from __future__ import annotations

from dataclasses import dataclass

CERT_CHANGED = "cert_changed"
OCSP_CHANGED = "ocsp_changed"
CRL_PUBLISHED = "crl_published"


@dataclass(frozen=True, slots=True)
class SerialChange:
    """A payload of `cert_changed` or `ocsp_changed`; `serial` None means "any serial"."""

    issuer_id: int
    serial: bytes | None


def encode_serial_change(issuer_id: int, serial: bytes | None) -> str:
    return f"{issuer_id}:{'*' if serial is None else serial.hex().upper()}"


def decode_serial_change(payload: str) -> SerialChange | None:
    """None for a payload no revoc process wrote (logged by the caller, never raised)."""
    issuer_text, sep, serial_text = payload.partition(":")
    serial_text = serial_text.strip()
    try:
        issuer_id = int(issuer_text)
        if not sep or not serial_text:
            return None
        if serial_text == "*":
            return SerialChange(issuer_id, None)
        if len(serial_text) % 2:
            serial_text = "0" + serial_text
        return SerialChange(issuer_id, bytes.fromhex(serial_text))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class CrlPublished:
    issuer_id: int
    shard: int
    kind: str
    number: int


def encode_crl_published(issuer_id: int, shard: int, kind: str, number: int) -> str:
    return f"{issuer_id}:{shard}:{kind}:{number}"


def decode_crl_published(payload: str) -> CrlPublished | None:
    parts = payload.split(":")
    if len(parts) != 4:
        return None
    try:
        return CrlPublished(int(parts[0]), int(parts[1]), parts[2], int(parts[3]))
    except ValueError:
        return None
