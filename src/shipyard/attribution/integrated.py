"""Integrated Gradients as one graph, for models that begin with a linear layer (the MLP): the
path integral factored through that layer, exactly.

Along the path x(α) = b + α·d (d = x − b) the first layer's pre-activation is W·x(α) + c =
(W·b + c) + α·(W·d): two products per instance instead of one per step. The gradient with
respect to the input is the gradient with respect to the pre-activation times W, and the
weighted sum over steps commutes with that product, so Σₖ wₖ ∇ₓ(αₖ) = (Σₖ wₖ ∇ₕ(αₖ))·W: one more
product at the end. The steps then only run the rest of the network (for the canonical MLP, a
128×10 layer), which is why the graph answers an explanation several times faster than running
the whole model forward and backward at every step, with the same numbers up to rounding.

The graph: `input` [N, F], `baseline` [N, F], `target` [N, K] weights over the outputs,
`alphas` [S] and `weights` [S] (the rule) → `attributions` [N, F], and the target's `output` and
`baseline_output` [N]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch's own convention

from shipyard.optimizing._common import quiet

INPUTS = ("input", "baseline", "target", "alphas", "weights")
OUTPUTS = ("attributions", "output", "baseline_output")


def split_linear(model: nn.Module) -> tuple[nn.Linear, nn.Sequential, nn.Module | None] | None:
    """(the first linear layer, the layers after it, the regression's target scaling or None)
    when `model` is an MLP or a Sequential of linear layers and ReLUs that begins with a linear
    layer; None otherwise (the gradient graph explains those)."""
    from shipyard.training.objective import TargetScale

    scale = None
    if isinstance(model, TargetScale):
        scale, model = model, model.net
    seq = getattr(model, "net", model)
    if not isinstance(seq, nn.Sequential) or type(model) not in (nn.Sequential, _mlp_type()):
        return None
    layers = list(seq)
    while layers and isinstance(layers[0], (nn.Flatten, nn.Identity, nn.Dropout)):
        layers.pop(0)
    if not layers or not isinstance(layers[0], nn.Linear) or \
            not all(isinstance(m, (nn.Linear, nn.ReLU, nn.Dropout, nn.Identity)) for m in layers[1:]):
        return None
    return layers[0], nn.Sequential(*layers[1:]), scale


def _mlp_type() -> type:
    from shipyard.training.zoo import MLP

    return MLP


class _Integrated(nn.Module):
    """The factored IG graph with the backward pass written out (the layers after the first are
    linear layers and ReLUs only), so it exports like any forward graph: no autograd to trace."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, first: nn.Linear, rest: nn.Sequential, scale: nn.Module | None, softmax: bool) -> None:
        super().__init__()
        self.first, self.softmax = first, softmax
        self.rest = nn.Sequential(*[m for m in rest if not isinstance(m, (nn.Dropout, nn.Identity))])
        mean, std = (getattr(scale, "mean", None), getattr(scale, "std", None)) if scale is not None else (None, None)
        self.register_buffer("mean", mean.detach().clone() if isinstance(mean, torch.Tensor) else torch.zeros(1))
        self.register_buffer("std", std.detach().clone() if isinstance(std, torch.Tensor) else torch.ones(1))

    def _out(self, z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(z, dim=1) if self.softmax else z * self.std + self.mean

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self._out(self.rest(h))

    def head_grad(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """d Σ t·out / d h, by hand: the layers' activations forward, their gradients back."""
        masks: list[torch.Tensor] = []
        weights: list[torch.Tensor] = []
        for m in self.rest:
            if isinstance(m, nn.Linear):
                weights.append(m.weight)
                h = F.linear(h, m.weight, m.bias)
            else:  # ReLU
                masks.append(h > 0)
                h = torch.relu(h)
        if self.softmax:
            p = torch.softmax(h, dim=1)
            g = p * (t - (p * t).sum(dim=1, keepdim=True))
        else:
            g = t * self.std
        for m in reversed(self.rest):
            g = g @ weights.pop() if isinstance(m, nn.Linear) else g * masks.pop()
        return g

    def forward(self, x: torch.Tensor, base: torch.Tensor, target: torch.Tensor, alphas: torch.Tensor,
                weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w = self.first.weight
        d = x - base
        u = F.linear(base, w, self.first.bias)  # the baseline's pre-activation
        v = F.linear(d, w)  # its change along the path
        n, h = x.shape[0], u.shape[1]
        pre = (u.unsqueeze(1) + alphas.reshape(1, -1, 1) * v.unsqueeze(1)).reshape(-1, h)
        steps = pre.shape[0] // n
        t = target.unsqueeze(1).expand(n, steps, target.shape[1]).reshape(-1, target.shape[1])
        g = self.head_grad(pre, t)
        summed = (g.reshape(n, steps, h) * weights.reshape(1, -1, 1)).sum(dim=1)
        attributions = d * (summed @ w)
        at_x = (self.head(F.linear(x, w, self.first.bias)) * target).sum(dim=1)
        at_base = (self.head(u) * target).sum(dim=1)
        return attributions, at_x, at_base


def export_integrated(model: nn.Module, num_features: int, num_outputs: int, path: Path, *, softmax: bool = True,
                      check: np.ndarray | None = None) -> float:
    """Write the factored Integrated Gradients graph of `model` to `path`; returns its largest
    attribution difference from Integrated Gradients by torch autograd over every step (64-step
    trapezoid, zero baseline, each row's most likely class) on the rows `check`, relative to the
    largest attribution when that is above 1. Raises ValueError for a model it does not fit."""
    from shipyard.attribution import methods
    from shipyard.attribution.gradient import gradient_fn

    parts = split_linear(model.eval())
    if parts is None:
        raise ValueError("the model is not a linear layer followed by linear layers and ReLUs")
    module = _Integrated(*parts, softmax=softmax).eval()
    alphas, weights = (torch.from_numpy(a.astype(np.float32)) for a in methods.path(4))
    example = (torch.rand(3, num_features), torch.zeros(3, num_features),
               torch.eye(num_outputs)[torch.arange(3) % num_outputs], alphas, weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet("torch.onnx"), quiet("torch"), torch.no_grad():  # a forward graph: the fast exporter
        torch.onnx.export(module, example, str(path), input_names=list(INPUTS), output_names=list(OUTPUTS),
                          dynamic_axes={"input": {0: "batch"}, "baseline": {0: "batch"}, "target": {0: "batch"},
                                        "alphas": {0: "steps"}, "weights": {0: "steps"}},
                          dynamo=False, opset_version=17)
    rows = np.ascontiguousarray(check if check is not None else example[0].numpy(), dtype=np.float32)[:200]
    with torch.no_grad():
        out = model(torch.from_numpy(rows))
    t = (np.eye(num_outputs, dtype=np.float32)[out.argmax(1).numpy()] if softmax
         else np.ones((len(rows), num_outputs), np.float32))
    grad = gradient_fn(model, softmax=softmax)
    full = dict([*model.named_parameters(), *model.named_buffers()])

    def reference(x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g, o = grad(full, torch.from_numpy(x), torch.from_numpy(target))
        return g.numpy(), o.numpy()

    base = np.zeros_like(rows)
    want, _, _ = methods.integrated_gradients(reference, rows, base, t, steps=64)
    import onnxruntime as ort

    a64, w64 = methods.path(64)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["attributions"], {"input": rows, "baseline": base, "target": t,
                                      "alphas": a64.astype(np.float32), "weights": w64.astype(np.float32)})[0]
    return float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))
