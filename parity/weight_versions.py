"""Weight versions on a run's steps, and the signature of a cache that kept old weights.

A training loop says which policy version served each step's rollouts (the `weight_version`
key: `Monitor.log_step(..., weight_version=v)`, or a metric of that name over MLflow). After
a weight update the engine should serve the new weights at once. When its KV/prefix cache
still holds blocks computed with the old weights, the mismatch gap jumps right after each
update and decays as the cached requests turn over (reported in NeMo-RL, prime-rl and vLLM
issues; the fix is `reset_prefix_cache()` after every update). `version_gaps` measures the
gap right after each update against the rest of that version; `stale_cache_signature` says
whether the pattern holds across the run. Pure functions of (step, value) arrays.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

WEIGHT_VERSION_KEY = "weight_version"
# The alert rules' name for "the gap right after the last update / the rest of its version".
STALE_CACHE_KEY = "stale_cache_ratio"
# The gap judged, in order of preference (canonical names: a framework's key counts too).
GAP_KEYS = ("abs_diff_mean", "kl_k3")

# Defaults: the gap after an update at least twice the rest of its version, on at least
# three quarters of at least two updates.
MIN_RATIO = 2.0
MIN_UPDATES = 2
MIN_SHARE = 0.75

STALE_CACHE_NAME = "Stale KV/prefix cache after weight updates"
STALE_CACHE_FIX = "engine.reset_prefix_cache() after every weight update"


@dataclass(frozen=True)
class VersionGap:
    """One weight version that followed an update: the gap right after it and afterwards."""

    version: float
    first_step: int  # where the version begins (the update)
    last_step: int  # the last step of the version seen so far
    after_update: float  # the gap at the version's first step with a gap value
    rest_mean: float | None  # mean gap over the rest of the version; None: no step after
    rest_first: float | None  # the gap at the step after the update
    rest_last: float | None  # the gap at the version's last step
    n_rest: int
    complete: bool  # a later version began, so this one is over

    @property
    def ratio(self) -> float | None:
        """after_update / rest_mean; None without a rest, inf over a rest of exactly 0."""
        if self.rest_mean is None:
            return None
        if self.rest_mean <= 0:
            return math.inf if self.after_update > 0 else None
        return self.after_update / self.rest_mean

    @property
    def decays(self) -> bool:
        """The gap falls back gradually, as cached requests turn over: still falling after
        the update's step, and ending below halfway from the jump to the version's rest."""
        if self.rest_mean is None or self.rest_first is None or self.rest_last is None:
            return False
        return (
            self.rest_first > self.rest_last
            and self.rest_last < (self.after_update + self.rest_mean) / 2
        )


def version_starts(steps: Sequence[int], versions: Sequence[float]) -> list[tuple[int, float]]:
    """(step, version) where each version begins, the first one included; steps ascending."""
    out: list[tuple[int, float]] = []
    for step, version in zip(steps, versions, strict=True):
        if not math.isfinite(version):
            continue
        if not out or version != out[-1][1]:
            out.append((int(step), float(version)))
    return out


def version_gaps(
    version_steps: Sequence[int],
    versions: Sequence[float],
    gap_steps: Sequence[int],
    gaps: Sequence[float],
) -> list[VersionGap]:
    """The gap right after each weight update against the rest of that version.

    A version is in force from the step it first appears until the next one begins. The
    first version seen is not an update (nothing came before it) and is not reported; nor
    is a version with no finite gap value. Non-finite gap values are left out.
    """
    starts = version_starts(version_steps, versions)
    segments: list[list[tuple[int, float]]] = [[] for _ in starts]
    bounds = [s for s, _ in starts]
    i = -1
    for step, gap in sorted(zip(gap_steps, gaps, strict=True)):
        while i + 1 < len(bounds) and bounds[i + 1] <= step:
            i += 1
        if i >= 0 and math.isfinite(gap):
            segments[i].append((int(step), float(gap)))
    out = []
    for n, ((first, version), points) in enumerate(zip(starts, segments, strict=True)):
        if n == 0 or not points:
            continue
        rest = [g for _, g in points[1:]]
        out.append(
            VersionGap(
                version=version,
                first_step=first,
                last_step=points[-1][0],
                after_update=points[0][1],
                rest_mean=statistics.fmean(rest) if rest else None,
                rest_first=rest[0] if rest else None,
                rest_last=rest[-1] if rest else None,
                n_rest=len(rest),
                complete=n + 1 < len(starts),
            )
        )
    return out


@dataclass(frozen=True)
class StaleCacheSignature:
    """How the gap behaves after the run's weight updates, and whether it names a stale cache."""

    judged: int  # updates with a rest to compare against
    jumped: int  # of those, where the gap jumped (>= min_ratio) and decayed
    median_ratio: float
    after_update_mean: float
    rest_mean: float
    min_ratio: float
    shows: bool

    def describe(self, gap_key: str) -> str:
        """The diagnosis in words, with the numbers."""
        head = (
            f"right after a weight update, {gap_key} was {self.median_ratio:.3g}× the rest of "
            f"that version (median of {self.judged} updates; {self.after_update_mean:.3g} "
            f"vs {self.rest_mean:.3g})"
        )
        if self.shows:
            return (
                head[0].upper() + head[1:] + f", and it decayed as requests turned over after "
                f"{self.jumped} of {self.judged} updates: the signature of a KV/prefix cache "
                "computed with the old weights."
            )
        return (
            head[0].upper() + head[1:] + f"; it jumped ≥ {self.min_ratio:g}× and decayed after "
            f"{self.jumped} of {self.judged}: no stale-cache signature."
        )


def stale_cache_signature(
    gaps: Sequence[VersionGap],
    min_ratio: float = MIN_RATIO,
    min_updates: int = MIN_UPDATES,
    min_share: float = MIN_SHARE,
) -> StaleCacheSignature | None:
    """Judge the updates of `version_gaps`; None when no update has a rest to compare with.

    The signature shows when at least `min_updates` updates were judged and at least
    `min_share` of them jumped to `min_ratio` times the rest of their version and decayed.
    """
    judged = [g for g in gaps if g.ratio is not None]
    if not judged:
        return None
    jumped = [g for g in judged if (g.ratio or 0) >= min_ratio and g.decays]
    ratios = [g.ratio for g in judged if g.ratio is not None]
    return StaleCacheSignature(
        judged=len(judged),
        jumped=len(jumped),
        median_ratio=statistics.median(ratios),
        after_update_mean=statistics.fmean(g.after_update for g in judged),
        rest_mean=statistics.fmean(g.rest_mean for g in judged if g.rest_mean is not None),
        min_ratio=min_ratio,
        shows=len(judged) >= min_updates and len(jumped) >= min_share * len(judged),
    )
