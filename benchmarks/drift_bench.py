"""Drift detection and accuracy estimation on Fashion-MNIST: how fast each shift is seen, how
often a healthy window alarms, and how far the accuracy estimate is from the truth — and whether
it says so.

    python benchmarks/drift_bench.py [--epochs 3] [--null-windows 2000] [--windows 40]

Trains the canonical model on Fashion-MNIST (train split), builds its bundle (reference profile,
precalibrated thresholds), then streams the Fashion-MNIST test set (never trained on, never in
the reference) unchanged and shifted: strong shifts (noise σ0.3, rotation 45°, brightness /
contrast, inverted, only two classes, MNIST digits), mild ones (noise σ0.1, rotation 15° and
5°, brighter +0.03 / +0.06, contrast 0.85, blur σ0.6, a 1-pixel shift, 5% pixel dropout,
zoom 0.9, 20% of images inverted) and a label shift towards a hard class (70% shirts, same
inputs per class). Everything runs through the product's own code: `drift.Reference` from the
bundle, `drift.calibrate_all`, `drift.evaluate`, the sequential rule (`drift.cusum_step`) and
`estimate.Estimator`, exactly as the server's evaluator does.

Tables (fixed seeds: the same streams and windows every run):
1. Detection at W = 100 and 250: share of windows alarmed per stream, against the anchor KS on
   the 10 softmax outputs (alibi-detect's KSDrift: p ≤ 0.05 after Bonferroni), samples to the
   first alarm and to the first alert (sequential rule); false alarms over `--null-windows`
   resampled healthy windows with a 95% Wilson interval. Goals: false alarms ≤ 1% (upper end);
   at W = 250 at least the anchor's power on every stream.
2. Gradual drift: the shifted share rising 0 → 100% over 4,000 samples; samples to the first
   alarm and first alert (and to the old "two windows in a row" alert).
3. Accuracy estimates at W = 250, `--windows` windows per stream: mean |estimate − truth| in
   points for each estimator compared (calibrated confidence, ATC, difference of confidences,
   the shipped one), the share of windows the shipped one marks reliable, its mean error where
   reliable, and windows off by more than 5 points plus their 95% binomial half-width that were
   marked reliable. Goals: ≤ 3 points where reliable, and no such window marked reliable.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

STRONG = ("noise σ0.3", "rotate 45°", "brightness", "inverted", "two classes", "MNIST digits")
GRADUAL = ("rotate 45°", "noise σ0.3", "brighter +0.06", "contrast 0.85")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def streams(x: np.ndarray, y: np.ndarray, mnist: np.ndarray, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Raw uint8 images [N, 28, 28] (and labels, -1 where unknown) for each stream."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    f = x.astype(np.float32) / 255

    def u8(a: np.ndarray) -> np.ndarray:
        return np.asarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8))

    def each(fn: Any, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
        return u8(np.stack([fn(img) for img in f[:n]])), y[:n]

    def rotate(deg: float) -> tuple[np.ndarray, np.ndarray]:
        return each(lambda img: ndimage.rotate(img, deg, reshape=False, order=1, mode="constant"))

    mixed = x.copy()
    some = rng.random(len(x)) < 0.2
    mixed[some] = 255 - x[some]
    two = np.isin(y, [0, 1])
    shirts = np.where(y == 6)[0]
    others = rng.choice(np.where(y != 6)[0], int(len(shirts) * 0.3 / 0.7), replace=False)
    hard = rng.permutation(np.concatenate([shirts, others]))
    return {
        "no shift": (x, y),
        "noise σ0.1": (u8(f + rng.normal(0, 0.1, f.shape)), y),
        "noise σ0.3": (u8(f + rng.normal(0, 0.3, f.shape)), y),
        "rotate 5°": rotate(5),
        "rotate 15°": rotate(15),
        "rotate 45°": rotate(45),
        "brighter +0.03": (u8(f + 0.03), y),
        "brighter +0.06": (u8(f + 0.06), y),
        "contrast 0.85": (u8((f - f.mean()) * 0.85 + f.mean()), y),
        "brightness": (u8(f * 0.7 + 0.25), y),
        "blur σ0.6": each(lambda img: ndimage.gaussian_filter(img, 0.6)),
        "shift 1px": (np.roll(x, 1, axis=2), y),
        "dropout 5%": (u8(f * (rng.random(f.shape) > 0.05)), y),
        "zoom 0.9": each(lambda img: ndimage.affine_transform(img, np.eye(2) / 0.9, offset=14 - 14 / 0.9, order=1)),
        "inverted": (255 - x, y),
        "20% inverted": (mixed, y),
        "two classes": (x[two], y[two]),
        "70% shirts": (x[hard], y[hard]),
        "MNIST digits": (mnist, np.full(len(mnist), -1)),
    }


def main() -> None:  # noqa: C901 - one report, read top to bottom
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--null-windows", type=int, default=2000, help="resampled healthy windows (at least 500)")
    ap.add_argument("--windows", type=int, default=40, help="windows per stream for the estimate table (≥ 20)")
    ap.add_argument("--alpha", type=float, default=0.002, help="target false-alarm share of the calibrated union")
    args = ap.parse_args()

    import shipyard
    from shipyard.bundle.reference import profile
    from shipyard.data import load
    from shipyard.monitor import drift, estimate
    from shipyard.monitor.drift import _ks_p, _ks_statistics
    from shipyard.serve.runtime import ModelRuntime
    from shipyard.settings import Settings

    home = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    settings = Settings(home=home)
    t0 = time.perf_counter()
    run = shipyard.train(data="fashion-mnist", epochs=args.epochs, settings=settings, progress=False)
    bundle = shipyard.optimize(run, variants=("fp32",), bench_seconds=0.05, settings=settings,
                               output=home / "fashion.tar.gz")
    print(f"trained and bundled in {time.perf_counter() - t0:.0f} s; val accuracy {run.best_val_accuracy:.4f}",
          file=sys.stderr)
    rt = ModelRuntime(bundle)
    ref = dict(np.load(bundle.path / "reference.npz"))
    spec = bundle.preprocess
    assert spec is not None
    ds = load("fashion-mnist")
    mnist = load("mnist-sample").x

    def observe(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per instance: the input's profile as the log keeps it (float16) and the probabilities."""
        feats = spec.apply(raw)
        probs = np.concatenate([rt.predict(feats[i:i + 1024]) for i in range(0, len(feats), 1024)])
        prof = profile(ref["pca_mean"], ref["pca_components"], feats).astype(np.float16).astype(np.float32)
        return prof, probs

    reference = drift.Reference.from_arrays(ref)
    estimator = estimate.Estimator(reference)
    # the anchor's reference: softmax outputs of the reference half of the validation split
    splits = ds.split()  # the recipe's defaults: the run's own validation split
    _, val_probs = observe(splits.x_val)
    half = np.random.default_rng(11).permutation(len(val_probs))
    anchor_ref = np.sort(val_probs[half[: len(half) // 2]], axis=0)
    anchor_null = val_probs[half[len(half) // 2:]]

    def anchor(probs: np.ndarray) -> bool:
        d = _ks_statistics(anchor_ref, probs).max()
        return bool(_ks_p(d, len(anchor_ref), len(probs), probs.shape[1]) <= 0.05)

    data = {}
    for name, (x, yy) in streams(ds.x_test, ds.y_test, mnist).items():
        prof, probs = observe(x)
        data[name] = (prof, probs, yy)
    null_prof, null_pred, null_conf = reference.null_profile, reference.null_predicted, reference.null_confidence
    null_probs = reference.null_probabilities

    def tests(th: Any, prof: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
        # as the log keeps them: confidences in float32, every class's probability in float16
        return drift.evaluate(reference, th, prof, probs.argmax(1), probs.max(1),
                              probs.astype(np.float16).astype(np.float32))

    # -- 1. detection -------------------------------------------------------------------------
    gradual_th = None
    for w in (100, 250):
        th = reference.thresholds(w, alpha=args.alpha, draws=2000)
        if w == 250:
            gradual_th = th
        rng = np.random.default_rng(7)
        alarms = anchor_alarms = alerts = 0
        level = 0.0
        cost = []
        for _ in range(args.null_windows):
            i = rng.choice(len(null_prof), w, replace=False)
            tw = time.perf_counter()
            r = drift.evaluate(reference, th, null_prof[i], null_pred[i], null_conf[i],
                               null_probs[i] if null_probs is not None else None)
            cost.append(time.perf_counter() - tw)
            alarms += any(t.alarm for t in r.values())
            level = drift.cusum_step(level, drift.evidence({k: t.to_dict() for k, t in r.items()}), th.cusum)
            alerts += level > th.cusum
            anchor_alarms += anchor(anchor_null[rng.choice(len(anchor_null), w, replace=False)])
        lo, hi = wilson(alarms, args.null_windows)
        alo, ahi = wilson(alerts, args.null_windows)
        klo, khi = wilson(anchor_alarms, args.null_windows)
        print(f"\n== detection, window {w} (thresholds from the {th.source}; CUSUM allowance {th.cusum:.2f} decades)")
        print(f"healthy windows: alarms {alarms}/{args.null_windows} = {alarms / args.null_windows:.2%} "
              f"(95% {lo:.2%}–{hi:.2%}; goal: upper ≤ 1% {'✓' if hi <= 0.01 else '✗'}); sequential alerts "
              f"{alerts / args.null_windows:.2%} ({alo:.2%}–{ahi:.2%}); anchor (KS on softmax) "
              f"{anchor_alarms / args.null_windows:.2%} ({klo:.2%}–{khi:.2%}); five tests "
              f"{np.mean(cost) * 1000:.1f} ms per window")
        goal_col = " goal |" if w == 250 else ""
        print(f"| stream | alarmed | anchor | tests that fired | first alarm | first alert |{goal_col}")
        print(f"| --- | --- | --- | --- | --- | --- |{' --- |' if w == 250 else ''}")
        for name, (prof, probs, _) in data.items():
            if name == "no shift":
                continue
            n_win = len(prof) // w
            fired = dict.fromkeys(drift.TESTS, 0)
            hits = a_hits = 0
            first = first_alert = None
            level = 0.0
            for k in range(n_win):
                s = slice(k * w, (k + 1) * w)
                r = tests(th, prof[s], probs[s])
                for t, res in r.items():
                    fired[t] += res.alarm
                if any(res.alarm for res in r.values()):
                    hits += 1
                    first = first or (k + 1) * w
                level = drift.cusum_step(level, drift.evidence({kk: t.to_dict() for kk, t in r.items()}), th.cusum)
                if level > th.cusum:
                    first_alert = first_alert or (k + 1) * w
                a_hits += anchor(probs[s])
            mark = ""
            if w == 250:
                mark = " ✓ |" if hits >= a_hits else " ✗ (below the anchor) |"
            fired_s = " ".join(f"{t} {v / n_win:.0%}" for t, v in fired.items() if v)
            print(f"| {name} | {hits / n_win:.0%} | {a_hits / n_win:.0%} | {fired_s or '-'} | {first or '-'} | "
                  f"{first_alert or '-'} |{mark}")

    # -- 2. gradual drift ---------------------------------------------------------------------
    assert gradual_th is not None
    w = 250
    print(f"\n== gradual drift, window {w}: the shifted share rises 0 → 100% over 4,000 samples")
    print("| shift | first alarm | first alert (sequential) | old rule: 2 windows in a row | anchor's first alarm |")
    print("| --- | --- | --- | --- | --- |")
    base_prof, base_probs, _ = data["no shift"]
    for name in GRADUAL:
        prof, probs, _ = data[name]
        n = min(4000, len(prof), len(base_prof))
        mask = np.random.default_rng(3).random(n) < np.arange(n) / n
        gp = np.where(mask[:, None], prof[:n], base_prof[:n])
        gq = np.where(mask[:, None], probs[:n], base_probs[:n])
        first = first_alert = old = a_first = None
        level, prev = 0.0, False
        for k in range(n // w):
            s = slice(k * w, (k + 1) * w)
            r = tests(gradual_th, gp[s], gq[s])
            alarm = any(t.alarm for t in r.values())
            level = drift.cusum_step(level, drift.evidence({kk: t.to_dict() for kk, t in r.items()}), gradual_th.cusum)
            end = (k + 1) * w
            first = first or (end if alarm else None)
            first_alert = first_alert or (end if level > gradual_th.cusum else None)
            old = old or (end if alarm and prev else None)
            a_first = a_first or (end if anchor(gq[s]) else None)
            prev = alarm
        print(f"| {name} | {first or '-'} | {first_alert or '-'} | {old or '-'} | {a_first or '-'} |")

    # -- 3. accuracy estimates ----------------------------------------------------------------
    y_all = np.concatenate([reference.labels, reference.null_labels])
    p_all = np.concatenate([reference.predicted, reference.null_predicted])
    c_all = np.concatenate([reference.confidence, reference.null_confidence]).astype(np.float64)
    val_acc = float((p_all == y_all).mean())
    t_atc = float(np.quantile(c_all, 1 - val_acc))
    conventional = {
        "confidence": lambda pred, conf: drift.estimated_accuracy(conf, ref["calibration_edges"],
                                                                  ref["calibration_accuracy"]),
        "ATC": lambda pred, conf: float((conf > t_atc).mean()),
        "DoC": lambda pred, conf: val_acc - (float(c_all.mean()) - float(conf.mean())),
    }
    th = reference.thresholds(w, alpha=args.alpha, draws=2000)
    print(f"\n== accuracy estimates, window {w}, {args.windows} windows per stream: mean |estimate − truth| "
          "in points (truth: the window's realised accuracy)")
    print("| stream | true acc | confidence | ATC | DoC | shipped | reliable | shipped where reliable | "
          "bad windows marked reliable | goal |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    est_cost = []
    for name, (prof, probs, yy) in data.items():
        if (yy < 0).any():
            continue
        pred, conf = probs.argmax(1), probs.max(1)
        rng = np.random.default_rng(21)
        errs: dict[str, list[float]] = {k: [] for k in [*conventional, "shipped"]}
        reliable, bad_reliable, truths = [], 0, []
        for _ in range(args.windows):
            i = np.sort(rng.choice(len(prof), w, replace=False))
            truth = float((pred[i] == yy[i]).mean())
            truths.append(truth)
            for k, fn in conventional.items():
                errs[k].append(abs(float(fn(pred[i], conf[i])) - truth))
            tw = time.perf_counter()
            e = estimator.window(th, prof[i], pred[i], conf[i], tests(th, prof[i], probs[i]))
            est_cost.append(time.perf_counter() - tw)
            assert e.value is not None
            err = abs(e.value - truth)
            errs["shipped"].append(err)
            reliable.append(e.reliable)
            half_width = 1.96 * math.sqrt(truth * (1 - truth) / w)
            bad_reliable += e.reliable and err > 0.05 + half_width
        rel = np.array(reliable)
        rel_err = float(np.mean(np.array(errs["shipped"])[rel])) * 100 if rel.any() else float("nan")
        ok = bad_reliable == 0 and (not rel.any() or rel_err <= 3.0)
        print(f"| {name} | {np.mean(truths):.3f} | " + " | ".join(f"{np.mean(v) * 100:.1f}" for v in errs.values())
              + f" | {rel.mean():.0%} | {'-' if math.isnan(rel_err) else f'{rel_err:.1f}'} | {bad_reliable} | "
              f"{'✓' if ok else '✗'} |")
    print(f"\nthe estimate and its reliability: {np.mean(est_cost) * 1000:.1f} ms per window of {w}")
    if os.environ.get("KEEP") is None:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
