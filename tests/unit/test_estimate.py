"""The accuracy estimate and the sequential rule on synthetic streams whose right answer is known."""

from __future__ import annotations

import numpy as np

from shipyard.monitor import drift, estimate


def _world(n: int, rng: np.random.Generator, priors: np.ndarray, *, shift: float = 0.0) -> tuple[np.ndarray, ...]:
    """Three classes with class-dependent 4-d inputs; the 'model' is right with a class-dependent
    chance (class 2 is hard) and says so in its confidence. `shift` moves every input and makes
    the model wrong more often while it stays as confident (what fools a confidence estimate)."""
    y = rng.choice(3, n, p=priors)
    x = rng.normal(size=(n, 4)) + np.array([[0, 0, 0, 0], [1.5, 0, 0, 0], [0, 1.5, 0, 0]])[y] + shift
    p_right = np.array([0.95, 0.9, 0.6])[y] * (1 - min(shift, 0.9))
    right = rng.random(n) < p_right
    pred = np.where(right, y, (y + 1 + rng.integers(0, 2, n)) % 3)
    conf = np.clip(np.array([0.95, 0.9, 0.6])[pred] + rng.normal(0, 0.03, n), 0.34, 1.0)
    return x.astype(np.float32), y, pred, conf.astype(np.float32)


def _reference(rng: np.random.Generator) -> drift.Reference:
    x, y, pred, conf = _world(4000, rng, np.array([0.4, 0.4, 0.2]))
    freq = np.bincount(pred, minlength=3) / len(pred)
    edges = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, 9)
    hits = np.bincount(which, weights=pred == y, minlength=10)
    counts = np.bincount(which, minlength=10)
    acc = np.divide(hits, counts, out=np.full(10, np.nan), where=counts > 0)
    a, b = slice(0, 2000), slice(2000, 4000)
    return drift.Reference(x[a], conf[a], freq, x[b], pred[b], conf[b], edges, acc, y[a], y[b], pred[a])


def test_no_shift_is_reliable_and_close_label_shift_is_followed_and_a_fooling_shift_is_flagged() -> None:
    rng = np.random.default_rng(0)
    ref = _reference(rng)
    th = drift.calibrate_all(ref, 250, alpha=0.01, draws=400)
    est = estimate.Estimator(ref)

    def window(priors: np.ndarray, shift: float = 0.0) -> tuple[estimate.Estimate, float]:
        x, y, pred, conf = _world(250, rng, priors, shift=shift)
        tests = drift.evaluate(ref, th, x, pred, conf)
        return est.window(th, x, pred, conf, tests), float((pred == y).mean())

    calm = [window(np.array([0.4, 0.4, 0.2])) for _ in range(10)]
    assert all(e.reliable for e, _ in calm)
    assert np.mean([abs(e.value - t) for e, t in calm]) < 0.03  # type: ignore[operator]

    # label shift towards the hard class: the plain confidence table would say ~0.83; truth ~0.69
    hard = [window(np.array([0.15, 0.15, 0.7])) for _ in range(10)]
    assert all(e.method == "label-shift adjusted" and e.reliable for e, _ in hard), [e.reason for e, _ in hard]
    adjusted_err = np.mean([abs(e.value - t) for e, t in hard])  # type: ignore[operator]
    plain = np.mean([est.accuracy(*_world(250, rng, np.array([0.15, 0.15, 0.7]))[2:]) for _ in range(5)])
    plain_err = plain - np.mean([t for _, t in hard])
    assert adjusted_err < 0.05 and plain_err > 0.08 and adjusted_err < plain_err / 2  # what the adjustment fixed

    # every input moved out of the reference's range and the model is wrong far more often, as
    # sure as before: not believed (a move that stays in range with the confidence unchanged
    # counts as harmless: drift_bench measures that on real shifts)
    fooled = [window(np.array([0.4, 0.4, 0.2]), shift=3.0) for _ in range(5)]
    assert all(not e.reliable and "inputs moved" in (e.reason or "") for e, _ in fooled)
    assert all(e.value - t > 0.3 for e, t in fooled)  # type: ignore[operator]


def test_the_sequential_rule_alerts_on_one_alarm_adds_up_near_misses_and_clears() -> None:
    c = 1.0
    level = drift.cusum_step(0.0, 0.2, c)  # one alarming window (evidence > 0): alert at once
    assert level > c
    level = 0.0
    for _ in range(2):  # near misses (0.4 decades short each) add up: 0.6, 1.2 > c
        level = drift.cusum_step(level, -0.4, c)
    assert level > c
    for _ in range(3):  # healthy windows (3 decades short) bring it back under at once
        level = drift.cusum_step(level, -3.0, c)
    assert level == 0.0
    # calibration keeps the alert rate on no-shift evidence at the budget
    null = np.random.default_rng(1).normal(-2.5, 0.8, 5000)
    allowance = drift.cusum_allowance(null, 0.005)
    level, alerts = 0.0, 0
    for e in np.random.default_rng(2).choice(null, 20_000):
        level = drift.cusum_step(level, float(e), allowance)
        alerts += level > allowance
    assert allowance > 0 and alerts / 20_000 <= 0.0075
