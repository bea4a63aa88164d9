"""Cache tags: the one codec for the `Surrogate-Key` / `Cache-Tag` values revoc puts on OCSP and
CRL answers and sends to the purge hook (issue 13 point 7, INTERFACE.md "CDN purge").

A CDN that purges by tag (Fastly Surrogate-Key, Cloudflare/Akamai Cache-Tag) drops every answer
about one certificate, or every CRL of one issuer, with one call. Tags use the issuer's id (names
may hold characters a header list cannot) and the serial in upper-case hex without leading
zeros, as `revoc cert revoke --serial` takes it:

- `revoc-i{issuer_id}`: every answer about the issuer (OCSP and CRL);
- `revoc-i{issuer_id}-crl`: its CRLs (full, delta, shards) and its urls.json;
- `revoc-i{issuer_id}-s{SERIAL}`: the OCSP answers about one certificate.
"""

from __future__ import annotations

SURROGATE_KEY = "Surrogate-Key"  # space-separated (Fastly, Varnish xkey)
CACHE_TAG = "Cache-Tag"  # comma-separated (Cloudflare, Akamai)


def issuer_tag(issuer_id: int) -> str:
    return f"revoc-i{issuer_id}"


def crl_tag(issuer_id: int) -> str:
    return f"revoc-i{issuer_id}-crl"


def cert_tag(issuer_id: int, serial: int) -> str:
    return f"revoc-i{issuer_id}-s{serial:X}"


def crl_tags(issuer_id: int) -> list[str]:
    return [issuer_tag(issuer_id), crl_tag(issuer_id)]


def ocsp_tags(issuer_id: int, serial: int) -> list[str]:
    return [issuer_tag(issuer_id), cert_tag(issuer_id, serial)]


def is_cert_tag(tag: str) -> bool:
    """Whether `tag` names one certificate (`cert_tag`), not a whole issuer or its CRLs."""
    head, sep, serial = tag.rpartition("-s")
    return bool(sep) and head.startswith("revoc-i") and head[7:].isdigit() and bool(serial)


def tag_headers(tags: list[str]) -> dict[str, str]:
    """Both header forms for `tags`."""
    return {SURROGATE_KEY: " ".join(tags), CACHE_TAG: ",".join(tags)}
