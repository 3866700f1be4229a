"""A run's points: the live ingest (metric points, raw logprob arrays) and the reads for
charts (one key's series, downsampled), the keys of a run and CSV export.

Every write goes through `dashboard.core.points`; these handlers only validate. Mounted under
the runs router (points are a sub-resource of a run: /runs/{id}/points).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgpack
import numpy as np
from django.http import Http404, HttpRequest, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from ninja import Field, Query, Router, Schema
from pydantic import BaseModel, StrictInt

from dashboard.core.api import ApiError, ingest_operation_id, query_text
from dashboard.core.api.types import MetricKey, WallTime
from dashboard.core.auth import visible_runs
from dashboard.core.models import Run
from dashboard.core.points import Point as StoredPoint
from dashboard.core.points import csv_rows, list_keys, store_logprobs, store_visible_points
from dashboard.core.series import MAX_SERIES_POINTS, read_series

router = Router(tags=["ingest"])

MAX_BATCH = 10_000
MAX_STEP = 2**63 - 1


# Strict: a step of 1.5, "3" or true is a client bug, not something to round.
Step = Annotated[StrictInt, Field(ge=0, le=MAX_STEP)]
# Strict like the step: JSON numbers only, never a numeric string.
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]


class PointIn(BaseModel):
    # A plain pydantic model, not ninja.Schema: Schema wraps every object for Django
    # attribute access, which costs more than the rest of the request at 10,000 points.
    key: MetricKey
    step: Step
    value: FiniteFloat
    time: WallTime | None = Field(
        default=None,
        description="Wall time (ISO 8601; no offset means UTC), 1970-2999; default: arrival.",
    )


class PointsIn(Schema):
    points: list[PointIn] = Field(description=f"At most {MAX_BATCH} points (413 beyond).")


class WrittenOut(Schema):
    written: int


class LogprobsIn(Schema):
    step: Step
    lt: list[float] = Field(description="Trainer logprob of each response token (flattened).")
    lr: list[float] = Field(description="Rollout engine logprob of the same tokens.")
    seq_lens: list[Annotated[StrictInt, Field(ge=0)]] | None = Field(
        default=None, description="Response tokens per sequence; sums to len(lt). Default: one."
    )
    entropy: list[float] | None = Field(default=None, description="Trainer entropy per token.")


class LogprobsOut(Schema):
    step: int
    written: int
    values: dict[str, float | int | None]
    verdict: str


class KeyOut(Schema):
    key: str
    first_step: int
    last_step: int


class SeriesOut(Schema):
    key: str
    total: int = Field(description="Points in the step range before downsampling.")
    downsampled: bool
    steps: list[int]
    values: list[float | None]


def _run(request: HttpRequest, run_id: int) -> Run:
    return get_object_or_404(visible_runs(request).select_related("project"), pk=run_id)


# --- writes ---------------------------------------------------------------------------------


@router.post(
    "/runs/{run_id}/points",
    response=WrittenOut,
    summary="Log a batch of points",
    operation_id=ingest_operation_id("log_points"),
)
def log_points(request: HttpRequest, run_id: int, payload: PointsIn) -> Any:
    """Upsert up to 10,000 points in one transaction; a re-sent (key, step) replaces its value."""
    if len(payload.points) > MAX_BATCH:
        raise ApiError(
            413, f"{len(payload.points)} points in one batch; at most {MAX_BATCH}.", "points"
        )
    written = store_visible_points(
        visible_runs(request),
        run_id,
        (StoredPoint(p.key, p.step, p.value, p.time) for p in payload.points),
    )
    if written is None:
        raise Http404("No Run matches the given query.")
    return {"written": written}


def _store_logprobs(request: HttpRequest, run_id: int, step: int, arrays: dict[str, Any]) -> Any:
    run = _run(request, run_id)
    try:
        result, written = store_logprobs(run, step, **arrays)
    except ValueError as exc:
        # parity.metrics names the offending array first ("lr has 3 entries but lt has 4").
        message = str(exc)
        field = message.split(" ", 1)[0]
        raise ApiError(422, message, field if field in arrays else None) from exc
    return {"step": step, "written": written, "values": result.values, "verdict": result.verdict}


@router.post(
    "/runs/{run_id}/logprobs",
    response=LogprobsOut,
    summary="Log raw logprob arrays for a step (JSON)",
    operation_id=ingest_operation_id("log_logprobs"),
)
def log_logprobs(request: HttpRequest, run_id: int, payload: LogprobsIn) -> Any:
    """The server computes every METRICS.md metric with parity.metrics and stores them as
    this step's points. NaN/inf in lt or lr are counted (nonfinite_*), not refused.
    """
    arrays = {
        "lt": payload.lt,
        "lr": payload.lr,
        "seq_lens": payload.seq_lens,
        "entropy": payload.entropy,
    }
    return _store_logprobs(request, run_id, payload.step, arrays)


MSGPACK_DOC = (
    "A msgpack map {step, lt, lr, seq_lens?, entropy?}. Each array is a list of numbers or a "
    "map {dtype, data} with `data` the raw bytes of a little-endian array of `dtype` "
    "('<f4', '<f8' for lt/lr/entropy; '<i4', '<i8' for seq_lens): numpy's "
    "`{'dtype': a.dtype.str, 'data': a.tobytes()}`."
)
_DTYPES = {
    "lt": ("<f2", "<f4", "<f8"),
    "lr": ("<f2", "<f4", "<f8"),
    "entropy": ("<f2", "<f4", "<f8"),
    "seq_lens": ("<i4", "<i8", "<u4"),
}


def decode_array(name: str, value: Any) -> np.ndarray | None:
    """One array of the msgpack form, or ApiError naming it."""
    if value is None:
        return None
    if isinstance(value, list):
        try:
            kind = np.int64 if name == "seq_lens" else np.float64
            if name == "seq_lens" and not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                raise ValueError
            return np.asarray(value, dtype=kind)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ApiError(422, "must be a list of numbers", name) from exc
    if isinstance(value, dict):
        dtype, data = value.get("dtype"), value.get("data")
        if dtype not in _DTYPES[name]:
            raise ApiError(422, f"dtype must be one of {', '.join(_DTYPES[name])}", name)
        if not isinstance(data, bytes) or len(data) % np.dtype(dtype).itemsize:
            raise ApiError(422, f"data must be bytes, a whole number of {dtype} items", name)
        return np.frombuffer(data, dtype=dtype)
    raise ApiError(422, "must be a list of numbers or a {dtype, data} map", name)


@router.post(
    "/runs/{run_id}/logprobs.msgpack",
    response=LogprobsOut,
    summary="Log raw logprob arrays for a step (msgpack, binary arrays)",
    description=MSGPACK_DOC,
    openapi_extra={
        "requestBody": {
            "required": True,
            # Any content type is read as msgpack; declared as octet-stream so that generic
            # OpenAPI tooling (schemathesis, codegen) can send bytes.
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
    operation_id=ingest_operation_id("log_logprobs_msgpack"),
)
def log_logprobs_msgpack(request: HttpRequest, run_id: int) -> Any:
    try:
        body = msgpack.unpackb(request.body, raw=False, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types for garbage
        raise ApiError(400, f"body is not valid msgpack: {type(exc).__name__}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a msgpack map")
    step = body.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= MAX_STEP:
        raise ApiError(422, "must be an integer >= 0", "step")
    unknown = set(body) - {"step", *_DTYPES}
    if unknown:
        raise ApiError(422, f"unknown fields: {', '.join(sorted(map(str, unknown)))}", "body")
    for required in ("lt", "lr"):
        if body.get(required) is None:
            raise ApiError(422, "field required", required)
    arrays = {name: decode_array(name, body.get(name)) for name in _DTYPES}
    return _store_logprobs(request, run_id, step, arrays)


# --- reads ----------------------------------------------------------------------------------


@router.get(
    "/runs/{run_id}/keys",
    response=list[KeyOut],
    summary="The metric keys of a run",
    operation_id=ingest_operation_id("get_keys"),
)
def get_keys(request: HttpRequest, run_id: int) -> Any:
    return list_keys(_run(request, run_id))


@router.get(
    "/runs/{run_id}/series",
    response=SeriesOut,
    summary="One key's series, downsampled",
    operation_id=ingest_operation_id("get_series"),
)
def get_series(
    request: HttpRequest,
    run_id: int,
    key: Annotated[str, Query(min_length=1, max_length=128)],
    start: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None,
    end: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None,
    max_points: Annotated[int, Query(ge=3, le=MAX_SERIES_POINTS)] = 2000,
) -> Any:
    """Steps in [start, end], at most `max_points` of them, chosen by MinMaxLTTB so that
    spikes survive the reduction.
    """
    query_text("key", key)
    series = read_series(_run(request, run_id), key, start, end, max_points)
    return {
        "key": series.key,
        "total": series.total,
        "downsampled": series.downsampled,
        "steps": series.steps,
        "values": series.values,
    }


@router.get(
    "/runs/{run_id}/export.csv",
    summary="Every point of a run as CSV (streamed)",
    response={200: str},
    openapi_extra={
        "responses": {
            # An int, as in `response`: a "200" string beside it printed the key twice, which
            # the docs page refused to render ("duplicated mapping key").
            200: {
                "description": "key,step,value,time rows",
                "content": {"text/csv": {"schema": {"type": "string"}}},
            }
        }
    },
    operation_id=ingest_operation_id("export_csv"),
)
def export_csv(request: HttpRequest, run_id: int) -> StreamingHttpResponse:
    run = _run(request, run_id)
    response = StreamingHttpResponse(csv_rows(run), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="run-{run.pk}.csv"'
    return response
