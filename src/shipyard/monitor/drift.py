"""Drift detectors: functions over arrays, usable on any reference and window.

Three questions per window of live traffic, each answered with a score, a p-value and an alarm:
- input drift: do the inputs, projected on the reference PCA basis, still look like the
  reference? A two-sample Kolmogorov–Smirnov test per component, combined by Bonferroni
  (the smallest p-value times the number of components);
- prediction drift: is the predicted-class mix still the reference's? Chi-square goodness of
  fit against the reference class frequencies (sparse classes pooled so every expected count is
  at least 5);
- confidence drift: is the model as sure as it was on held-out data? Two-sample KS on the top
  probability.

Textbook thresholds alarm too often on windows with no shift (the tests are not independent,
projections carry ties, the reference sample is finite), so each test's threshold can be
calibrated: `calibrate` draws many windows from held-out no-shift data, runs the test on each,
and takes the p-value that only a chosen share of them fall below."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class TestResult:
    test: str
    score: float  # the test statistic (KS D, chi-square), larger = further from the reference
    p_value: float
    threshold: float  # the p-value at or below which it alarms
    alarm: bool
    n: int  # window size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _result(test: str, score: float, p: float, threshold: float, n: int) -> TestResult:
    p = float(min(1.0, max(0.0, p)))
    return TestResult(test, float(score), p, float(threshold), bool(p <= threshold), n)


def input_drift(reference: np.ndarray, window: np.ndarray, *, threshold: float = 0.01) -> TestResult:
    """KS per component of the projected inputs (`reference` n×k, `window` w×k), Bonferroni
    across the k components. Score: the largest KS statistic."""
    reference = np.asarray(reference, dtype=np.float64)
    window = np.asarray(window, dtype=np.float64)
    if reference.ndim != 2 or window.ndim != 2 or reference.shape[1] != window.shape[1]:
        raise ValueError(f"reference and window must be n×k with the same k, got {reference.shape} and "
                         f"{window.shape}")
    if len(window) < 2 or len(reference) < 2:
        raise ValueError("need at least 2 samples in the reference and in the window")
    res = stats.ks_2samp(reference, window, axis=0, method="asymp")
    k = reference.shape[1]
    return _result("input", float(np.max(res.statistic)), float(np.min(res.pvalue)) * k, threshold, len(window))


def prediction_drift(reference_frequencies: np.ndarray, predicted: np.ndarray, *,
                     threshold: float = 0.01) -> TestResult:
    """Chi-square of the window's predicted classes against the reference class frequencies.
    Classes whose expected count is under 5 are pooled into one cell."""
    freq = np.asarray(reference_frequencies, dtype=np.float64)
    freq = freq / freq.sum()
    predicted = np.asarray(predicted, dtype=np.int64)
    n = len(predicted)
    if n == 0:
        raise ValueError("the window is empty")
    if predicted.min() < 0 or predicted.max() >= len(freq):
        raise ValueError(f"predicted classes must be in 0..{len(freq) - 1}")
    observed = np.bincount(predicted, minlength=len(freq)).astype(np.float64)
    expected = freq * n
    small = expected < 5
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
        keep = expected > 0
        observed, expected = observed[keep], expected[keep]
    if len(expected) < 2:
        return _result("prediction", 0.0, 1.0, threshold, n)
    chi2, p = stats.chisquare(observed, expected)
    return _result("prediction", float(chi2), float(p), threshold, n)


def confidence_drift(reference_confidence: np.ndarray, confidence: np.ndarray, *,
                     threshold: float = 0.01) -> TestResult:
    """Two-sample KS of the window's top probabilities against held-out reference ones."""
    ref = np.asarray(reference_confidence, dtype=np.float64)
    win = np.asarray(confidence, dtype=np.float64)
    if len(win) < 2 or len(ref) < 2:
        raise ValueError("need at least 2 samples in the reference and in the window")
    res = stats.ks_2samp(ref, win, method="asymp")
    return _result("confidence", float(res.statistic), float(res.pvalue), threshold, len(win))


def calibrate(test: Callable[[np.ndarray], float], null_data: np.ndarray, window: int, *, alpha: float,
              draws: int = 500, seed: int = 0) -> float:
    """The p-value threshold at which `test` (window → p-value) alarms on a share `alpha` of
    no-shift windows: draw `draws` windows of `window` rows from `null_data` (held-out data from
    the reference distribution, not the reference sample itself), and take the alpha-quantile of
    their p-values. Never above alpha (a calibrated test is never looser than the textbook one)."""
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    rng = np.random.default_rng(seed)
    n = len(null_data)
    if n < window:
        raise ValueError(f"need at least {window} held-out rows to calibrate windows of {window}, got {n}")
    p = np.array([test(null_data[rng.choice(n, window, replace=False)]) for _ in range(draws)])
    return float(min(alpha, np.quantile(p, alpha, method="lower")))


def estimated_accuracy(confidence: np.ndarray, edges: np.ndarray, bin_accuracy: np.ndarray) -> float | None:
    """Accuracy expected from confidence alone, before labels arrive: each prediction counts with
    the held-out accuracy of its confidence bin (the bundle's calibration table). None when no
    bin has data."""
    conf = np.asarray(confidence, dtype=np.float64)
    if len(conf) == 0:
        return None
    acc = np.asarray(bin_accuracy, dtype=np.float64)
    which = np.clip(np.digitize(conf, np.asarray(edges)[1:-1]), 0, len(acc) - 1)
    known = ~np.isnan(acc[which])
    if not known.any():
        return None
    return float(acc[which][known].mean())
