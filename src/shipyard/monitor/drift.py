"""Drift detectors: functions over arrays, usable on any reference and window.

Four questions per window of live traffic, each answered with a score, a p-value and an alarm:
- input drift: do the inputs, projected on the reference PCA basis, still look like the
  reference? A two-sample Kolmogorov–Smirnov test per component, combined by Bonferroni
  (the smallest p-value times the number of components);
- mean drift: has the window's mean profile moved? A chi-square of the standardized means of
  all components at once: a small global change (a little brighter, a little lower contrast)
  moves every component a little, which KS per component with Bonferroni misses;
- prediction drift: is the predicted-class mix still the reference's? Chi-square goodness of
  fit against the reference class frequencies (sparse classes pooled so every expected count is
  at least 5);
- confidence drift: is the model as sure as it was on held-out data? Two-sample KS on the top
  probability;
- softmax drift: do the model's outputs still look as on held-out data? KS on each class's
  probability, Bonferroni across classes (alibi-detect's KSDrift on the outputs). The model
  amplifies what moves it, so this sees small global changes (a little brighter, a little less
  contrast) that the input profile shows only faintly. Needs the logged probabilities (models
  with up to 32 classes) and a bundle that keeps its held-out ones.

Textbook thresholds alarm too often on windows with no shift (the tests are not independent,
projections carry ties, the reference sample is finite), so each test's threshold can be
calibrated: `calibrate` draws many windows from held-out no-shift data, runs the test on each,
and takes the p-value that only a chosen share of them fall below.

Alerts follow a CUSUM over the windows' evidence (`cusum`), calibrated on the same no-shift
windows: one alarming window alerts at once, and windows just short of their thresholds add up,
so a slow change alerts within about a window of showing, not after two whole windows."""

from __future__ import annotations

import functools
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


def mean_drift(mean: np.ndarray, sd: np.ndarray, window: np.ndarray, *, threshold: float = 0.01) -> TestResult:
    """Chi-square (k degrees of freedom) of the window's column means (`window` w×k) against the
    reference's column `mean` and `sd`: the sum of squared standardized mean differences."""
    window = np.asarray(window, dtype=np.float64)
    if window.ndim != 2 or window.shape[1] != len(mean) or len(window) < 2:
        raise ValueError(f"the window must be n×{len(mean)} with n ≥ 2, got {window.shape}")
    chi2 = float(_mean_stat(mean, sd, window.mean(axis=0)[None, :], len(window))[0])
    return _result("mean", chi2, float(_scipy_stats().chi2.sf(chi2, len(mean))), threshold, len(window))


def _mean_stat(mean: np.ndarray, sd: np.ndarray, means: np.ndarray, n: int) -> np.ndarray:
    z = (means - mean) / (np.maximum(sd, 1e-6) / np.sqrt(n))
    return np.asarray((z**2).sum(axis=-1))


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
TESTS = ("input", "mean", "prediction", "confidence", "softmax")
#: window sizes calibrated when the bundle is built; a partly filled window (or a configured size
#: that is not here) uses the thresholds of the largest of these that it reaches
SIZES = (50, 100, 250, 500)
#: share of no-shift windows on which the sequential rule may alert (on top of nothing: one
#: alarming window alerts by itself, so this is the budget for evidence that adds up)
CUSUM_ALPHA = 0.005


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
    labels: np.ndarray  # true classes of the reference half (held-out rows: the estimators' tables)
    null_labels: np.ndarray
    predicted: np.ndarray  # predicted classes of the reference half
    probabilities: np.ndarray | None = None  # every class's probability, reference half (sorted per class) …
    null_probabilities: np.ndarray | None = None  # … and the calibration half (older bundles: None)
    # thresholds calibrated when the bundle was built: (window, alpha, draws) → Thresholds
    precalibrated: dict[tuple[int, float, int], Thresholds] = field(default_factory=dict, compare=False)

    @functools.cached_property
    def profile_mean(self) -> tuple[np.ndarray, np.ndarray]:
        """The reference half's column means and standard deviations (the mean test's null)."""
        prof = self.profile.astype(np.float64)
        return prof.mean(axis=0), prof.std(axis=0)

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
        rows = ref.get("drift_thresholds", np.zeros((0, 9)))
        if rows.ndim == 2 and rows.shape[1] == 9:  # older bundles lack the mean and softmax tests: calibrated anew
            for window, alpha, draws, t_in, t_pred, t_conf, t_mean, cusum, t_soft in rows:
                key = (int(window), float(alpha), int(draws))
                pre[key] = Thresholds(key[0], key[1], key[2], float(t_in), float(t_pred), float(t_conf),
                                      float(t_mean), float(cusum), float(t_soft), source="bundle")
        labels = ref["val_labels"].astype(np.int64)
        pred = ref["val_predictions"].astype(np.int64)
        probs = ref["val_probabilities"].astype(np.float32) if "val_probabilities" in ref else None
        return cls(prof[a], conf[a], ref["class_frequencies"].astype(np.float64), prof[b], pred[b], conf[b],
                   ref["calibration_edges"], ref["calibration_accuracy"], labels[a], labels[b], pred[a],
                   np.sort(probs[a], axis=0) if probs is not None else None,
                   probs[b] if probs is not None else None, pre)

    @property
    def largest_window(self) -> int:
        """The largest window the calibration half can calibrate."""
        return len(self.null_profile)

    def size_for(self, n: int) -> int:
        """The calibrated size whose thresholds a window of `n` rows uses: `n` itself when it is one
        of SIZES or larger than all, else the largest size in SIZES it reaches (or the smallest)."""
        if n in SIZES or n > SIZES[-1]:
            return n
        fits = [s for s in SIZES if s <= n]
        return fits[-1] if fits else SIZES[0]

    def thresholds(self, window: int, *, alpha: float, draws: int) -> Thresholds:
        """Calibrated thresholds for windows of `window`: from the bundle when it carries them for
        these settings, else calibrated now (about a second)."""
        hit = self.precalibrated.get((window, alpha, draws))
        return hit if hit is not None else calibrate_all(self, window, alpha=alpha, draws=draws)


def precalibrate(ref: dict[str, np.ndarray], windows: tuple[int, ...] = SIZES, *, alpha: float = 0.002,
                 draws: int = 2000) -> np.ndarray:
    """Thresholds for the usual window sizes, computed when the bundle is built so a server never
    spends its CPU on them: rows of (window, alpha, draws, input, prediction, confidence, mean,
    cusum, softmax)."""
    r = Reference.from_arrays(ref)
    rows = []
    for w in windows:
        if len(r.null_profile) >= w:
            th = calibrate_all(r, w, alpha=alpha, draws=draws)
            rows.append([w, alpha, draws, th.input, th.prediction, th.confidence, th.mean, th.cusum, th.softmax])
    return np.array(rows, dtype=np.float64).reshape(len(rows), 9)


@dataclass(frozen=True)
class Thresholds:
    """Per-test p-value thresholds for windows of `window` rows, calibrated so the union of the
    five tests alarms on about `alpha` of no-shift windows (each test gets alpha / 5), and the
    CUSUM allowance that keeps the sequential rule's alerts at CUSUM_ALPHA of them."""

    window: int
    alpha: float
    draws: int
    input: float
    prediction: float
    confidence: float
    mean: float = 1.0
    cusum: float = 0.0
    softmax: float = 0.0  # 0: never alarms (no held-out probabilities to compare with)
    seconds: float = 0.0
    source: str = "calibrated"  # or "bundle": computed when the bundle was built

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ks_p(statistic: np.ndarray | float, n_ref: int, window: int, columns: int) -> np.ndarray:
    """The KS p-value `input_drift` / `confidence_drift` report for a statistic (the largest over
    `columns` columns, Bonferroni)."""
    m, n = sorted([float(n_ref), float(window)], reverse=True)
    en = np.round(m * n / (m + n))
    d = np.asarray(statistic, dtype=np.float64)
    if d.size > 64:  # many windows (calibration): the exact tail on a grid, interpolated in log p
        grid = np.linspace(float(d.min()), float(d.max()) + 1e-12, 97)  # log p is near-quadratic: 0.1% error
        log_p = np.log(np.maximum(_scipy_stats().kstwo.sf(grid, en), 1e-300))
        return np.minimum(np.exp(np.interp(d, grid, log_p)) * columns, 1.0)
    return np.minimum(_scipy_stats().kstwo.sf(d, en) * columns, 1.0)


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
        # sort each window by the rows' ranks in the column (small integers: numpy's radix sort,
        # several times faster than an argsort of the values)
        by_value = np.argsort(null[:, c], kind="stable")
        rank = np.empty(len(null), np.uint16 if len(null) < 65536 else np.int64)
        rank[by_value] = np.arange(len(null))
        rows = by_value[np.sort(rank[windows], axis=1, kind="stable")]
        xs = null[:, c][rows]
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
    softmax = ref.probabilities is not None and ref.null_probabilities is not None
    each = alpha / (len(TESTS) if softmax else len(TESTS) - 1)  # the tests this reference can run share alpha

    rank = int(np.floor(each * (draws - 1)))  # np.quantile(p, each, method="lower") of the draws' p-values

    stats = _scipy_stats()
    d_in = _ks_null_stat(ref.profile, ref.null_profile, windows)
    d_conf = _ks_null_stat(ref.confidence, ref.null_confidence, windows)
    p = {"input": _ks_p(d_in, len(ref.profile), window, ref.profile.shape[1]),
         "confidence": _ks_p(d_conf, len(ref.confidence), window, 1),
         "prediction": _chi2_null_p(ref.class_frequencies, ref.null_predicted, windows)}
    mu, sd = ref.profile_mean
    means = np.stack([ref.null_profile[w].mean(axis=0) for w in windows])
    p["mean"] = stats.chi2.sf(_mean_stat(mu, sd, means, window), len(mu))
    d_soft = None
    if softmax and ref.probabilities is not None and ref.null_probabilities is not None:
        d_soft = _ks_null_stat(ref.probabilities, ref.null_probabilities, windows)
        p["softmax"] = _ks_p(d_soft, len(ref.probabilities), window, ref.probabilities.shape[1])
    th = {t: float(min(each, np.sort(p[t])[rank])) for t in TESTS if t in p}
    # the KS thresholds exactly (the p-values above are interpolated): p of the rank-th largest statistic
    th["input"] = min(each, float(_ks_p(np.sort(d_in)[::-1][rank], len(ref.profile), window, ref.profile.shape[1])))
    th["confidence"] = min(each, float(_ks_p(np.sort(d_conf)[::-1][rank], len(ref.confidence), window, 1)))
    if d_soft is not None and ref.probabilities is not None:
        th["softmax"] = min(each, float(_ks_p(np.sort(d_soft)[::-1][rank], len(ref.probabilities), window,
                                              ref.probabilities.shape[1])))
    # the sequential rule's allowance: evidence per window is how far the most extreme test went
    # past (positive) or stayed short of (negative) its threshold, in decades of p
    evidence = np.max([np.log10(th[t]) - np.log10(np.maximum(p[t], 1e-300)) for t in p], axis=0)
    return Thresholds(window, alpha, draws, input=th["input"], prediction=th["prediction"],
                      confidence=th["confidence"], mean=th["mean"], cusum=cusum_allowance(evidence, CUSUM_ALPHA),
                      softmax=th.get("softmax", 0.0), seconds=time.perf_counter() - t0)


def cusum_step(level: float, evidence: float, allowance: float) -> float:
    """One step of the sequential rule: the level after a window with this evidence. The level
    is capped at twice the allowance so an alert clears within a few windows once the shift
    ends. It alerts while the level exceeds the allowance."""
    return float(min(max(0.0, level + evidence + allowance), 2 * allowance + 1e-9))


def cusum_allowance(null_evidence: np.ndarray, alpha: float, *, steps: int = 20_000, seed: int = 0) -> float:
    """The largest allowance c (0 ≤ c ≤ 3 decades) at which a CUSUM over no-shift windows'
    evidence (resampled into one long stream) alerts on at most `alpha` of them. c = 0 is the
    plain per-window alarm."""
    rng = np.random.default_rng(seed)
    stream = rng.choice(np.asarray(null_evidence, dtype=np.float64), steps)
    cands = np.linspace(0.0, 3.0, 61)
    level = np.zeros(len(cands))
    alerts = np.zeros(len(cands))
    for e in stream:
        level = np.minimum(np.maximum(0.0, level + e + cands), 2 * cands + 1e-9)
        alerts += level > cands
    ok = cands[alerts / steps <= alpha]
    return float(ok.max()) if len(ok) else 0.0


def evidence(results: dict[str, dict[str, Any]], tests: tuple[str, ...] = TESTS) -> float:
    """A window's evidence for the sequential rule, from its stored test results: decades of p
    past the threshold of the test that went furthest (negative when none alarmed)."""
    vals = [np.log10(max(r["threshold"], 1e-300)) - np.log10(max(r["p_value"], 1e-300))
            for t, r in results.items() if t in tests and r]
    return float(max(vals)) if vals else float("-inf")


def evaluate(ref: Reference, th: Thresholds, projection: np.ndarray | None, predicted: np.ndarray,
             confidence: np.ndarray, probabilities: np.ndarray | None = None) -> dict[str, TestResult]:
    """The tests on one window (the input tests only when the log holds projections, the
    softmax test only when it holds probabilities and the bundle its held-out ones)."""
    out = {}
    if projection is not None and projection.shape[1] == ref.profile.shape[1]:
        out["input"] = input_drift(ref.profile, projection, threshold=th.input)
        mu, sd = ref.profile_mean
        out["mean"] = mean_drift(mu, sd, projection, threshold=th.mean)
    out["prediction"] = prediction_drift(ref.class_frequencies, predicted, threshold=th.prediction)
    out["confidence"] = confidence_drift(ref.confidence, confidence, threshold=th.confidence)
    if probabilities is not None and ref.probabilities is not None and th.softmax > 0 and \
            probabilities.shape[1] == ref.probabilities.shape[1] and len(probabilities) >= 2:
        d = float(_ks_statistics(ref.probabilities, np.asarray(probabilities, dtype=np.float64)).max())
        k = ref.probabilities.shape[1]
        p = float(_ks_p(d, len(ref.probabilities), len(probabilities), k))
        out["softmax"] = _result("softmax", d, p, th.softmax, len(probabilities))
    return out
