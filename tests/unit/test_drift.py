"""The drift detectors as functions over arrays, on synthetic data with known answers (fixed
seeds: the same windows every run)."""

from __future__ import annotations

import numpy as np
import pytest

from shipyard.monitor import drift
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


def test_vectorized_calibration_gives_the_same_p_values_as_one_window_at_a_time() -> None:
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(600, 5)).astype(np.float16).astype(np.float32)
    null = rng.normal(size=(600, 5)).astype(np.float16).astype(np.float32)
    null[:, 2] = np.round(null[:, 2] * 2) / 2  # heavy ties, as float16 projections have
    wins = np.stack([rng.choice(600, 40, replace=False) for _ in range(25)])
    d = drift._ks_null_stat(ref, null, wins)
    np.testing.assert_allclose(drift._ks_p(d, 600, 40, 5), [drift.input_drift(ref, null[w]).p_value for w in wins],
                               rtol=1e-9, atol=1e-12)
    freq = np.array([0.5, 0.3, 0.15, 0.05])
    pred = rng.integers(0, 4, 600)
    np.testing.assert_allclose(drift._chi2_null_p(freq, pred, wins),
                               [drift.prediction_drift(freq, pred[w]).p_value for w in wins], rtol=1e-9)


def test_calibrate_all_matches_the_generic_calibration_and_alarms_on_a_shift() -> None:
    rng = np.random.default_rng(4)
    prof = rng.normal(size=(2000, 4)).astype(np.float32)
    conf = rng.uniform(0.5, 1, 2000).astype(np.float32)
    pred = rng.integers(0, 3, 2000)
    ref = drift.Reference(prof[:1000], conf[:1000], np.bincount(pred, minlength=3) / 2000, prof[1000:], pred[1000:],
                          conf[1000:], np.linspace(0, 1, 11), np.linspace(0.1, 1, 10), pred[:1000], pred[1000:],
                          pred[:1000])
    th = drift.calibrate_all(ref, 50, alpha=0.04, draws=400, seed=5)  # each of the four tests: 0.01 (no softmax)
    generic = drift.calibrate(lambda i: drift.input_drift(ref.profile, ref.null_profile[i]).p_value,
                              np.arange(1000), 50, alpha=0.01, draws=400, seed=5)
    assert th.input == pytest.approx(generic) and th.window == 50 and 0 < th.input <= 0.01
    calm = drift.evaluate(ref, th, prof[1000:1050], pred[1000:1050], conf[1000:1050])
    shifted = drift.evaluate(ref, th, prof[1000:1050] + 1.0, pred[1000:1050], conf[1000:1050])
    assert not calm["input"].alarm and shifted["input"].alarm
    assert set(calm) == {"input", "mean", "prediction", "confidence"}
    # a small shift of every column: KS per column with Bonferroni misses it more often than the mean test
    small = drift.evaluate(ref, th, prof[1000:1050] + 0.45, pred[1000:1050], conf[1000:1050])
    assert small["mean"].alarm and small["mean"].p_value < small["input"].p_value
    with pytest.raises(ValueError, match="need at least 2000 held-out rows"):
        drift.calibrate_all(ref, 2000)


def test_the_ks_tests_give_scipys_numbers_with_ties() -> None:
    from scipy import stats

    rng = np.random.default_rng(8)
    ref = rng.normal(size=(700, 6)).astype(np.float16).astype(np.float64)
    for shift in (0.0, 0.2, 0.6):
        win = rng.normal(shift, 1, size=(90, 6)).astype(np.float16).astype(np.float64)
        win[:, 1] = np.round(win[:, 1])  # ties inside the window and with the reference
        res = stats.ks_2samp(ref, win, axis=0, method="asymp")
        got = input_drift(ref, win)
        assert got.score == pytest.approx(np.max(res.statistic), abs=1e-12)
        assert got.p_value == pytest.approx(min(1.0, np.min(res.pvalue) * 6), rel=1e-9, abs=1e-300)
        one = stats.ks_2samp(ref[:, 0], win[:, 0], method="asymp")
        conf = confidence_drift(ref[:, 0], win[:, 0])
        assert (conf.score, conf.p_value) == (pytest.approx(one.statistic), pytest.approx(one.pvalue, rel=1e-9))


def test_thresholds_computed_at_bundle_time_are_used_as_they_are() -> None:
    from shipyard.bundle import reference

    rng = np.random.default_rng(9)
    x = rng.random((900, 784)).astype(np.float32)
    probs = rng.dirichlet(np.ones(10), size=800).astype(np.float32)
    ref = reference.build(x, probs, rng.integers(0, 10, 800), x_val=rng.random((800, 784)).astype(np.float32))
    ref["drift_thresholds"] = drift.precalibrate(ref, (100, 250), alpha=0.002, draws=300)
    assert ref["drift_thresholds"].shape == (2, 9)
    r = drift.Reference.from_arrays(ref)
    pre = r.thresholds(100, alpha=0.002, draws=300)
    fresh = drift.calibrate_all(r, 100, alpha=0.002, draws=300)
    assert pre.source == "bundle" and (pre.input, pre.prediction, pre.confidence, pre.mean, pre.cusum,
                                       pre.softmax) == pytest.approx(
        (fresh.input, fresh.prediction, fresh.confidence, fresh.mean, fresh.cusum, fresh.softmax))
    assert 0 < pre.softmax <= 0.002 / 5  # the bundle keeps its held-out probabilities: the softmax test runs
    assert r.thresholds(100, alpha=0.002, draws=400).source == "calibrated"  # other settings: calibrated now
    assert reference.summary(ref)["drift_thresholds"][1]["window"] == 250
