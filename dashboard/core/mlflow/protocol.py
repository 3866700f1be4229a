"""MLflow's wire format, as its Python client speaks it: errors, limits, and the checks of each
field of a request. Pure (no ORM): the views turn what this returns into rows.

Limits and lengths are MLflow's own (mlflow/utils/validation.py), except where a Parity column
is narrower (a metric key: 128 characters) or Parity's rules are stricter (a step is >= 0, as
in the native ingest).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from dashboard.core.api.types import LATEST_TIME, db_text

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_ENTITY_KEY_LENGTH = 250
MAX_METRIC_KEY_LENGTH = 128  # MetricPoint.key
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_STEP = 2**63 - 1
# Milliseconds since the epoch, within the wall times the native ingest accepts (a larger
# number is a unit mistake, or hostile).
MAX_TIMESTAMP_MS = int(LATEST_TIME.timestamp() * 1000) - 1

# MLflow run status <-> Parity run status.
STATUS_TO_PARITY = {
    "RUNNING": "running",
    "SCHEDULED": "pending",
    "FINISHED": "finished",
    "FAILED": "failed",
    "KILLED": "crashed",
}
STATUS_TO_MLFLOW = {v: k for k, v in STATUS_TO_PARITY.items()}


class MlflowError(Exception):
    """An error in MLflow's shape: {"error_code": ..., "message": ...} with its HTTP status.

    `field` names the offending request field (also in the message, which is all MLflow's
    client shows).
    """

    def __init__(
        self, status: int, error_code: str, message: str, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.field = field

    def body(self) -> dict[str, str]:
        out = {"error_code": self.error_code, "message": self.message}
        if self.field:
            out["field"] = self.field
        return out


def invalid(field: str, reason: str) -> MlflowError:
    return MlflowError(400, "INVALID_PARAMETER_VALUE", f"{field}: {reason}", field)


def not_found(what: str) -> MlflowError:
    return MlflowError(404, "RESOURCE_DOES_NOT_EXIST", what)


@dataclass(frozen=True)
class Metric:
    key: str
    value: float
    time: datetime
    step: int


def text(data: dict[str, Any], field: str, max_length: int, path: str = "") -> str:
    """A required, non-empty string field that Postgres can store."""
    where = path or field
    value = data.get(field)
    if not isinstance(value, str) or not value:
        raise invalid(where, "is required and must be a non-empty string")
    return checked_text(where, value, max_length)


def checked_text(where: str, value: str, max_length: int) -> str:
    problem = _text_problem(value, max_length)
    if problem:
        raise invalid(where, problem)
    return value


# A batch repeats its few keys and timestamps a thousand times: each is checked once (the
# checks were a third of a log-batch request's time).
@lru_cache(maxsize=4096)
def _text_problem(value: str, max_length: int) -> str | None:
    if len(value) > max_length:
        return f"is {len(value)} characters long; at most {max_length}"
    try:
        db_text(value)
    except ValueError as exc:
        return str(exc)
    return None


@lru_cache(maxsize=4096)
def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def optional_text(data: dict[str, Any], field: str, max_length: int, path: str = "") -> str:
    value = data.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise invalid(path or field, "must be a string")
    return checked_text(path or field, value, max_length)


def integer(value: Any, where: str, low: int, high: int) -> int:
    """An int64 field: a JSON number, or a string of digits (protobuf's JSON form of int64)."""
    if isinstance(value, str):
        try:
            value = int(value.strip()) if len(value) <= 20 else None
        except ValueError:
            value = None
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(where, "must be an integer")
    if not low <= value <= high:
        raise invalid(where, f"{value} is out of range [{low}, {high}]")
    return value


def timestamp(value: Any, where: str) -> datetime:
    """Milliseconds since the epoch, bounded so that a hostile number is a 400, not a 500."""
    return _from_ms(integer(value, where, 0, MAX_TIMESTAMP_MS))


def at(path: str, field: str) -> str:
    """The name of `field` inside `path` ("metrics[3].step"); a top-level field by itself."""
    return f"{path}.{field}" if path else field


def metric(data: Any, path: str = "") -> Metric:
    """One metric {key, value, timestamp, step}; `path` says where it is in the request."""
    if not isinstance(data, dict):
        raise invalid(path, "must be an object {key, value, timestamp, step}")
    key = text(data, "key", MAX_METRIC_KEY_LENGTH, at(path, "key"))
    raw = data.get("value")
    # protobuf's JSON writes NaN and infinities as the strings "NaN", "Infinity", "-Infinity".
    # They are stored as sent, as MLflow does: a loop that logs a NaN loss must keep running
    # (charts show a gap, alert rules skip it; Parity's own client skips them before sending).
    if isinstance(raw, str) and raw in ("NaN", "Infinity", "-Infinity"):
        raw = float(raw)
    if not isinstance(raw, int | float) or isinstance(raw, bool):
        raise invalid(at(path, "value"), f"must be a number (metric {key!r})")
    value = float(raw)
    if "timestamp" not in data:
        raise invalid(at(path, "timestamp"), f"is required (metric {key!r})")
    when = timestamp(data["timestamp"], at(path, "timestamp"))
    step = integer(data.get("step", 0), at(path, "step"), 0, MAX_STEP)
    return Metric(key, value, when, step)


def key_value(data: Any, path: str, max_value: int) -> tuple[str, str]:
    """A param or a tag: {key, value}."""
    if not isinstance(data, dict):
        raise invalid(path, "must be an object {key, value}")
    key = text(data, "key", MAX_ENTITY_KEY_LENGTH, at(path, "key"))
    value = data.get("value")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise invalid(at(path, "value"), "must be a string")
    return key, checked_text(at(path, "value"), value, max_value)


def entity_list(body: dict[str, Any], field: str, limit: int) -> list[Any]:
    items = body.get(field) or []
    if not isinstance(items, list):
        raise invalid(field, "must be a list")
    if len(items) > limit:
        raise invalid(
            field,
            f"a batch logging request can contain at most {limit} {field}; got {len(items)}. "
            "Split them across several requests.",
        )
    return items


@dataclass(frozen=True)
class Batch:
    metrics: list[Metric]
    params: dict[str, str]
    tags: dict[str, str]


def batch(body: dict[str, Any]) -> Batch:
    """The metrics, params and tags of a log-batch request, every limit and field checked."""
    metrics = entity_list(body, "metrics", MAX_METRICS_PER_BATCH)
    params = entity_list(body, "params", MAX_PARAMS_TAGS_PER_BATCH)
    tags = entity_list(body, "tags", MAX_PARAMS_TAGS_PER_BATCH)
    total = len(metrics) + len(params) + len(tags)
    if total > MAX_ENTITIES_PER_BATCH:
        raise invalid(
            "metrics",
            f"a batch logging request can contain at most {MAX_ENTITIES_PER_BATCH} metrics, "
            f"params and tags in total; got {total}",
        )
    parsed_params: dict[str, str] = {}
    for i, item in enumerate(params):
        key, value = key_value(item, f"params[{i}]", MAX_PARAM_VAL_LENGTH)
        if parsed_params.get(key, value) != value:
            raise invalid(f"params[{i}]", f"param {key!r} is given twice with different values")
        parsed_params[key] = value
    return Batch(
        metrics=[metric(item, f"metrics[{i}]") for i, item in enumerate(metrics)],
        params=parsed_params,
        tags=dict(key_value(item, f"tags[{i}]", MAX_TAG_VAL_LENGTH) for i, item in enumerate(tags)),
    )


def double(value: float) -> float | str:
    """A double as protobuf's JSON writes it (and MLflow's client parses it): NaN and the
    infinities as strings."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def millis(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp() * 1000)
