"""Which variant goes into the bundle, and why."""

from __future__ import annotations

from shipyard.errors import UsageError
from shipyard.optimizing.evaluate import Measured

ACCURACY_TOLERANCE = 0.005  # within 0.5 point of fp32
TIE = 0.05  # within 5% on the ranking metric: a tie, and the smaller file wins
OBJECTIVES = ("throughput", "latency")


def choose(variants: list[Measured], objective: str = "throughput") -> tuple[Measured, str]:
    """Best on the objective (batch-64 throughput, or batch-1 p50 latency) among variants whose
    accuracy is within 0.5 point of fp32; near-ties go to the smallest file."""
    if objective not in OBJECTIVES:
        raise UsageError(f"--optimize-for {objective!r}: choose {' or '.join(OBJECTIVES)}")
    fp32 = next((v for v in variants if v.name == "fp32"), None)
    if fp32 is None:
        raise UsageError("the fp32 variant is the accuracy reference; it cannot be left out")
    floor = fp32.accuracy - ACCURACY_TOLERANCE
    eligible = [v for v in variants if v.accuracy >= floor]

    def score(v: Measured) -> float:  # higher is better
        return v.throughput_per_s if objective == "throughput" else -v.latency_p50_ms

    best = max(eligible, key=score)
    if objective == "throughput":
        ties = [v for v in eligible if v.throughput_per_s >= best.throughput_per_s * (1 - TIE)]
    else:
        ties = [v for v in eligible if v.latency_p50_ms <= best.latency_p50_ms * (1 + TIE)]
    chosen = min(ties, key=lambda v: (v.size_bytes, -score(v)))
    dropped = [v.name for v in variants if v not in eligible]
    metric = "batch-64 throughput" if objective == "throughput" else "batch-1 p50 latency"
    reason = f"best {metric} among variants within {ACCURACY_TOLERANCE * 100:.1f} points of fp32 accuracy"
    if dropped:
        reason += f" ({', '.join(dropped)} lost more accuracy)"
    if len(ties) > 1:
        reason += f"; {', '.join(v.name for v in ties)} within {TIE:.0%} of each other, smallest file wins"
    return chosen, reason
