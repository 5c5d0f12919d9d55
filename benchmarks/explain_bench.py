"""Explanations: how faithful (deletion curves, AOPC) and how fast (explanations per second at one
thread) our methods are, against captum's Integrated Gradients on the same weights and CPU.

    python benchmarks/explain_bench.py [--n 200] [--steps 64] [--epochs 3] [--figure docs/explain.png]

Trains the canonical MLP on mnist-sample (`--epochs`), optimizes it (fp32), and explains `--n`
validation images, each for its predicted class, from a black baseline:

- faithfulness: each method's attributions rank the pixels; the most-attributed are blacked out
  first, in 20 steps of 1% (8 pixels) up to a fifth of the image, and the target's probability is measured after
  each (the deletion curve). AOPC = the mean drop over the steps: higher is more faithful. Methods:
  our Integrated Gradients (ONNX Runtime over the gradient graph), occlusion (4×4 patches),
  KernelSHAP (1024 coalitions of 4×4 patches), captum's IntegratedGradients (the same rule and
  steps), and random attributions (the floor).
- throughput: one explanation per call (a server's request), one thread on both sides
  (`torch.set_num_threads(1)`, ONNX Runtime intra-op 1): our IG against captum's IG, and the
  forward-pass methods for reference.

Goal: our IG ≥ 10× captum's explanations per second, with AOPC no worse than captum's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

GOAL_SPEED = 10.0


def deletion_aopc(forward, x: np.ndarray, attributions: np.ndarray, target: np.ndarray,  # type: ignore[no-untyped-def]
                  black: np.ndarray, steps: int = 20, share: float = 0.01) -> tuple[float, np.ndarray]:
    """AOPC and the mean deletion curve (target probability after each step)."""
    n, f = x.shape
    order = np.argsort(-attributions, axis=1)  # the most-attributed first
    base = forward(x)[np.arange(n), target]
    curve = [float(base.mean())]
    drops = []
    cur = x.copy()
    per = int(round(share * f))
    for k in range(steps):
        idx = order[:, k * per:(k + 1) * per]
        rows = np.arange(n)[:, None]
        cur[rows, idx] = black[idx]
        p = forward(cur)[np.arange(n), target]
        curve.append(float(p.mean()))
        drops.append(base - p)
    return float(np.mean(drops)), np.array(curve)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--timed", type=int, default=50, help="explanations timed per method")
    ap.add_argument("--figure", type=Path, default=None, help="write heatmaps of a few inputs here (PNG)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch
    from captum.attr import IntegratedGradients

    from shipyard.attribution import methods
    from shipyard.attribution.explainer import Explainer, Params
    from shipyard.data import load
    from shipyard.optimizing import optimize
    from shipyard.settings import Settings
    from shipyard.training import train
    from shipyard.training.zoo import build_model

    torch.set_num_threads(1)
    home = Path(tempfile.mkdtemp(prefix="explain-bench-"))
    settings = Settings(home=home)
    run = train(data="mnist-sample", epochs=args.epochs, settings=settings, progress=False)
    bundle = optimize(run, name="digits", output=home / "digits", variants=("fp32",), bench_seconds=0.05,
                      settings=settings)
    spec = bundle.preprocess
    assert spec is not None
    val = load("mnist-sample").split()
    images = val.x_val[:args.n]
    x = spec.apply(images)
    black = spec.apply(np.zeros((1, 28, 28), np.uint8))[0]
    ex = Explainer(bundle, threads=1)
    model = build_model("mlp", input_shape=spec.raw_shape, num_features=784, num_classes=10)
    model.load_state_dict(torch.load(bundle.path / "weights.pt", weights_only=True))
    model.eval()

    def probs(t: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(t), 1)

    ig = IntegratedGradients(probs)
    target = ex._forward(x).argmax(1)
    alphas, weights = methods.path(args.steps)
    base_t = torch.from_numpy(np.tile(black, (len(x), 1)))

    def captum(rows: np.ndarray, t: np.ndarray, base: torch.Tensor) -> np.ndarray:
        (a,) = ig._attribute((torch.from_numpy(rows),), baselines=(base,), target=torch.from_numpy(t),
                             n_steps=args.steps, step_sizes_and_alphas=(list(weights), list(alphas)))
        return a.detach().numpy()

    def ours(name: str, rows: np.ndarray) -> np.ndarray:
        got = ex.explain(rows, Params(method=name, steps=args.steps), kind="raw", shape=(28, 28))
        return got.attributions["attributions"].reshape(len(rows), -1)

    attributions = {
        "integrated_gradients (ours)": ours("integrated_gradients", x),
        "occlusion 4x4 (ours)": ours("occlusion", x),
        "kernel_shap 1024 (ours)": np.concatenate([ours("kernel_shap", x[i:i + 20])
                                                   for i in range(0, len(x), 20)]),
        "captum IntegratedGradients": captum(x, target, base_t),
        "random": np.random.default_rng(0).random(x.shape).astype(np.float32),
    }
    parity = float(np.abs(attributions["integrated_gradients (ours)"]
                          - attributions["captum IntegratedGradients"]).max())
    rows = []
    for name, attr in attributions.items():
        aopc, curve = deletion_aopc(ex._forward, x, attr, target, black)
        rows.append({"method": name, "aopc": aopc, "curve": [round(v, 4) for v in curve]})

    def rate(fn, k: int) -> float:  # type: ignore[no-untyped-def]
        fn(0)  # warm
        t0 = time.perf_counter()
        for i in range(k):
            fn(i % len(x))
        return k / (time.perf_counter() - t0)

    speed = {
        "integrated_gradients (ours)": rate(lambda i: ex.explain(x[i:i + 1], Params(steps=args.steps), kind="raw",
                                                                 shape=(28, 28)), args.timed),
        "captum IntegratedGradients": rate(lambda i: captum(x[i:i + 1], target[i:i + 1], base_t[i:i + 1]),
                                           args.timed),
        "occlusion 4x4 (ours)": rate(lambda i: ex.explain(x[i:i + 1], Params(method="occlusion"), kind="raw",
                                                          shape=(28, 28)), args.timed),
        "kernel_shap 1024 (ours)": rate(lambda i: ex.explain(x[i:i + 1], Params(method="kernel_shap"), kind="raw",
                                                             shape=(28, 28)), max(args.timed // 5, 5)),
    }
    ratio = speed["integrated_gradients (ours)"] / speed["captum IntegratedGradients"]
    aopc = {r["method"]: r["aopc"] for r in rows}
    faithful = aopc["integrated_gradients (ours)"] >= aopc["captum IntegratedGradients"] - 1e-6
    result = {"n": len(x), "steps": args.steps, "parity_max_abs_diff": parity, "faithfulness": rows,
              "explanations_per_s": speed, "speed_ratio_vs_captum": ratio, "goal_speed": GOAL_SPEED,
              "speed_met": ratio >= GOAL_SPEED, "aopc_no_worse_than_captum": faithful}
    if args.figure is not None:
        from shipyard.attribution.api import ExplainResult
        from shipyard.attribution.plots import heatmap

        pick = [int(np.flatnonzero(val.y_val == c)[0]) for c in range(8)]  # one image of each of 8 classes
        e = ex.explain(spec.apply(val.x_val[pick]), Params(steps=args.steps), kind="raw", shape=(28, 28))
        ids = [f"validation #{i}" for i in pick]
        heatmap(ExplainResult(e, ids, val.x_val[pick], "raw", "digits", None, [], 0.0), args.figure)
    if args.json:
        print(json.dumps(result))
        return
    print(f"explanations of {len(x)} mnist-sample validation images, {args.steps} steps, black baseline; "
          f"ours vs captum max |diff| {parity:.1e}\n")
    print(f"{'method':<30} {'AOPC (deletion, 20×1%)':>24}  deletion curve (mean target probability)")
    for r in rows:
        print(f"{r['method']:<30} {r['aopc']:>24.4f}  {' '.join(f'{v:.2f}' for v in r['curve'][::2])}")
    print(f"\n{'method':<30} {'explanations/s (1 thread)':>26}")
    for k, v in speed.items():
        print(f"{k:<30} {v:>26.1f}")
    met = "met" if ratio >= GOAL_SPEED else "NOT met"
    print(f"\nIG: ours / captum = {ratio:.1f}× (goal ≥ {GOAL_SPEED:g}×: {met}); "
          f"AOPC ours {aopc['integrated_gradients (ours)']:.4f} vs captum {aopc['captum IntegratedGradients']:.4f} "
          f"({'no worse' if faithful else 'WORSE'})")


if __name__ == "__main__":
    main()
