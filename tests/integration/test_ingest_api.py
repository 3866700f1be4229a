"""The ingest API: runs, points, raw logprob arrays, series, keys, CSV; every bad input a 4xx."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import msgpack
import numpy as np
import pytest

from dashboard.core.models import ApiToken, MetricPoint, Run
from parity.client import scalar_values
from parity.metrics import compute_metrics

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


class Api:
    """The Django test client with a bearer token and JSON bodies."""

    def __init__(self, client: Any, token: str) -> None:
        self.client = client
        self.auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get("/api" + path, params, **self.auth)

    def post(self, path: str, body: Any, content_type: str = "application/json") -> Any:
        data = body if isinstance(body, bytes | str) else json.dumps(body)
        return self.client.post("/api" + path, data, content_type=content_type, **self.auth)

    def patch(self, path: str, body: Any) -> Any:
        return self.client.patch(
            "/api" + path, json.dumps(body), content_type="application/json", **self.auth
        )


@pytest.fixture
def api(client: Any, alice_token: str) -> Api:
    return Api(client, alice_token)


@pytest.fixture
def run(api: Api) -> Run:
    response = api.post("/runs", {"project": "proj-a", "name": "r1", "tags": ["grpo"]})
    assert response.status_code == 201, response.content
    return Run.objects.get(pk=response.json()["id"])


def points(n: int, key: str = "kl_k3", start: int = 0) -> list[dict[str, Any]]:
    return [{"key": key, "step": start + i, "value": i * 0.5} for i in range(n)]


# --- runs ---------------------------------------------------------------------------------


def test_create_run_is_create_or_get(api: Api, run: Run) -> None:
    again = api.post(
        "/runs",
        {"project": "proj-a", "name": "r1", "tags": ["v1"], "fingerprint": {"vllm": "0.11"}},
    )
    assert again.status_code == 200
    body = again.json()
    assert body["id"] == run.pk
    assert body["tags"] == ["grpo", "v1"]
    assert body["fingerprint"] == {"vllm": "0.11"}
    assert Run.objects.count() == 1


def test_token_reaches_only_its_project(api: Api, make_member: Any, run: Run) -> None:
    bob = make_member("bob", "proj-b")
    from dashboard.core.models import Project

    other_run = Run.objects.create(project=Project.objects.get(slug="proj-b"), name="theirs")
    assert api.post("/runs", {"project": "proj-b", "name": "x"}).status_code == 404
    assert api.post(f"/runs/{other_run.pk}/points", {"points": points(1)}).status_code == 404
    assert api.get(f"/runs/{other_run.pk}/series", key="kl_k3").status_code == 404
    assert api.get("/projects/proj-b/runs").status_code == 404
    # Alice is not even a member of proj-b; bob's token for proj-b still cannot reach proj-a.
    _, bob_token = ApiToken.issue(bob, Project.objects.get(slug="proj-b"), "t")
    bob_api = Api(api.client, bob_token)
    assert bob_api.post(f"/runs/{run.pk}/points", {"points": points(1)}).status_code == 404
    assert not MetricPoint.objects.exists()


def test_update_status(api: Api, run: Run) -> None:
    response = api.patch(f"/runs/{run.pk}", {"status": "running"})
    assert response.status_code == 200 and response.json()["status"] == "running"
    assert response.json()["started"] is not None
    response = api.patch(f"/runs/{run.pk}", {"status": "finished"})
    assert response.json()["finished"] is not None
    assert api.patch(f"/runs/{run.pk}", {"status": "exploded"}).status_code == 422


def test_list_runs_filters_and_pages(api: Api, run: Run) -> None:
    for i in range(5):
        api.post(
            "/runs",
            {
                "project": "proj-a",
                "name": f"sweep-{i}",
                "tags": ["sweep"],
                "status": "finished" if i % 2 else "running",
            },
        )
    page = api.get("/projects/proj-a/runs", tag="sweep", limit=2).json()
    assert page["count"] == 5 and len(page["items"]) == 2
    rest = api.get("/projects/proj-a/runs", tag="sweep", limit=2, offset=4).json()
    assert len(rest["items"]) == 1
    assert api.get("/projects/proj-a/runs", status="finished").json()["count"] == 2
    assert api.get("/projects/proj-a/runs", name="r1").json()["items"][0]["id"] == run.pk
    assert api.get("/projects/proj-a/runs", kind="replay").json()["count"] == 0


# --- points ---------------------------------------------------------------------------------


def test_points_upsert_and_resend_changes_nothing(api: Api, run: Run) -> None:
    batch = {"points": points(100) + points(100, key="clip_rate")}
    assert api.post(f"/runs/{run.pk}/points", batch).json() == {"written": 200}
    before = list(MetricPoint.objects.order_by("key", "step").values_list("key", "step", "value"))
    assert api.post(f"/runs/{run.pk}/points", batch).json() == {"written": 200}
    after = list(MetricPoint.objects.order_by("key", "step").values_list("key", "step", "value"))
    assert before == after and len(after) == 200
    run.refresh_from_db()
    assert run.last_step == 99


BAD_BATCHES = [
    ("nan value", [{"key": "k", "step": 1, "value": "NaN"}], 422, "points.0.value"),
    (
        "inf value",
        '{"points": [{"key": "k", "step": 1, "value": Infinity}]}',
        422,
        "points.0.value",
    ),
    ("huge value", '{"points": [{"key": "k", "step": 1, "value": 1e999}]}', 422, "points.0.value"),
    ("negative step", [{"key": "k", "step": -1, "value": 1.0}], 422, "points.0.step"),
    ("fractional step", [{"key": "k", "step": 1.5, "value": 1.0}], 422, "points.0.step"),
    ("string step", [{"key": "k", "step": "3", "value": 1.0}], 422, "points.0.step"),
    # One rule for both numbers: JSON numbers only (a string "1.5" was taken as 1.5).
    ("string value", [{"key": "k", "step": 1, "value": "1.5"}], 422, "points.0.value"),
    ("step past bigint", [{"key": "k", "step": 2**63, "value": 1.0}], 422, "points.0.step"),
    ("empty key", [{"key": "", "step": 1, "value": 1.0}], 422, "points.0.key"),
    ("long key", [{"key": "k" * 129, "step": 1, "value": 1.0}], 422, "points.0.key"),
    ("NUL in key", [{"key": "a\x00b", "step": 1, "value": 1.0}], 422, "points.0.key"),
    ("missing value", [{"key": "k", "step": 1}], 422, "points.0.value"),
    ("malformed JSON", '{"points": [', 400, None),
]


@pytest.mark.parametrize("case", BAD_BATCHES, ids=[c[0] for c in BAD_BATCHES])
def test_bad_points_get_4xx_and_write_nothing(api: Api, run: Run, case: tuple[Any, ...]) -> None:
    _, bad, status, field = case
    # One good point in front: a bad batch must not land half.
    body = bad if isinstance(bad, str) else {"points": points(1, key="good") + bad}
    if field:
        field = field.replace("points.0", "points.1") if not isinstance(bad, str) else field
    response = api.post(f"/runs/{run.pk}/points", body)
    assert response.status_code == status, response.content
    if field:
        assert field in [e["field"] for e in response.json()["errors"]]
    assert not MetricPoint.objects.exists()


def test_oversized_batch_is_413(api: Api, run: Run) -> None:
    response = api.post(f"/runs/{run.pk}/points", {"points": points(10_001)})
    assert response.status_code == 413
    assert response.json()["field"] == "points"
    assert not MetricPoint.objects.exists()
    assert (
        api.post(f"/runs/{run.pk}/points", {"points": points(10_000)}).json()["written"] == 10_000
    )


def test_unknown_run_wrong_token_and_bad_json(api: Api, run: Run, client: Any) -> None:
    assert api.post("/runs/987654321/points", {"points": points(1)}).status_code == 404
    assert api.post(f"/runs/{2**70}/points", {"points": points(1)}).status_code in (404, 422)
    wrong = Api(client, "pty_not-a-token")
    assert wrong.post(f"/runs/{run.pk}/points", {"points": points(1)}).status_code == 401
    assert api.post(f"/runs/{run.pk}/points", "not json").status_code == 400
    assert (
        api.post(
            "/runs", {"project": "proj-a", "name": "x", "fingerprint": {"a": "\x00"}}
        ).status_code
        == 422
    )
    assert not MetricPoint.objects.exists()


# --- raw logprob arrays -----------------------------------------------------------------------


def arrays(n_seq: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    seq_lens = rng.integers(1, 40, n_seq)
    lr = -rng.exponential(1.5, int(seq_lens.sum()))
    lt = lr + rng.normal(0, 0.05, lr.shape)
    return lt, lr, seq_lens


def stored(run: Run, step: int) -> dict[str, float]:
    return dict(MetricPoint.objects.filter(run=run, step=step).values_list("key", "value"))


def test_raw_json_gives_the_metrics_computed_locally(api: Api, run: Run) -> None:
    lt, lr, seq_lens = arrays()
    body = {"step": 3, "lt": lt.tolist(), "lr": lr.tolist(), "seq_lens": seq_lens.tolist()}
    response = api.post(f"/runs/{run.pk}/logprobs", body)
    assert response.status_code == 200, response.content
    local = scalar_values(compute_metrics(lt, lr, seq_lens).values)
    assert stored(run, 3) == local
    assert response.json()["written"] == len(local)


def test_raw_msgpack_binary_gives_the_same_metrics(api: Api, run: Run) -> None:
    lt, lr, seq_lens = arrays(seed=1)
    lt32, lr32 = lt.astype(np.float32), lr.astype(np.float32)
    body = msgpack.packb(
        {
            "step": 4,
            "lt": {"dtype": "<f4", "data": lt32.tobytes()},
            "lr": {"dtype": "<f4", "data": lr32.tobytes()},
            "seq_lens": seq_lens.tolist(),
        }
    )
    response = api.post(f"/runs/{run.pk}/logprobs.msgpack", body, "application/msgpack")
    assert response.status_code == 200, response.content
    assert stored(run, 4) == scalar_values(compute_metrics(lt32, lr32, seq_lens).values)


def test_bad_raw_arrays_get_4xx_and_write_nothing(api: Api, run: Run) -> None:
    path = f"/runs/{run.pk}/logprobs"
    r = api.post(path, {"step": 1, "lt": [-1.0, -2.0], "lr": [-1.0]})
    assert r.status_code == 422 and r.json()["field"] == "lr"
    r = api.post(path, {"step": 1, "lt": [-1.0, -2.0], "lr": [-1.0, -2.0], "seq_lens": [3]})
    assert r.status_code == 422 and r.json()["field"] == "seq_lens"
    assert api.post(path, {"step": -1, "lt": [-1.0], "lr": [-1.0]}).status_code == 422
    mp = f"/runs/{run.pk}/logprobs.msgpack"
    assert api.post(mp, b"\xc1garbage", "application/msgpack").status_code == 400
    r = api.post(
        mp,
        msgpack.packb({"step": 1, "lt": {"dtype": "<f4", "data": b"abc"}, "lr": [1.0]}),
        "application/msgpack",
    )
    assert r.status_code == 422 and r.json()["field"] == "lt"
    r = api.post(
        mp, msgpack.packb({"step": 1, "lt": [-1.0], "lr": [-1.0, -2.0]}), "application/msgpack"
    )
    assert r.status_code == 422 and r.json()["field"] == "lr"
    assert (
        api.post("/runs/987654321/logprobs", {"step": 1, "lt": [-1.0], "lr": [-1.0]}).status_code
        == 404
    )
    assert not MetricPoint.objects.exists()


# --- reads ----------------------------------------------------------------------------------


def test_series_downsamples_and_keeps_the_spike(
    api: Api, run: Run, django_capture_on_commit_callbacks: Any
) -> None:
    values = np.sin(np.arange(20_000) / 500.0)
    values[12_345] = 50.0
    for lo in range(0, 20_000, 10_000):
        batch = [
            {"key": "clip_rate", "step": i, "value": float(values[i])}
            for i in range(lo, lo + 10_000)
        ]
        api.post(f"/runs/{run.pk}/points", {"points": batch})
    body = api.get(f"/runs/{run.pk}/series", key="clip_rate", max_points=200).json()
    assert body["total"] == 20_000 and body["downsampled"] and len(body["steps"]) <= 200
    assert 12_345 in body["steps"] and 50.0 in body["values"]
    assert body["steps"] == sorted(body["steps"])
    part = api.get(f"/runs/{run.pk}/series", key="clip_rate", start=100, end=149).json()
    assert part["steps"] == list(range(100, 150)) and not part["downsampled"]
    # A later write shows up in the next read (the per-process cache is kept fresh).
    with django_capture_on_commit_callbacks(execute=True):
        api.post(
            f"/runs/{run.pk}/points", {"points": [{"key": "clip_rate", "step": 120, "value": -7.0}]}
        )
    part = api.get(f"/runs/{run.pk}/series", key="clip_rate", start=120, end=120).json()
    assert part["values"] == [-7.0]
    assert api.get(f"/runs/{run.pk}/series", key="clip_rate", max_points=2).status_code == 422


# The sync test client collects the async stream; daphne streams it (see the live bench).
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume")
def test_keys_and_csv_export(api: Api, run: Run) -> None:
    api.post(f"/runs/{run.pk}/points", {"points": points(3, "kl_k3") + points(2, "clip_rate", 5)})
    assert api.get(f"/runs/{run.pk}/keys").json() == [
        {"key": "clip_rate", "first_step": 5, "last_step": 6},
        {"key": "kl_k3", "first_step": 0, "last_step": 2},
    ]
    response = api.get(f"/runs/{run.pk}/export.csv")
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    lines = b"".join(response).decode().splitlines()
    assert lines[0] == "key,step,value,time"
    rows = [line.split(",") for line in lines[1:]]
    assert [(key, int(step), float(value)) for key, step, value, _ in rows] == [
        ("clip_rate", 5, 0.0),
        ("clip_rate", 6, 0.5),
        ("kl_k3", 0, 0.0),
        ("kl_k3", 1, 0.5),
        ("kl_k3", 2, 1.0),
    ]
    assert datetime.fromisoformat(rows[0][3]).tzinfo is not None


# --- hostile and mixed times (#15 §1, §2) ---------------------------------------------------


@pytest.mark.parametrize(
    "when",
    [
        "9999-12-31T23:59:59-14:00",  # year 10000 in UTC
        "0001-01-01T00:00:00+14:00",  # year 0 in UTC
        "1969-12-31T23:59:59Z",
        "3000-01-01T00:00:00Z",
    ],
)
def test_a_time_outside_the_accepted_range_is_refused_on_its_field(
    api: Api, run: Run, project_a: Any, when: str
) -> None:
    from dashboard.alerts.models import AlertRule

    AlertRule.objects.create(project=project_a, name="kl", metric_key="kl_k3", threshold=0.5)
    bad = {"points": [{"key": "kl_k3", "step": 1, "value": 0.9, "time": when}]}
    response = api.post(f"/runs/{run.pk}/points", bad)
    assert response.status_code == 422, response.content
    error = next(e for e in response.json()["errors"] if e["field"] == "points.0.time")
    assert "between 1970-01-01 and 3000-01-01" in error["reason"]
    # Nothing poisoned: the project's next batches, and its pages, keep working.
    ok = {"points": [{"key": "kl_k3", "step": s, "value": 0.9} for s in (2, 3)]}
    assert api.post(f"/runs/{run.pk}/points", ok).status_code == 200
    assert api.client.get(f"/runs/{run.pk}/", **api.auth).status_code in (200, 302)


def test_naive_and_aware_times_in_one_batch_are_all_taken_as_utc(
    api: Api, run: Run, project_a: Any
) -> None:
    from dashboard.alerts.models import AlertRule

    AlertRule.objects.create(
        project=project_a, name="kl", metric_key="kl_k3", threshold=0.5, for_steps=3
    )
    batch = {
        "points": [
            {"key": "kl_k3", "step": 1, "value": 0.9, "time": "2026-01-01T00:00:00+02:00"},
            {"key": "kl_k3", "step": 2, "value": 0.9, "time": "2026-01-01T00:00:01"},
        ]
    }
    assert api.post(f"/runs/{run.pk}/points", batch).status_code == 200
    later = {"points": [{"key": "kl_k3", "step": 3, "value": 0.9, "time": "2026-01-01T00:00:02"}]}
    assert api.post(f"/runs/{run.pk}/points", later).status_code == 200
    times = dict(MetricPoint.objects.filter(run=run).values_list("step", "wall_time"))
    assert times[1].isoformat() == "2025-12-31T22:00:00+00:00"
    assert times[2].isoformat() == "2026-01-01T00:00:01+00:00"
