"""Which variant goes into the bundle, and why."""

from __future__ import annotations

from shipyard.errors import UsageError
from shipyard.optimizing.evaluate import Measured
from shipyard.optimizing.invariance import TOLERANCE

ACCURACY_TOLERANCE = 0.005  # within 0.5 point of fp32
MAE_TOLERANCE = 0.02  # a regression: MAE within 2% of fp32's
TIE = 0.05  # within 5% on the ranking metric: a tie, and the smaller file wins
OBJECTIVES = ("throughput", "latency")


def choose(variants: list[Measured], objective: str = "throughput", *,
           allow_batch_variance: bool = False) -> tuple[Measured, str]:
    """Best on the objective (batch-64 throughput, or batch-1 p50 latency) among variants whose
    accuracy is within 0.5 point of fp32 and, unless `allow_batch_variance`, whose answers do not
    depend on their batch-mates (a server batches requests: a variant that is not proven
    invariant would answer one client according to the others); near-ties go to the smallest
    file."""
    if objective not in OBJECTIVES:
        raise UsageError(f"--optimize-for {objective!r}: choose {' or '.join(OBJECTIVES)}")
    fp32 = next((v for v in variants if v.name == "fp32"), None)
    if fp32 is None:
        raise UsageError("the fp32 variant is the accuracy reference; it cannot be left out")
    regression = fp32.mae is not None
    if regression:
        assert fp32.mae is not None
        ceiling = fp32.mae * (1 + MAE_TOLERANCE)
        accurate = [v for v in variants if v.mae is not None and v.mae <= ceiling]
    else:
        assert fp32.accuracy is not None
        floor = fp32.accuracy - ACCURACY_TOLERANCE
        accurate = [v for v in variants if v.accuracy is not None and v.accuracy >= floor]
    eligible = [v for v in accurate if allow_batch_variance or v.batch_invariant is True]
    variant_ones = [v for v in accurate if v not in eligible]
    if not eligible:
        found = ", ".join(f"{v.name} {_diff(v)}" for v in variant_ones)
        raise UsageError(f"no variant answers the same alone and inside a batch (max difference of "
                         f"probabilities: {found}; invariant means ≤ {TOLERANCE:g}); pass "
                         "--allow-batch-variance to bundle one anyway (servers then refuse to batch it, or "
                         "serve it unbatched with --unbatched-if-variant)")

    def score(v: Measured) -> float:  # higher is better
        return v.throughput_per_s if objective == "throughput" else -v.latency_p50_ms

    best = max(eligible, key=score)
    if objective == "throughput":
        ties = [v for v in eligible if v.throughput_per_s >= best.throughput_per_s * (1 - TIE)]
    else:
        ties = [v for v in eligible if v.latency_p50_ms <= best.latency_p50_ms * (1 + TIE)]
    chosen = min(ties, key=lambda v: (v.size_bytes, -score(v)))
    dropped = [v.name for v in variants if v not in accurate]
    metric = "batch-64 throughput" if objective == "throughput" else "batch-1 p50 latency"
    reason = f"best {metric} among variants " + (f"within {MAE_TOLERANCE:.0%} of fp32's MAE" if regression else
                                                  f"within {ACCURACY_TOLERANCE * 100:.1f} points of fp32 accuracy")
    reason += ", batch-variant ones allowed" if allow_batch_variance else " that answer the same inside a batch"
    if dropped:
        reason += f" ({', '.join(dropped)} lost more accuracy)"
    if variant_ones:
        reason += f" ({', '.join(f'{v.name} {_diff(v)}' for v in variant_ones)} inside a batch)"
    if len(ties) > 1:
        reason += f"; {', '.join(v.name for v in ties)} within {TIE:.0%} of each other, smallest file wins"
    if allow_batch_variance and chosen.batch_invariant is not True:
        reason += f"; {chosen.name} is not batch-invariant: servers refuse to batch it"
    return chosen, reason


def _diff(v: Measured) -> str:
    return "not measured" if v.batch_max_diff is None else f"differs by up to {v.batch_max_diff:.2g}"
