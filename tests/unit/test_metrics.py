"""Bulk histogram observations give exactly what one-by-one observations give."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from shipyard.monitor.metrics import observe_many


def _exposition(values: list[float], bulk: bool) -> dict[str, float]:
    reg = CollectorRegistry()
    h = Histogram("t_seconds", "t", ["m"], buckets=(0.001, 0.01, 0.1, 1.0), registry=reg)
    child = h.labels("x")
    if bulk:
        observe_many(child, values)
    else:
        for v in values:
            child.observe(v)
    # every sample but the creation time, which differs between the two registries
    lines = generate_latest(reg).decode().splitlines()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))
            if "_created" not in k}


def test_bulk_observations_match_single_ones_including_bucket_edges_and_overflow() -> None:
    values = [0.0005, 0.001, 0.001, 0.0099, 0.01, 0.5, 1.0, 3.0, 7.5] + np.random.default_rng(0).random(500).tolist()
    bulk, single = _exposition(values, bulk=True), _exposition(values, bulk=False)
    assert bulk == pytest.approx(single, rel=1e-12)  # the sum may differ in its last bits
    assert bulk['t_seconds_bucket{le="0.001",m="x"}'] == sum(v <= 0.001 for v in values)


def test_nothing_observed_is_a_no_op() -> None:
    assert _exposition([], bulk=True) == _exposition([], bulk=False)
