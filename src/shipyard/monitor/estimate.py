"""Accuracy before the labels, and whether to believe it.

The estimate reads only what the prediction log keeps of each request (predicted class,
confidence, input profile) and the bundle's held-out rows (their true classes too):

- With the class mix unchanged, each prediction counts with the held-out accuracy of its
  predicted class and confidence bin (shrunk to the bin's accuracy where a class has few rows).
- When the window's predicted-class mix has moved (the prediction test's p below
  LABEL_SHIFT_P), the classes' priors are re-estimated by EM (Saerens et al. 2002) on those same
  calibrated posteriors, and each prediction's chance of being right is re-weighted by them: a
  window rich in a hard class is then expected to be harder (drift_bench: 70% shirts, 9 points
  too high before, 2–3 after).

No estimate from confidence survives a shift that fools the model while it stays sure of itself
(inverted images: 0.97 estimated, 0.09 true). So each estimate comes with `reliable` and a
reason. Unreliable means the inputs moved in a way a change of class mix does not explain —
the input tests against the reference re-weighted by the estimated priors alarm — and the move
is not harmless: either the confidence distribution moved too, or more inputs than usual lie
outside the reference's range. Mild shifts the model shrugs off (slight noise, blur, dropout)
stay reliable; drift_bench measures both sides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard.monitor import drift

LABEL_SHIFT_P = 0.01  # the prediction test's p below which the class priors are re-estimated
CONFIDENCE_P = 0.01  # the re-weighted confidence test's p below which a covariate move is not harmless
OUTLIER_Q = 0.0005  # each profile column's range: its 0.05% … 99.95% quantiles on the reference half
OUTLIER_P = 0.01  # binomial p of the window's share of out-of-range inputs


@dataclass(frozen=True)
class Estimate:
    value: float | None
    method: str  # "calibrated confidence" | "label-shift adjusted"
    reliable: bool
    reason: str | None
    priors: list[float] | None = None  # re-estimated class priors, when adjusted

    def to_dict(self) -> dict[str, Any]:
        return {"estimated": self.value, "estimated_method": self.method, "estimated_reliable": self.reliable,
                "estimated_reason": self.reason, "estimated_priors": self.priors}


class Estimator:
    """Tables from a version's held-out rows; `window()` estimates one window."""

    def __init__(self, ref: drift.Reference, *, shrink: float = 20.0) -> None:
        self.ref = ref
        y = np.concatenate([ref.labels, ref.null_labels])
        pred = np.concatenate([ref.predicted, ref.null_predicted])
        conf = np.concatenate([ref.confidence, ref.null_confidence]).astype(np.float64)
        k = len(ref.class_frequencies)
        self.k = k
        self.edges = np.asarray(ref.calibration_edges, dtype=np.float64)
        bins = len(self.edges) - 1
        b = self._bin(conf)
        hit = (pred == y).astype(np.float64)
        nb = np.bincount(b, minlength=bins)
        bin_acc = np.divide(np.bincount(b, weights=hit, minlength=bins), nb, out=np.full(bins, np.nan), where=nb > 0)
        bin_acc = np.where(np.isnan(bin_acc), np.nanmean(bin_acc) if np.isfinite(bin_acc).any() else 0.5, bin_acc)
        n = np.zeros((k, bins))
        h = np.zeros((k, bins))
        np.add.at(n, (pred, b), 1)
        np.add.at(h, (pred, b), hit)
        self.table = (h + shrink * bin_acc) / (n + shrink)  # P(right | predicted class, confidence bin)
        wrong = np.zeros((k, k))
        np.add.at(wrong, (pred[pred != y], y[pred != y]), 1)
        self.wrong = wrong / np.maximum(wrong.sum(axis=1, keepdims=True), 1)  # P(true j | predicted i, wrong)
        self.prior = np.maximum(np.bincount(y, minlength=k) / max(len(y), 1), 1e-6)
        # the reference half, for tests against the re-weighted reference
        self.profile = ref.profile.astype(np.float64)
        self.order = np.argsort(self.profile, axis=0, kind="stable")
        self.sorted = np.take_along_axis(self.profile, self.order, axis=0)
        self.conf_order = np.argsort(ref.confidence, kind="stable")
        self.conf_sorted = ref.confidence.astype(np.float64)[self.conf_order]
        self.class_mean = np.stack([self._class_stat(j, np.mean) for j in range(k)])
        self.class_sq = np.stack([self._class_stat(j, lambda a, axis: (a**2).mean(axis=axis)) for j in range(k)])
        self.lo = np.quantile(self.profile, OUTLIER_Q, axis=0)
        self.hi = np.quantile(self.profile, 1 - OUTLIER_Q, axis=0)
        null = ref.null_profile.astype(np.float64)
        self.outlier_rate = float(max(self._outside(null).mean(), 1 / len(null)))

    def _bin(self, conf: np.ndarray) -> np.ndarray:
        return np.clip(np.digitize(conf, self.edges[1:-1]), 0, len(self.edges) - 2)

    def _class_stat(self, j: int, fn: Any) -> np.ndarray:
        rows = self.profile[self.ref.labels == j]
        return np.asarray(fn(rows, axis=0)) if len(rows) else np.asarray(fn(self.profile, axis=0))

    def _outside(self, prof: np.ndarray) -> np.ndarray:
        return np.asarray(((prof < self.lo) | (prof > self.hi)).any(axis=1))

    # -- the estimate --------------------------------------------------------------------------
    def priors(self, pred: np.ndarray, conf: np.ndarray, *, iters: int = 100) -> np.ndarray:
        """EM re-estimate of the window's class priors, as weights w_j = π'_j / π_j, on posteriors
        from the tables: p(predicted | x) = P(right | class, bin), the rest spread as the
        held-out errors of that predicted class were."""
        a = self.table[pred, self._bin(conf)]
        post = (1 - a)[:, None] * self.wrong[pred]
        post[np.arange(len(pred)), pred] = a
        w = np.ones(self.k)
        for _ in range(iters):
            adj = post * w
            adj /= np.maximum(adj.sum(axis=1, keepdims=True), 1e-12)
            new = adj.mean(axis=0) / self.prior
            if np.abs(new - w).max() < 1e-6:
                w = new
                break
            w = new
        return w

    def accuracy(self, pred: np.ndarray, conf: np.ndarray, w: np.ndarray | None = None) -> float:
        """Expected share of right predictions; with prior weights `w`, each prediction's chance
        re-weighted by Bayes: w_i a / (w_i a + Σ_j≠i w_j P(j | i, wrong) (1 − a))."""
        a = self.table[pred, self._bin(conf)]
        if w is None:
            return float(a.mean())
        right = w[pred] * a
        other = (self.wrong[pred] * w).sum(axis=1) * (1 - a)
        return float(np.mean(right / np.maximum(right + other, 1e-12)))

    def window(self, th: drift.Thresholds | None, projection: np.ndarray | None, pred: np.ndarray,
               conf: np.ndarray, tests: dict[str, drift.TestResult]) -> Estimate:
        """The estimate for one window and whether to believe it (`tests`: the window's drift tests)."""
        pred = np.asarray(pred, dtype=np.int64)
        conf = np.asarray(conf, dtype=np.float64)
        if len(pred) == 0:
            return Estimate(None, "calibrated confidence", False, "no predictions in the window")
        mix = tests.get("prediction")
        shifted = mix is not None and mix.p_value < LABEL_SHIFT_P
        w = self.priors(pred, conf) if shifted else None
        value = self.accuracy(pred, conf, w)
        method = "label-shift adjusted" if shifted else "calibrated confidence"
        priors = [round(float(x), 4) for x in (self.prior * w / (self.prior * w).sum())] if w is not None else None
        if projection is None or th is None:
            return Estimate(value, method, False, "the log holds no input profiles for this window: "
                                                  "the inputs cannot be checked", priors)
        reliable, reason = self.reliable(th, np.asarray(projection, dtype=np.float64), conf, w, tests)
        return Estimate(value, method, reliable, reason, priors)

    # -- whether to believe it -----------------------------------------------------------------
    def reliable(self, th: drift.Thresholds, prof: np.ndarray, conf: np.ndarray, w: np.ndarray | None,
                 tests: dict[str, drift.TestResult] | None = None) -> tuple[bool, str | None]:
        """Whether the window's inputs moved only as the class priors `w` explain (None: the
        class mix did not move), or harmlessly. With the mix unchanged the window's own drift
        `tests` are the same tests against the unweighted reference: they are reused (most
        windows cost nothing more)."""
        stats = drift._scipy_stats()
        plain = w is None and tests is not None and {"input", "mean", "confidence"} <= set(tests)
        if plain and tests is not None:
            d_in, p_in = tests["input"].score, tests["input"].p_value
            chi2, p_mean = tests["mean"].score, tests["mean"].p_value
            v, n_eff = None, 0
        else:
            w = np.ones(self.k) if w is None else w
            v = w[self.ref.labels]
            v = v / v.sum()
            n_eff = int(max(2, round(1.0 / float((v**2).sum()))))
            d_in = float(_weighted_ks(self.sorted, np.take_along_axis(
                np.broadcast_to(v[:, None], self.sorted.shape), self.order, axis=0), prof).max())
            p_in = float(drift._ks_p(d_in, n_eff, len(prof), prof.shape[1]))
            pi = self.prior * w / (self.prior * w).sum()
            mean = pi @ self.class_mean
            sd = np.sqrt(np.maximum(pi @ self.class_sq - mean**2, 1e-12))
            chi2 = float(drift._mean_stat(mean, sd, prof.mean(axis=0)[None, :], len(prof))[0])
            p_mean = float(stats.chi2.sf(chi2, len(mean)))
        moved = []
        if p_in <= th.input:
            moved.append(f"input KS D={d_in:.2f} (p={p_in:.1e} ≤ {th.input:.1e})")
        if p_mean <= th.mean:
            moved.append(f"mean shift χ²={chi2:.0f} (p={p_mean:.1e} ≤ {th.mean:.1e})")
        if not moved:
            return True, None
        if v is None and tests is not None:
            d_conf, p_conf = tests["confidence"].score, tests["confidence"].p_value
        else:
            assert v is not None
            d_conf = float(_weighted_ks(self.conf_sorted[:, None], v[self.conf_order][:, None], conf[:, None])[0])
            p_conf = float(drift._ks_p(d_conf, n_eff, len(conf), 1))
        share = float(self._outside(prof).mean())
        p_out = float(stats.binom.sf(round(share * len(prof)) - 1, len(prof), self.outlier_rate))
        why = []
        if p_conf <= CONFIDENCE_P:
            why.append(f"the confidence distribution moved too (KS D={d_conf:.2f}, p={p_conf:.1e})")
        if p_out <= OUTLIER_P:
            why.append(f"{share:.0%} of inputs lie outside the reference's range ({self.outlier_rate:.1%} expected)")
        if not why:
            return True, None
        explained = " beyond what the estimated class mix explains" if w is not None and not np.allclose(w, 1) else ""
        return False, f"inputs moved{explained}: {'; '.join(moved)}, and {' and '.join(why)}"


def verdict(newest: dict[str, Any] | None, note: str | None) -> dict[str, Any]:
    """The status fields for the newest window's estimate (none yet: not reliable, and why)."""
    if newest is None:
        return {"estimated_reliable": False, "estimated_reason": note or "no window evaluated yet",
                "estimated_method": None}
    return {k: newest[k] for k in ("estimated_reliable", "estimated_reason", "estimated_method")}

def _weighted_ks(ref_sorted: np.ndarray, weights_sorted: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Per column, the KS distance between the window's empirical CDF and the reference's
    weighted one (`ref_sorted` column-sorted, `weights_sorted` the rows' weights in that order,
    summing to 1 per column)."""
    w = len(window)
    xs = np.sort(window, axis=0)
    steps = np.arange(w) / w
    out = np.empty(ref_sorted.shape[1])
    for c in range(ref_sorted.shape[1]):
        cw = np.concatenate([[0.0], np.cumsum(weights_sorted[:, c])])
        right = cw[np.searchsorted(ref_sorted[:, c], xs[:, c], side="right")]
        left = cw[np.searchsorted(ref_sorted[:, c], xs[:, c], side="left")]
        out[c] = max(np.abs(steps + 1 / w - right).max(), np.abs(steps - left).max())
    return out


def unavailable(note: str | None, regression: bool = False) -> Estimate:
    """A window with no estimate, and why (a regression is scored by its labels alone)."""
    why = note or ("a regression has no estimated accuracy: its realised MAE comes from labels" if regression
                   else "the bundle has no reference profile")
    return Estimate(None, "calibrated confidence", False, why)
