"""Did the engine take W_k? Per-parameter checksums of the engine against the trainer's.

Two steps: `expected_checksums` hashes the trainer's tensors the way the engine's worker
extension hashes its own (`workers.weight_sync.tensor_checksum`: torch, imported when
called); `judge_checksums` compares the checksum dicts, in pure Python, so the judgement is
testable without torch or an engine. `compare_checksums` does both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from parity.reports.replay import ChecksumReport, NotUpdatedDetail, UpdateStatus

if TYPE_CHECKING:
    from workers.weight_sync import ParamChecksum

# name -> checksum ({"sha256", "dtype", "shape", "sum", "abs_sum", "source"}).
Checksums = Mapping[str, "ParamChecksum"]


def tied_sources(expected: Mapping[str, Any], engine: Checksums) -> dict[str, str]:
    """Engine name -> the trainer name its W_k is read from: itself, or for a tied layer the
    parameter it shares (`tied_to`) when W_k has no tensor of its own under that name (a tied
    checkpoint stores only the embedding)."""
    out = {name: name for name in expected}
    for name, cs in engine.items():
        tied_to = cs.get("tied_to")
        if name not in expected and tied_to is not None and tied_to in expected:
            out[name] = tied_to
    return out


def expected_checksums(expected: Mapping[str, Any], engine: Checksums) -> dict[str, ParamChecksum]:
    """The checksums of the trainer's tensors (HF name -> tensor), each cast first to the
    dtype the engine holds that parameter in (as load_weights casts it); a tied engine entry
    (`lm_head.weight` sharing the embedding) gets the checksum of the tensor it shares."""
    import torch

    from workers.weight_sync import tensor_checksum

    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    out: dict[str, ParamChecksum] = {}
    for name, source in sorted(tied_sources(expected, engine).items()):
        held = engine[name]["dtype"] if name in engine else None
        dtype = dtypes.get(held or "", expected[source].dtype)
        out[name] = tensor_checksum(expected[source].to(dtype))
    return out


def judge_checksums(
    engine: Checksums,
    expected: Checksums,
    previous_expected: Checksums | None,
    previous_engine: Checksums | None,
) -> ChecksumReport:
    """Per-parameter comparison of the engine's checksums with the trainer's W_k.

    Args:
        engine: the engine's checksums after the update (`parity_param_checksums`).
        expected: W_k's checksums in the engine's dtypes (`expected_checksums`).
        previous_expected: W_k-1's, the same way (None at W0).
        previous_engine: the engine's checksums before the update (None at W0).

    Returns:
        Counts, the names that did not take W_k (`not_updated`, with the numbers; a tied
        layer's entry says which parameter it shares), the names whose engine checksum did
        not change in this update (`unchanged_in_engine`) and, of those, the ones W_k did not
        change either in the engine's dtype (`unchanged_in_trainer`), names W_k has and the
        engine lacks, and the update status: "full" (every parameter holds W_k), "none" (no
        parameter that the update changed took W_k: a parameter W_k shares with W_k-1
        matches either way and says nothing) or "partial".
    """
    common = sorted(set(expected) & set(engine))
    not_updated: dict[str, NotUpdatedDetail] = {}
    matched = took_change = 0
    for name in common:
        got, want = engine[name], expected[name]
        if want["sha256"] == got["sha256"]:
            matched += 1
            before = previous_expected.get(name) if previous_expected is not None else None
            took_change += before is None or before["sha256"] != want["sha256"]
            continue
        entry = NotUpdatedDetail(
            engine_sum=got["sum"],
            expected_sum=want["sum"],
            sum_diff=got["sum"] - want["sum"],
            engine_abs_sum=got["abs_sum"],
            expected_abs_sum=want["abs_sum"],
            source=got.get("source"),
        )
        if got.get("tied_to") is not None:
            entry["tied_to"] = got["tied_to"]
        if previous_expected is not None and name in previous_expected:
            entry["equals_previous_weights"] = previous_expected[name]["sha256"] == got["sha256"]
        not_updated[name] = entry
    unchanged_engine = sorted(
        name
        for name in engine
        if previous_engine is not None
        and name in previous_engine
        and previous_engine[name]["sha256"] == engine[name]["sha256"]
    )
    unchanged_trainer = [
        name
        for name in unchanged_engine
        if previous_expected is not None
        and name in previous_expected
        and name in expected
        and previous_expected[name]["sha256"] == expected[name]["sha256"]
    ]
    missing = sorted(set(expected) - set(engine))
    status: UpdateStatus = (
        "full" if not not_updated and not missing else "none" if took_change == 0 else "partial"
    )
    return ChecksumReport(
        n_params=len(common),
        matched=matched,
        status=status,
        not_updated=sorted(not_updated),
        not_updated_detail=not_updated,
        missing_in_engine=missing,
        unchanged_in_engine=unchanged_engine,
        unchanged_in_trainer=unchanged_trainer,
    )


def compare_checksums(
    engine: Checksums,
    expected: Mapping[str, Any],
    previous_expected: Mapping[str, Any] | None,
    previous_engine: Checksums | None,
) -> ChecksumReport:
    """`judge_checksums` of the engine's checksums against tensors: `expected` is W_k and
    `previous_expected` W_k-1 (HF name -> tensor), hashed here (`expected_checksums`)."""
    want = expected_checksums(expected, engine)
    before = None if previous_expected is None else expected_checksums(previous_expected, engine)
    return judge_checksums(engine, want, before, previous_engine)
