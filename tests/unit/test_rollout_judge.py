"""The rollout's online gates (`rollout.judge`) on evidence built by hand: each gate passes and
fails on its own, at its limit and just past it. No servers, no database."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shipyard.monitor.stats import LATENCY_BUCKETS_MS, Summary
from shipyard.update.rollout import GATES, RolloutConfig, judge, parse_gates


def side(requests: int = 1000, errors: int = 0, p99_ms: float | None = 10.0, accuracy: float | None = None,
         labels: int = 0) -> dict[str, Any]:
    """One side of `rollout.evidence`: the serving summary's fields, then the labelled accuracy."""
    summary = Summary(requests, errors, 0, np.zeros(len(LATENCY_BUCKETS_MS), dtype=np.int64)).to_dict()
    return {**summary, "p99_ms": p99_ms, "accuracy": accuracy, "labels": labels}


def evidence(candidate: dict[str, Any] | None = None, champion: dict[str, Any] | None = None,
             agreement: float | None = 0.99, agreement_n: int = 500) -> dict[str, Any]:
    return {"candidate": candidate or side(), "champion": champion or side(),
            "agreement": agreement, "agreement_n": agreement_n}


def verdicts(ev: dict[str, Any], config: RolloutConfig | None = None) -> dict[str, dict[str, Any]]:
    return {v["gate"]: v for v in judge(ev, config or RolloutConfig())}


def failed(ev: dict[str, Any], config: RolloutConfig | None = None) -> list[str]:
    return [g for g, v in verdicts(ev, config).items() if not v["passed"]]


def test_healthy_evidence_passes_every_gate() -> None:
    got = verdicts(evidence())
    assert list(got) == list(GATES) and all(v["passed"] for v in got.values())


def test_error_rate_gate_passes_at_its_limit() -> None:
    got = verdicts(evidence(candidate=side(requests=1000, errors=10)), RolloutConfig(max_error_rate=0.01))
    assert got["error_rate"]["passed"] and got["error_rate"]["value"] == 0.01
    assert got["error_rate"]["detail"] == "10 of 1000 answers failed"


def test_error_rate_gate_fails_past_its_limit_and_alone() -> None:
    got = verdicts(evidence(candidate=side(requests=1000, errors=11)), RolloutConfig(max_error_rate=0.01))
    assert not got["error_rate"]["passed"]
    assert got["error_rate"]["value"] == pytest.approx(0.011) and got["error_rate"]["limit"] == 0.01
    assert failed(evidence(candidate=side(requests=1000, errors=11))) == ["error_rate"]
    # the champion's errors are not the candidate's
    assert failed(evidence(champion=side(requests=1000, errors=500))) == []


def test_error_rate_gate_with_no_answers_has_nothing_to_fail_on() -> None:
    got = verdicts(evidence(candidate=side(requests=0, p99_ms=None)))
    assert got["error_rate"]["passed"] and got["error_rate"]["value"] == 0.0


def test_p99_gate_passes_up_to_twice_the_champion_plus_5_ms() -> None:
    got = verdicts(evidence(candidate=side(p99_ms=25.0), champion=side(p99_ms=10.0)))
    assert got["p99"]["passed"] and got["p99"]["limit"] == 25.0
    assert "2× the champion's + 5 ms" in got["p99"]["detail"]


def test_p99_gate_fails_past_twice_the_champion_plus_5_ms_and_alone() -> None:
    ev = evidence(candidate=side(p99_ms=25.5), champion=side(p99_ms=10.0))
    got = verdicts(ev)
    assert not got["p99"]["passed"] and got["p99"]["value"] == 25.5 and got["p99"]["limit"] == 25.0
    assert failed(ev) == ["p99"]


def test_p99_gate_with_a_fixed_limit_ignores_the_champion() -> None:
    config = RolloutConfig(max_p99_ms=40.0)
    assert verdicts(evidence(candidate=side(p99_ms=40.0), champion=side(p99_ms=1.0)), config)["p99"]["passed"]
    got = verdicts(evidence(candidate=side(p99_ms=41.0), champion=side(p99_ms=100.0)), config)["p99"]
    assert not got["passed"] and got["limit"] == 40.0
    assert got["detail"] == "candidate p99 (server side)"


def test_p99_gate_without_a_measurement_passes() -> None:
    assert verdicts(evidence(candidate=side(p99_ms=None)))["p99"]["passed"]  # nothing timed yet
    got = verdicts(evidence(candidate=side(p99_ms=500.0), champion=side(p99_ms=None)))["p99"]
    assert got["passed"] and got["limit"] is None  # no champion latency to compare with, no limit given


def test_only_the_chosen_gates_are_judged() -> None:
    config = parse_gates(["p99<=40"], RolloutConfig())
    ev = evidence(candidate=side(requests=100, errors=50, p99_ms=41.0))
    assert [v["gate"] for v in judge(ev, config)] == ["p99"] and failed(ev, config) == ["p99"]
    config = parse_gates(["error_rate<=0.6"], RolloutConfig())
    assert failed(ev, config) == [] and [v["gate"] for v in judge(ev, config)] == ["error_rate"]


def test_accuracy_gate_fails_a_clearly_worse_candidate_and_skips_without_labels() -> None:
    worse = evidence(candidate=side(accuracy=0.80, labels=2000), champion=side(accuracy=0.90, labels=2000))
    assert failed(worse) == ["accuracy"]
    same = evidence(candidate=side(accuracy=0.90, labels=2000), champion=side(accuracy=0.90, labels=2000))
    assert failed(same) == []
    unlabelled = verdicts(evidence(candidate=side(accuracy=0.1, labels=0), champion=side(accuracy=0.9, labels=50)))
    assert unlabelled["accuracy"]["passed"] and "skipped" in unlabelled["accuracy"]["detail"]


def test_agreement_gate_fails_below_its_minimum_unless_the_labels_favour_the_candidate() -> None:
    assert failed(evidence(agreement=0.5)) == ["agreement"]
    better = evidence(candidate=side(accuracy=0.95, labels=2000), champion=side(accuracy=0.80, labels=2000),
                      agreement=0.5)
    got = verdicts(better)["agreement"]
    assert got["passed"] and "the champion is the one that is wrong" in got["detail"]
    assert verdicts(evidence(agreement=None))["agreement"]["passed"]  # nothing replayed: skipped
