"""The full-CRL URLs a CA discloses to CCADB (issue 13 point 4; CONFORMANCE ROOT-1, SHARD-7, BR-16).

CCADB Policy §6.2 asks for a JSON array of every full or partitioned CRL URL that unexpired
certificates carry. For one issuer that is, sorted and without duplicates:

- every distribution point URL written in an unexpired certificate (stored byte for byte by
  `revoc cert add`);
- the default URL of each configured shard 0..K-1 that its CRL's IDP names: a shard without any
  certificate yet, or one with certificates that carry no URL (index.txt imports);
- for an unsharded issuer, its issuer-wide CRL `{public}/crl/{issuer}.crl`.

Every URL of a shard is one of the URIs in that shard's issuingDistributionPoint, byte for byte
(SHARD-1); the issuer-wide CRL carries no IDP (CRL-13). `revoc crl urls` prints the list and
`revoc serve` answers it at `/crl/{issuer}/urls.json` (responder/crl_files.py).
"""

from __future__ import annotations

import json
from datetime import datetime

import asyncpg

from revoc.crl_paths import UNSHARDED, crl_url
from revoc.queries import queries

URLS_NAME = "urls.json"


def urls_path(issuer: str) -> str:
    """Where the list is served under /crl/ (and written under `publish --out`)."""
    return f"{issuer}/{URLS_NAME}"


async def disclosed_urls(conn: asyncpg.Connection, public_url: str, now: datetime,
                         issuer_id: int | None = None) -> dict[str, list[str]]:
    """Issuer name -> the sorted full-CRL URLs to disclose (all issuers, or one)."""
    by_issuer: dict[str, set[str]] = {}
    seen: dict[str, set[int]] = {}
    default: dict[str, set[int]] = {}
    shards: dict[str, int] = {}
    for row in await conn.fetch(queries()["crl_disclosure"], now, issuer_id):
        name = row["name"]
        urls = by_issuer.setdefault(name, set())
        seen.setdefault(name, set())
        default.setdefault(name, set())
        shards[name] = row["crl_shards"]
        urls.update(row["live_urls"])
        shard = row["shard"]
        if shard is not None:
            seen[name].add(shard)
            if row["some_without_url"]:
                default[name].add(shard)
    result: dict[str, list[str]] = {}
    for name, urls in by_issuer.items():
        count = shards[name]
        wanted = {k for k in range(count) if k not in seen[name]} | default[name]
        urls.update(crl_url(public_url, name, k) for k in wanted)
        if not count:
            urls.add(crl_url(public_url, name, UNSHARDED))
        result[name] = sorted(urls)
    return result


def urls_json(urls: list[str]) -> bytes:
    """The JSON array CCADB takes (one line, UTF-8, newline-terminated)."""
    return (json.dumps(urls) + "\n").encode()
