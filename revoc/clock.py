"""Injectable clock: code asks a Clock for the time; tests hand in a FixedClock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware datetime")
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta


def utc_seconds(moment: datetime) -> datetime:
    """Drop sub-second precision: OCSP and CRL times carry whole seconds (OCSP-RESP-6)."""
    return moment.astimezone(UTC).replace(microsecond=0)
