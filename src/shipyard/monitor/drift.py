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

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


def _scipy_stats() -> Any:
    """scipy.stats, imported on first use: it costs ~40 MB and 0.5 s, which a server worker should
    pay only if it is the one evaluating drift."""
    from scipy import stats

    return stats


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
    d = _ks_statistics(np.sort(reference, axis=0), window).max()
    k = reference.shape[1]
    return _result("input", float(d), float(_ks_p(d, len(reference), len(window), k)), threshold, len(window))


def _ks_statistics(ref_sorted: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Two-sample KS statistic per column of `window` (w×k) against column-sorted `ref_sorted`
    (n×k): the largest gap between the empirical CDFs lies at a window value (after it) or just
    before it, so only those need the reference's CDF (exact with ties; the same numbers as
    scipy's ks_2samp, without sorting the reference again for every window)."""
    n, k = ref_sorted.shape
    w = len(window)
    xs = np.sort(window, axis=0)
    out = np.empty(k)
    steps = np.arange(w) / w
    for c in range(k):
        col = xs[:, c]
        right = np.searchsorted(ref_sorted[:, c], col, side="right") / n
        left = np.searchsorted(ref_sorted[:, c], col, side="left") / n
        change = col[1:] != col[:-1]
        last = np.append(change, True)
        first = np.insert(change, 0, True)
        out[c] = max(np.abs(steps + 1 / w - right)[last].max(), np.abs(steps - left)[first].max())
    return out


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
    chi2, p = _scipy_stats().chisquare(observed, expected)
    return _result("prediction", float(chi2), float(p), threshold, n)


def confidence_drift(reference_confidence: np.ndarray, confidence: np.ndarray, *,
                     threshold: float = 0.01) -> TestResult:
    """Two-sample KS of the window's top probabilities against held-out reference ones."""
    ref = np.asarray(reference_confidence, dtype=np.float64)
    win = np.asarray(confidence, dtype=np.float64)
    if len(win) < 2 or len(ref) < 2:
        raise ValueError("need at least 2 samples in the reference and in the window")
    d = float(_ks_statistics(np.sort(ref)[:, None], win[:, None])[0])
    return _result("confidence", d, float(_ks_p(d, len(ref), len(win), 1)), threshold, len(win))


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


# -- the product's use: a reference from the bundle, thresholds calibrated at once ----------------
TESTS = ("input", "prediction", "confidence")


@dataclass(frozen=True)
class Reference:
    """What a model version's live windows are compared with, from its bundle's reference
    profile. The held-out validation rows are split in two fixed halves: one is the reference the
    input and confidence tests compare with, the other is the no-shift data their thresholds
    are calibrated on (a window drawn from the reference itself would look more alike than live
    traffic does)."""

    profile: np.ndarray  # held-out PCA coordinates + reconstruction error (reference half)
    confidence: np.ndarray  # held-out top probabilities (reference half)
    class_frequencies: np.ndarray
    null_profile: np.ndarray  # the calibration half
    null_predicted: np.ndarray
    null_confidence: np.ndarray
    calibration_edges: np.ndarray
    calibration_accuracy: np.ndarray
    # thresholds calibrated when the bundle was built: (window, alpha, draws) → Thresholds
    precalibrated: dict[tuple[int, float, int], Thresholds] = field(default_factory=dict, compare=False)

    @classmethod
    def from_arrays(cls, ref: dict[str, np.ndarray], *, seed: int = 11) -> Reference:
        """From `reference.npz`'s arrays. Needs the held-out profile (`val_profile`, bundles
        built since it existed): without it the input test has no held-out sample."""
        if "val_profile" not in ref:
            raise ValueError("the bundle's reference profile has no held-out profile (val_profile); "
                             "rebuild the bundle with this version of shipyard")
        prof = ref["val_profile"].astype(np.float32)
        order = np.random.default_rng(seed).permutation(len(prof))
        a, b = order[: len(order) // 2], order[len(order) // 2:]
        conf = ref["val_confidence"].astype(np.float32)
        pre = {}
        for window, alpha, draws, t_in, t_pred, t_conf in ref.get("drift_thresholds", np.zeros((0, 6))):
            key = (int(window), float(alpha), int(draws))
            pre[key] = Thresholds(key[0], key[1], key[2], float(t_in), float(t_pred), float(t_conf), source="bundle")
        return cls(prof[a], conf[a], ref["class_frequencies"].astype(np.float64), prof[b],
                   ref["val_predictions"][b].astype(np.int64), conf[b], ref["calibration_edges"],
                   ref["calibration_accuracy"], pre)

    def thresholds(self, window: int, *, alpha: float, draws: int) -> Thresholds:
        """Calibrated thresholds for windows of `window`: from the bundle when it carries them for
        these settings, else calibrated now (about a second)."""
        hit = self.precalibrated.get((window, alpha, draws))
        return hit if hit is not None else calibrate_all(self, window, alpha=alpha, draws=draws)


def precalibrate(ref: dict[str, np.ndarray], windows: tuple[int, ...] = (100, 250), *, alpha: float = 0.002,
                 draws: int = 2000) -> np.ndarray:
    """Thresholds for the usual window sizes, computed when the bundle is built so a server never
    spends its CPU on them: rows of (window, alpha, draws, input, prediction, confidence)."""
    r = Reference.from_arrays(ref)
    rows = []
    for w in windows:
        if len(r.null_profile) >= w:
            th = calibrate_all(r, w, alpha=alpha, draws=draws)
            rows.append([w, alpha, draws, th.input, th.prediction, th.confidence])
    return np.array(rows, dtype=np.float64).reshape(len(rows), 6)


@dataclass(frozen=True)
class Thresholds:
    """Per-test p-value thresholds for windows of `window` rows, calibrated so the union of the
    three tests alarms on about `alpha` of no-shift windows (each test gets alpha / 3)."""

    window: int
    alpha: float
    draws: int
    input: float
    prediction: float
    confidence: float
    seconds: float = 0.0
    source: str = "calibrated"  # or "bundle": computed when the bundle was built

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ks_p(statistic: np.ndarray | float, n_ref: int, window: int, columns: int) -> np.ndarray:
    """The KS p-value `input_drift` / `confidence_drift` report for a statistic (the largest over
    `columns` columns, Bonferroni)."""
    m, n = sorted([float(n_ref), float(window)], reverse=True)
    return np.minimum(_scipy_stats().kstwo.sf(statistic, np.round(m * n / (m + n))) * columns, 1.0)


def _ks_null_stat(reference: np.ndarray, null: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """The KS statistic of each window (rows of `windows` index `null`) against `reference`, all
    windows at once, the largest over columns: the same numbers `input_drift` /
    `confidence_drift` give one window at a time. Each window is sorted; the largest gap
    between the two empirical CDFs lies at a window value, just at it (the last of a run of
    ties) or just before it (the first of the run), so only those need the reference's CDF."""
    reference = reference.reshape(len(reference), -1)
    null = null.reshape(len(null), -1)
    draws, w = windows.shape
    n_ref, k = reference.shape
    worst = np.zeros(draws)
    steps = np.arange(w) / w
    for c in range(k):
        ref_sorted = np.sort(reference[:, c])
        right = np.searchsorted(ref_sorted, null[:, c], side="right") / n_ref  # P_ref(X <= x)
        left = np.searchsorted(ref_sorted, null[:, c], side="left") / n_ref  # P_ref(X < x)
        x = null[:, c][windows]
        order = np.argsort(x, axis=1, kind="stable")
        rows = np.take_along_axis(windows, order, axis=1)
        xs = np.take_along_axis(x, order, axis=1)
        change = xs[:, 1:] != xs[:, :-1]
        last = np.column_stack([change, np.ones(draws, bool)])
        first = np.column_stack([np.ones(draws, bool), change])
        gap_at = np.where(last, np.abs(steps + 1 / w - right[rows]), 0.0)
        gap_before = np.where(first, np.abs(steps - left[rows]), 0.0)
        np.maximum(worst, np.maximum(gap_at.max(1), gap_before.max(1)), out=worst)
    return worst


def _chi2_null_p(frequencies: np.ndarray, predicted: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """`prediction_drift`'s p-value for every window at once (same pooling of sparse classes)."""
    freq = np.asarray(frequencies, dtype=np.float64)
    freq = freq / freq.sum()
    draws, w = windows.shape
    classes = len(freq)
    p = predicted[windows]
    observed = np.bincount((p + (np.arange(draws) * classes)[:, None]).ravel(),
                           minlength=draws * classes).reshape(draws, classes).astype(np.float64)
    expected = freq * w
    small = expected < 5
    if small.any():
        observed = np.column_stack([observed[:, ~small], observed[:, small].sum(1)])
        expected = np.append(expected[~small], expected[small].sum())
        keep = expected > 0
        observed, expected = observed[:, keep], expected[keep]
    if len(expected) < 2:
        return np.ones(draws)
    chi2 = ((observed - expected) ** 2 / expected).sum(axis=1)
    return _scipy_stats().chi2.sf(chi2, len(expected) - 1)


def calibrate_all(ref: Reference, window: int, *, alpha: float = 0.002, draws: int = 3000,
                  seed: int = 0) -> Thresholds:
    """Thresholds for the three tests on windows of `window` rows, from `draws` windows drawn
    (without replacement within a window) from the held-out calibration half. Takes about a
    second where one window at a time took a minute."""
    t0 = time.perf_counter()
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    n = len(ref.null_profile)
    if n < window:
        raise ValueError(f"need at least {window} held-out rows to calibrate windows of {window}, got {n}")
    rng = np.random.default_rng(seed)
    windows = np.stack([rng.choice(n, window, replace=False) for _ in range(draws)])
    each = alpha / len(TESTS)

    rank = int(np.floor(each * (draws - 1)))  # np.quantile(p, each, method="lower") of the draws' p-values

    def ks(reference: np.ndarray, null: np.ndarray) -> float:
        # p falls as the statistic grows: the p-quantile is the p of the matching largest statistic
        d = np.sort(_ks_null_stat(reference, null, windows))[::-1][rank]
        columns = reference.shape[1] if reference.ndim == 2 else 1
        return min(each, float(_ks_p(d, len(reference), window, columns)))

    return Thresholds(
        window, alpha, draws,
        input=ks(ref.profile, ref.null_profile),
        prediction=float(min(each, np.sort(_chi2_null_p(ref.class_frequencies, ref.null_predicted, windows))[rank])),
        confidence=ks(ref.confidence, ref.null_confidence),
        seconds=time.perf_counter() - t0)


def evaluate(ref: Reference, th: Thresholds, projection: np.ndarray | None, predicted: np.ndarray,
             confidence: np.ndarray) -> dict[str, TestResult]:
    """The three tests on one window (the input test only when the log holds projections)."""
    out = {}
    if projection is not None and projection.shape[1] == ref.profile.shape[1]:
        out["input"] = input_drift(ref.profile, projection, threshold=th.input)
    out["prediction"] = prediction_drift(ref.class_frequencies, predicted, threshold=th.prediction)
    out["confidence"] = confidence_drift(ref.confidence, confidence, threshold=th.confidence)
    return out
