"""CRL scopes: which CRLs an issuer has, what each reflects, and which have changes to publish.

A scope is one sequence of CRLs: the issuer-wide CRL (shard -1: `{issuer}.crl`, no IDP, complete)
or one shard (`{issuer}/{k}.crl`, with an IDP naming the URLs its certificates carry). The scopes
come from what the certificates say, so changing an issuer's shard count can add scopes but never
takes a revoked certificate off every CRL:

- shards 0..K-1 when the issuer is sharded (K > 0), so each URL a CA may write exists at once;
- every shard value the issuer's certificates carry (parsed from the distribution point written
  in them), also values >= K after the shard count was lowered;
- the issuer-wide scope when the issuer is unsharded, or while a certificate without a shard is
  not expired (certificates added before the issuer was sharded, or without a distribution
  point; a revoked one until a full CRL issued after its expiry, as on every CRL): it lists every
  revoked certificate of the issuer, whatever its shard, and serves the URL such certificates
  name even before one of them is revoked.

What a scope reflects. Every CRL stores `max_change_seq`, the round's change horizon: all status
changes up to it are in it. A scope has changes to publish when some change in it (a revocation,
a reason change, a released hold) is above the highest `max_change_seq` of its CRLs. That is
decided in the round, under the scope's lock, from the database, so two publishers woken by the
same NOTIFY publish it once, and a publisher that lost its notifications catches up by asking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from crl_publisher.builder import CrlKind
from revoc.crl_paths import UNSHARDED, crl_name, crl_url
from revoc.model import Issuer
from revoc.queries import queries
from revoc.settings import Settings

# Advisory lock keys of this module: 0x43524C ("CRL") in the top bits, then issuer and shard.
_LOCK_NAMESPACE = 0x43524C << 40
_SHARD_BITS = 0xFFFF


@dataclass(frozen=True, slots=True)
class Scope:
    """One sequence of CRLs: the issuer-wide CRL (shard -1) or one shard of the issuer."""

    issuer: Issuer
    shard: int

    def relative_name(self, kind: CrlKind) -> str:
        """The file name under --out and the path under /crl/ (INTERFACE.md)."""
        return crl_name(self.issuer.name, self.shard, kind.value)

    def url(self, settings: Settings, kind: CrlKind) -> str:
        return crl_url(settings.public_url, self.issuer.name, self.shard, kind.value)

    @property
    def lock_key(self) -> int:
        return scope_lock_key(self.issuer.id, self.shard)


def scope_lock_key(issuer_id: int, shard: int) -> int:
    """A bigint advisory lock key per (issuer, shard). Shards beyond 65534 share keys with
    others: harmless, a lock held twice only serializes more."""
    return _LOCK_NAMESPACE | (issuer_id << 16) | ((shard + 1) & _SHARD_BITS)


async def issuer_scopes(conn: asyncpg.Connection, issuer: Issuer, now: datetime) -> list[Scope]:
    """The scopes of `issuer` (see the module docstring), issuer-wide first, then by shard."""
    carried = {row["shard"] for row in await conn.fetch(queries()["crl_carried_shards"],
                                                         issuer.id, now)}
    wide = not issuer.crl_shards or None in carried
    shards = (set(range(issuer.crl_shards)) | carried) - {None, UNSHARDED}
    return [Scope(issuer, shard) for shard in ([UNSHARDED] if wide else [])
            + sorted(s for s in shards if s is not None)]


@dataclass(frozen=True, slots=True)
class Previous:
    """The latest stored CRL of a scope and kind."""

    number: int
    this_update: datetime
    next_update: datetime
    max_change_seq: int
    idp_urls: tuple[str, ...]
    base_number: int | None

    @classmethod
    def from_row(cls, row: asyncpg.Record | None) -> Previous | None:
        if row is None:
            return None
        return cls(number=int(row["number"]), this_update=row["this_update"],
                   next_update=row["next_update"], max_change_seq=row["max_change_seq"],
                   idp_urls=tuple(row["idp_urls"] or ()),
                   base_number=int(row["base_number"]) if row["base_number"] is not None
                   else None)


@dataclass(frozen=True, slots=True)
class ScopeState:
    """A scope with its latest CRLs, read inside the round's snapshot."""

    scope: Scope
    last_full: Previous | None
    last_delta: Previous | None
    max_number: int | None

    @property
    def reflected(self) -> int | None:
        """The highest change_seq the scope's CRLs reflect (None: it has no CRL yet)."""
        if self.last_full is None:
            return None
        if self.last_delta is None:
            return self.last_full.max_change_seq
        return max(self.last_full.max_change_seq, self.last_delta.max_change_seq)


async def scope_states(conn: asyncpg.Connection, scopes: Sequence[Scope]) -> list[ScopeState]:
    """The latest full and delta CRL of each scope (of one issuer), in one query."""
    if not scopes:
        return []
    issuer_id = scopes[0].issuer.id
    latest: dict[tuple[int, str], Previous | None] = {}
    for row in await conn.fetch(queries()["crl_latest_of_scopes"], issuer_id,
                                [s.shard for s in scopes]):
        latest[(row["shard"], row["kind"])] = Previous.from_row(row)
    states = []
    for scope in scopes:
        full = latest.get((scope.shard, "full"))
        delta = latest.get((scope.shard, "delta"))
        numbers = [p.number for p in (full, delta) if p is not None]
        states.append(ScopeState(scope, full, delta, max(numbers) if numbers else None))
    return states


@dataclass(frozen=True, slots=True)
class ChangeGroup:
    """The status changes one transaction made in one shard (crl_change_groups)."""

    shard: int | None
    changed_at: datetime | None
    max_seq: int
    changes: int


class IssuerChanges:
    """The issuer's changes above what its scopes' CRLs all reflect, and where they belong.

    A change belongs to (is "homed" in) the scope of its shard when that is a scope of the
    issuer, else to the issuer-wide scope. The issuer-wide CRL lists every change of the issuer;
    its lag and age are counted once, in the change's home scope.
    """

    def __init__(self, groups: Sequence[ChangeGroup], shards: Sequence[int]) -> None:
        self.groups = groups
        self.shards = frozenset(shards)

    @classmethod
    async def load(cls, conn: asyncpg.Connection, issuer_id: int,
                   states: Sequence[ScopeState]) -> IssuerChanges:
        # From what the full CRLs reflect (at or below what full and delta reflect): a change a
        # delta carries is still news for the full CRL (issue 13 point 1).
        reflected = [s.last_full.max_change_seq for s in states if s.last_full is not None]
        shards = [s.scope.shard for s in states]
        if not reflected:
            return cls([], shards)
        rows = await conn.fetch(queries()["crl_change_groups"], issuer_id, min(reflected))
        return cls([ChangeGroup(r["shard"], r["changed_at"], r["max_seq"], r["changes"])
                    for r in rows], shards)

    def home(self, group: ChangeGroup) -> int:
        return group.shard if group.shard in self.shards else UNSHARDED

    def has_changes(self, state: ScopeState, *, above: int | None = None) -> bool:
        """Whether the scope has a change its latest CRLs do not reflect (or, given `above`,
        a change above that change_seq)."""
        if above is None:
            above = state.reflected
        if above is None:
            return True
        shard = state.scope.shard
        return any(g.max_seq > above and (shard == UNSHARDED or g.shard == shard)
                   for g in self.groups)

    def newly_reflected(self, state: ScopeState, horizon: int) -> list[tuple[datetime, int]]:
        """(changed_at, count) of the changes homed in the scope that a CRL published now at
        `horizon` reflects for the first time; none for a scope's very first CRL."""
        above = state.reflected
        if above is None:
            return []
        return [(g.changed_at, g.changes) for g in self.groups
                if g.changed_at is not None and self.home(g) == state.scope.shard
                and above < g.max_seq <= horizon]

    def oldest_unreflected(self, reflected: dict[int, int | None]) -> datetime | None:
        """The oldest change not on the latest CRL of its home scope, given what each scope
        reflects after the round."""
        oldest: datetime | None = None
        for group in self.groups:
            if group.changed_at is None:
                continue
            above = reflected.get(self.home(group))
            if above is not None and group.max_seq <= above:
                continue
            if oldest is None or group.changed_at < oldest:
                oldest = group.changed_at
        return oldest
