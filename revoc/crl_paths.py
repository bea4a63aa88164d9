"""Where a CRL lives: its name under /crl/ and under `publish --out`, and its URL (INTERFACE.md).

One place for the naming rule, shared by the admin commands, the publisher (URLs written into
CRLs, file names) and the responder (the paths it serves), which must agree byte for byte.
"""

from __future__ import annotations

UNSHARDED = -1  # the `shard` of an issuer-wide CRL in the crls table


def crl_name(issuer: str, shard: int, kind: str) -> str:
    """`{issuer}.crl`, `{issuer}-delta.crl`, `{issuer}/{shard}.crl` or `{issuer}/{shard}-delta.crl`.

    `kind` is "full" or "delta", as stored in crls.kind.
    """
    suffix = "-delta.crl" if kind == "delta" else ".crl"
    return f"{issuer}{suffix}" if shard == UNSHARDED else f"{issuer}/{shard}{suffix}"


def crl_url(public_url: str, issuer: str, shard: int, kind: str = "full") -> str:
    """The URL clients fetch that CRL from: REVOC_PUBLIC_URL (no trailing slash) + /crl/name."""
    return f"{public_url.rstrip('/')}/crl/{crl_name(issuer, shard, kind)}"
