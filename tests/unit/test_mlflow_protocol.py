"""MLflow's wire format: every field checked, every refusal names its field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from dashboard.core.mlflow import protocol
from dashboard.core.mlflow.protocol import MlflowError

pytestmark = pytest.mark.unit


def refused(fn: Any, *args: Any) -> MlflowError:
    with pytest.raises(MlflowError) as raised:
        fn(*args)
    assert raised.value.status == 400 and raised.value.error_code == "INVALID_PARAMETER_VALUE"
    return raised.value


def test_a_metric_takes_protobufs_json_forms_of_int64() -> None:
    m = protocol.metric({"key": "kl_k3", "value": 1, "timestamp": "1700000000123", "step": "5"})
    assert m == protocol.Metric("kl_k3", 1.0, datetime.fromtimestamp(1700000000.123, UTC), 5)
    assert protocol.metric({"key": "k", "value": 0.5, "timestamp": 0}).step == 0  # MLflow default


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"value": 1.0, "timestamp": 0}, "metrics[2].key"),
        ({"key": "", "value": 1.0, "timestamp": 0}, "metrics[2].key"),
        ({"key": "k", "value": True, "timestamp": 0}, "metrics[2].value"),
        ({"key": "k", "value": "a lot", "timestamp": 0}, "metrics[2].value"),
        ({"key": "k", "value": 1.0}, "metrics[2].timestamp"),
        ({"key": "k", "value": 1.0, "timestamp": 2**70}, "metrics[2].timestamp"),
        ({"key": "k", "value": 1.0, "timestamp": "9" * 400}, "metrics[2].timestamp"),
        ({"key": "k", "value": 1.0, "timestamp": 1.5}, "metrics[2].timestamp"),
        ({"key": "k", "value": 1.0, "timestamp": 0, "step": 2**63}, "metrics[2].step"),
        ({"key": "k", "value": 1.0, "timestamp": 0, "step": None}, "metrics[2].step"),
        ({"key": "\ud800", "value": 1.0, "timestamp": 0}, "metrics[2].key"),
        ("kl_k3", "metrics[2]"),
    ],
)
def test_a_bad_metric_is_refused_by_its_field(data: Any, field: str) -> None:
    error = refused(protocol.metric, data, "metrics[2]")
    assert error.field == field and error.message.startswith(field + ": ")


def test_nan_and_infinities_are_taken_as_mlflow_takes_them() -> None:
    for sent in ("NaN", "Infinity", "-Infinity"):
        value = protocol.metric({"key": "loss", "value": sent, "timestamp": 0}).value
        assert str(value) == str(float(sent))
        assert protocol.double(value) == sent  # and written back as protobuf's JSON does
    assert protocol.double(0.25) == 0.25


def test_the_latest_timestamp_is_the_native_ingests_latest_wall_time() -> None:
    # The same bound as a native point's time: one hostile time must not poison alert state.
    assert protocol.timestamp(protocol.MAX_TIMESTAMP_MS, "t").year == 2999
    refused(protocol.timestamp, protocol.MAX_TIMESTAMP_MS + 1, "t")


def test_a_batch_at_mlflows_limits_passes_and_one_more_is_refused() -> None:
    metric = {"key": "k", "value": 1.0, "timestamp": 0, "step": 1}
    full = protocol.batch({"metrics": [metric] * 1000})
    assert len(full.metrics) == 1000
    assert refused(protocol.batch, {"metrics": [metric] * 1001}).field == "metrics"
    params = [{"key": f"p{i}", "value": "v"} for i in range(101)]
    assert refused(protocol.batch, {"params": params}).field == "params"
    tags = [{"key": f"t{i}", "value": "v"} for i in range(101)]
    assert refused(protocol.batch, {"tags": tags}).field == "tags"
    # 1,000 entities in all, whatever their mix.
    mixed = {"metrics": [metric] * 950, "params": params[:60]}
    assert "in total; got 1010" in refused(protocol.batch, mixed).message


def test_params_and_tags_keep_mlflows_lengths() -> None:
    ok = protocol.batch({"params": [{"key": "k" * 250, "value": "v" * 6000}]})
    assert ok.params == {"k" * 250: "v" * 6000}
    error = refused(protocol.batch, {"params": [{"key": "k", "value": "v" * 6001}]})
    assert error.field == "params[0].value" and "at most 6000" in error.message
    assert refused(protocol.batch, {"tags": [{"key": "k" * 251}]}).field == "tags[0].key"
    assert protocol.batch({"tags": [{"key": "empty"}]}).tags == {"empty": ""}


def test_a_param_given_twice_in_one_batch_must_agree() -> None:
    same = [{"key": "lr", "value": "1e-6"}] * 2
    assert protocol.batch({"params": same}).params == {"lr": "1e-6"}
    differ = [{"key": "lr", "value": "1e-6"}, {"key": "lr", "value": "2e-6"}]
    assert refused(protocol.batch, {"params": differ}).field == "params[1]"


def test_statuses_map_both_ways() -> None:
    for mlflow_status, parity_status in protocol.STATUS_TO_PARITY.items():
        assert protocol.STATUS_TO_MLFLOW[parity_status] == mlflow_status
