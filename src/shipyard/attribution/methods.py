"""The attribution methods, in feature space, over ONNX Runtime calls: numpy only, no torch.

- Integrated Gradients over the bundle's gradient graph: every step of every instance in one
  batched call. `riemann_trapezoid` weighs the steps 1/(n−1) with the two ends halved, so the
  weights sum to 1 and completeness holds to the rule's accuracy (captum's own
  `riemann_trapezoid` weighs them 1/n, which sums to 1 − 1/n: 1.6% short at 64 steps);
  `gausslegendre` is captum's default.
- Occlusion: each group of features (a patch of pixels, a table's column, one feature) set to
  the baseline; the drop of the target's output is the attribution of every feature in the group
  (captum's `Occlusion` with non-overlapping windows).
- KernelSHAP: coalitions of groups sampled from the Shapley kernel, the target's output on each
  fitted by least squares under the efficiency constraint (the attributions sum to output −
  baseline_output); a group's value is shared evenly by its features.

Each takes `forward(x) -> outputs [N, K]` (the model) or `gradient(x, target) -> (grads,
outputs)` (the gradient graph), the features `x` [N, F], a baseline [N, F] and target weights
[N, K] (one-hot: the class explained)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

Forward = Callable[[np.ndarray], np.ndarray]
Gradient = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
INTEGRATIONS = ("riemann_trapezoid", "gausslegendre")
#: rows per ONNX Runtime call (steps × instances beyond this are split)
CHUNK = 8192


@functools.lru_cache(maxsize=64)
def path(steps: int, integration: str = "riemann_trapezoid") -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) of the path integral from the baseline (0) to the input (1)."""
    if integration == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (x + 1), 0.5 * w
    alphas = np.linspace(0.0, 1.0, steps)
    w = np.full(steps, 1.0 / (steps - 1))
    w[0] /= 2
    w[-1] /= 2
    return alphas, w


def _chunked(fn: Callable[..., tuple[np.ndarray, ...]], *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    n = len(arrays[0])
    if n <= CHUNK:
        return fn(*arrays)
    parts = [fn(*(a[i:i + CHUNK] for a in arrays)) for i in range(0, n, CHUNK)]
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(len(parts[0])))


def integrated_gradients(gradient: Gradient, x: np.ndarray, baseline: np.ndarray, target: np.ndarray, *,
                         steps: int = 64, integration: str = "riemann_trapezoid"
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(attributions [N, F], output [N], baseline_output [N]): the target's output at the input
    and at the baseline come from the same call as the gradients (two more rows each)."""
    n, f = x.shape
    alphas, w = path(steps, integration)
    diff = (x - baseline).astype(np.float32)
    rows = np.empty((n * steps + 2 * n, f), np.float32)  # every step, then the inputs, then the baselines
    np.add(baseline[:, None, :], alphas.astype(np.float32)[None, :, None] * diff[:, None, :],
           out=rows[:n * steps].reshape(n, steps, f))
    rows[n * steps:n * steps + n] = x
    rows[n * steps + n:] = baseline
    t = np.concatenate([np.repeat(target, steps, axis=0), target, target]).astype(np.float32, copy=False)
    grads, outs = _chunked(gradient, rows, t)
    avg = np.einsum("s,nsf->nf", w, grads[:n * steps].reshape(n, steps, f).astype(np.float64))
    attributions = (diff * avg).astype(np.float32)
    chosen = (outs[n * steps:] * t[n * steps:]).sum(axis=1)
    return attributions, chosen[:n], chosen[n:]


IG = Callable[[np.ndarray, np.ndarray, np.ndarray, int, str], tuple[np.ndarray, np.ndarray, np.ndarray]]


def graph_ig(session: Any, kind: str) -> IG:
    """Integrated Gradients over a bundle's explain graph (an ONNX Runtime session): `(x,
    baseline, target, steps, integration) → (attributions, output, baseline_output)`. An
    `integrated` graph computes the whole of it in one call; a `gradient` graph, its gradients."""
    if kind == "integrated":
        def whole(x: np.ndarray, baseline: np.ndarray, target: np.ndarray, steps: int, integration: str
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            alphas, w = path(steps, integration)
            a, o, b = session.run(None, {"input": np.ascontiguousarray(x, np.float32),
                                         "baseline": np.ascontiguousarray(baseline, np.float32),
                                         "target": np.ascontiguousarray(target, np.float32),
                                         "alphas": alphas.astype(np.float32), "weights": w.astype(np.float32)})
            return a, o, b
        return whole

    def gradient(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g, out = session.run(None, {"input": x, "target": t})
        return g, out

    def stepped(x: np.ndarray, baseline: np.ndarray, target: np.ndarray, steps: int, integration: str
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return integrated_gradients(gradient, x, baseline, target, steps=steps, integration=integration)
    return stepped


def _target_output(forward: Forward, rows: np.ndarray, target: np.ndarray) -> np.ndarray:
    (out,) = _chunked(lambda r: (forward(r),), rows)
    return (out * target).sum(axis=1)


def occlusion(forward: Forward, x: np.ndarray, baseline: np.ndarray, target: np.ndarray, groups: list[np.ndarray]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(attributions, output, baseline_output): one forward call over every occluded copy."""
    n, f = x.shape
    g = len(groups)
    copies = np.repeat(x[:, None, :], g, axis=1)  # [N, G, F]
    for k, idx in enumerate(groups):
        copies[:, k, idx] = baseline[:, idx]
    rows = np.concatenate([copies.reshape(n * g, f), x, baseline]).astype(np.float32)
    t = np.concatenate([np.repeat(target, g, axis=0), target, target])
    out = _target_output(forward, rows, t)
    output, base = out[n * g:n * g + n], out[n * g + n:]
    drop = output[:, None] - out[:n * g].reshape(n, g)
    attributions = np.zeros((n, f), np.float32)
    for k, idx in enumerate(groups):
        attributions[:, idx] = drop[:, k:k + 1]
    return attributions, output, base


def kernel_shap(forward: Forward, x: np.ndarray, baseline: np.ndarray, target: np.ndarray, groups: list[np.ndarray],
                *, samples: int = 1024, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(attributions, output, baseline_output): `samples` coalitions per instance, all of them in
    one forward call; the group values sum to output − baseline_output exactly."""
    n, f = x.shape
    m = len(groups)
    rng = np.random.default_rng(seed)
    if m == 1:
        z = np.ones((1, 1), bool)
    else:  # coalition sizes from the Shapley kernel's weight per size; then uniform members
        sizes = np.arange(1, m)
        p = (m - 1) / (sizes * (m - sizes))
        s = rng.choice(sizes, size=samples, p=p / p.sum())
        keys = rng.random((samples, m))
        z = keys <= np.sort(keys, axis=1)[np.arange(samples), s - 1][:, None]  # the s smallest keys
    member = np.zeros((m, f), bool)
    for k, idx in enumerate(groups):
        member[k, idx] = True
    keep = z.astype(np.float32) @ member.astype(np.float32) > 0  # [S, F]: features kept from the input
    copies = np.where(keep[None, :, :], x[:, None, :], baseline[:, None, :])  # [N, S, F]
    rows = np.concatenate([copies.reshape(n * len(z), f), x, baseline]).astype(np.float32)
    t = np.concatenate([np.repeat(target, len(z), axis=0), target, target])
    out = _target_output(forward, rows, t).astype(np.float64)
    output, base = out[n * len(z):n * len(z) + n], out[n * len(z) + n:]
    values = out[:n * len(z)].reshape(n, len(z))
    phi = np.zeros((n, m))
    zf = z.astype(np.float64)
    for i in range(n):
        delta = output[i] - base[i]
        if m == 1:
            phi[i, 0] = delta
            continue
        # efficiency: φ_m = Δ − Σ_{j<m} φ_j, so y − z_m Δ = Σ_{j<m} φ_j (z_j − z_m)
        y = values[i] - base[i] - zf[:, -1] * delta
        a = zf[:, :-1] - zf[:, -1:]
        head, *_ = np.linalg.lstsq(a, y, rcond=None)
        phi[i, :-1] = head
        phi[i, -1] = delta - head.sum()
    attributions = np.zeros((n, f), np.float32)
    for k, idx in enumerate(groups):
        attributions[:, idx] = (phi[:, k:k + 1] / len(idx)).astype(np.float32)
    return attributions, output.astype(np.float32), base.astype(np.float32)


def patches(shape: tuple[int, ...], size: int) -> list[np.ndarray]:
    """Feature indices of square patches over an image `shape` ([H, W] or [H, W, C], flattened in
    C order; channels go together), `size` pixels a side (the last row and column may be
    narrower)."""
    h, w = shape[0], shape[1]
    index = np.arange(int(np.prod(shape))).reshape(shape)
    return [index[r:r + size, c:c + size].reshape(-1) for r in range(0, h, size) for c in range(0, w, size)]
