"""The drift detectors as functions over arrays, on synthetic data with known answers (fixed
seeds: the same windows every run)."""

from __future__ import annotations

import numpy as np
import pytest

from shipyard.monitor.drift import calibrate, confidence_drift, estimated_accuracy, input_drift, prediction_drift

RNG = np.random.default_rng(0)
REF = RNG.normal(size=(2000, 8))
HELD_OUT = RNG.normal(size=(4000, 8))


def test_input_drift_rarely_alarms_without_shift_and_always_with_one() -> None:
    rng = np.random.default_rng(1)
    alarms = [input_drift(REF, rng.normal(size=(250, 8))).alarm for _ in range(200)]
    assert sum(alarms) <= 6  # Bonferroni at 1%: at most about 1% of windows, with room for chance
    shifted = rng.normal(size=(250, 8))
    shifted[:, 3] += 0.5  # half a standard deviation in one direction of eight
    res = input_drift(REF, shifted)
    assert res.alarm and res.p_value < 1e-4 and res.score > 0.15 and res.n == 250
    assert res.to_dict()["test"] == "input"


def test_input_drift_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same k"):
        input_drift(REF, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        input_drift(REF, np.zeros((1, 8)))


def test_prediction_drift_sees_a_class_mix_change_and_pools_rare_classes() -> None:
    freq = np.array([0.3, 0.3, 0.2, 0.19, 0.01])
    rng = np.random.default_rng(2)
    same = rng.choice(5, size=250, p=freq)
    two = rng.choice([0, 1], size=250)
    assert not prediction_drift(freq, same).alarm
    res = prediction_drift(freq, two)
    assert res.alarm and res.p_value < 1e-6
    assert prediction_drift(freq, np.array([4] * 60 + [0] * 40)).alarm  # a pooled rare class taking over
    assert prediction_drift(freq, np.array([4] * 10)).p_value == 1.0  # too few to say anything
    with pytest.raises(ValueError, match="0..4"):
        prediction_drift(freq, np.array([5]))


def test_confidence_drift_sees_a_less_sure_model() -> None:
    rng = np.random.default_rng(3)
    ref = rng.beta(8, 1, size=2000)
    assert not confidence_drift(ref, rng.beta(8, 1, size=250)).alarm
    assert confidence_drift(ref, rng.beta(3, 1, size=250)).alarm


def test_calibration_sets_the_threshold_to_the_wanted_false_alarm_share() -> None:
    def test(window: np.ndarray) -> float:
        return input_drift(REF, window).p_value

    threshold = calibrate(test, HELD_OUT, 100, alpha=0.02, draws=400, seed=4)
    assert 0 < threshold <= 0.02
    rng = np.random.default_rng(5)
    fresh = [test(rng.normal(size=(100, 8))) <= threshold for _ in range(400)]
    assert np.mean(fresh) <= 0.05  # about alpha on windows it never saw
    with pytest.raises(ValueError, match="held-out rows"):
        calibrate(test, HELD_OUT[:50], 100, alpha=0.01)


def test_estimated_accuracy_weights_each_prediction_by_its_confidence_bins_accuracy() -> None:
    edges = np.linspace(0, 1, 5)  # bins [0,.25) [.25,.5) [.5,.75) [.75,1]
    bin_acc = np.array([np.nan, 0.4, 0.7, 0.95])
    conf = np.array([0.3, 0.6, 0.6, 0.99, 1.0])
    assert estimated_accuracy(conf, edges, bin_acc) == pytest.approx((0.4 + 0.7 + 0.7 + 0.95 + 0.95) / 5)
    assert estimated_accuracy(np.array([0.1]), edges, bin_acc) is None
    assert estimated_accuracy(np.array([]), edges, bin_acc) is None
