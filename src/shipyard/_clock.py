"""UTC time as every stage stores it (SQLite hands datetimes back without a zone)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(t: datetime) -> datetime: ...


@overload
def as_utc(t: None) -> None: ...


def as_utc(t: datetime | None) -> datetime | None:
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t
