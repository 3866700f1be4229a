"""Field types shared by every API router and page: text and ids that Postgres can store."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field


def db_text(value: str) -> str:
    """Refuse what a Postgres text column cannot hold, as a 422 on the field, not a 500."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise ValueError("must be valid Unicode text") from exc
    return value


# ASCII digits only (str.isdigit also accepts "²", which int() refuses), few enough for a
# bigint and far below Python's int() digit limit.
_PLAIN_ID = re.compile(r"[0-9]{1,18}")


def plain_id(text: str) -> int | None:
    """A database id written as plain decimal digits, or None for anything else."""
    text = text.strip()
    return int(text) if _PLAIN_ID.fullmatch(text) else None


def Text(max_length: int, min_length: int = 0) -> Any:  # noqa: N802 - used like a type
    length = Field(min_length=min_length, max_length=max_length)
    return Annotated[str, length, AfterValidator(db_text)]


Slug = Text(100, 1)
RunName = Text(200, 1)
MetricKey = Text(128, 1)
Tag = Text(64, 1)


def db_json(value: Any, path: str = "") -> Any:
    """Refuse what a jsonb column cannot hold (NUL, lone surrogates) and non-finite numbers."""
    if isinstance(value, str):
        db_text(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path or 'value'}: numbers must be finite")
    elif isinstance(value, dict):
        for k, v in value.items():
            db_text(k)
            db_json(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            db_json(v, f"{path}[{i}]")
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(db_json)]


# Wall times a metric point may carry, in UTC. Far inside what both Python (years 1-9999,
# in any offset) and Postgres can hold: one hostile time must not poison what is derived
# from it (alert state, incidents, pages) with a value that later fails to load.
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(3000, 1, 1, tzinfo=UTC)


def wall_time(value: datetime) -> datetime:
    """An aware UTC time within [EARLIEST_TIME, LATEST_TIME); a naive time is taken as UTC
    (mixing naive and aware times in one batch must not make them incomparable)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST_TIME <= utc < LATEST_TIME:
        raise ValueError(
            f"must be between {EARLIEST_TIME:%Y-%m-%d} and {LATEST_TIME:%Y-%m-%d} (UTC)"
        )
    return utc


WallTime = Annotated[datetime, AfterValidator(wall_time)]
