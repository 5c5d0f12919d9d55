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


def split_linear(model: nn.Module) -> tuple[nn.Linear, nn.Module, nn.Module | None] | None:
    """(the first linear layer, the layers after it, the regression's target scaling or None)
    when `model` is an MLP or a Sequential that begins with a linear layer; None otherwise."""
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
    if not layers or not isinstance(layers[0], nn.Linear):
        return None
    return layers[0], nn.Sequential(*layers[1:]), scale


def _mlp_type() -> type:
    from shipyard.training.zoo import MLP

    return MLP


class _Integrated(nn.Module):
    def __init__(self, first: nn.Linear, rest: nn.Module, scale: nn.Module | None, softmax: bool) -> None:
        super().__init__()
        self.first, self.rest, self.softmax = first, rest, softmax
        mean, std = (getattr(scale, "mean", None), getattr(scale, "std", None)) if scale is not None else (None, None)
        self.register_buffer("mean", mean.detach().clone() if isinstance(mean, torch.Tensor) else torch.zeros(1))
        self.register_buffer("std", std.detach().clone() if isinstance(std, torch.Tensor) else torch.ones(1))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        out = self.rest(h)
        return torch.softmax(out, dim=1) if self.softmax else out * self.std + self.mean

    def forward(self, x: torch.Tensor, base: torch.Tensor, target: torch.Tensor, alphas: torch.Tensor,
                weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w = self.first.weight
        d = x - base
        u = F.linear(base, w, self.first.bias)  # the baseline's pre-activation
        v = F.linear(d, w)  # its change along the path
        n, s, h = x.shape[0], alphas.shape[0], u.shape[1]
        with torch.enable_grad():
            pre = (u[:, None, :] + alphas[None, :, None] * v[:, None, :]).reshape(n * s, h).detach()
            pre.requires_grad_(True)
            out = self.head(pre)
            t = target[:, None, :].expand(n, s, target.shape[1]).reshape(n * s, target.shape[1])
            (g,) = torch.autograd.grad((out * t).sum(), pre)
        summed = (g.reshape(n, s, h) * weights[None, :, None]).sum(dim=1)
        attributions = d * (summed @ w)
        at_x = (self.head(F.linear(x, w, self.first.bias)) * target).sum(dim=1)
        at_base = (self.head(u) * target).sum(dim=1)
        return attributions.detach(), at_x.detach(), at_base.detach()


class _Traced(nn.Module):
    def __init__(self, graph: nn.Module, params: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.graph = graph
        self.keys = list(params)
        for i, k in enumerate(self.keys):
            self.register_buffer(f"w{i}", params[k])

    def forward(self, x: torch.Tensor, base: torch.Tensor, target: torch.Tensor, alphas: torch.Tensor,
                weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        params = {k: getattr(self, f"w{i}") for i, k in enumerate(self.keys)}
        a, o, b = self.graph(params, x, base, target, alphas, weights)
        return a, o, b


def export_integrated(model: nn.Module, num_features: int, num_outputs: int, path: Path, *, softmax: bool = True,
                      check: np.ndarray | None = None) -> float:
    """Write the factored Integrated Gradients graph of `model` to `path`; returns its largest
    attribution difference from Integrated Gradients by torch autograd over every step (64-step
    trapezoid, zero baseline, each row's most likely class) on the rows `check`, relative to the
    largest attribution when that is above 1. Raises ValueError for a model it does not fit."""
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    from shipyard.attribution import methods
    from shipyard.attribution.gradient import gradient_fn

    parts = split_linear(model.eval())
    if parts is None:
        raise ValueError("the model does not begin with a linear layer")
    module = _Integrated(*parts, softmax=softmax).eval()
    params = {k: v.detach() for k, v in [*module.named_parameters(), *module.named_buffers()]}

    def fn(p: dict[str, torch.Tensor], *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.func.functional_call(module, p, args)

    alphas, weights = (torch.from_numpy(a.astype(np.float32)) for a in methods.path(4))
    example = (torch.rand(3, num_features), torch.zeros(3, num_features),
               torch.eye(num_outputs)[torch.arange(3) % num_outputs], alphas, weights)
    with quiet("torch.onnx"), quiet("torch"):
        graph = make_fx(fn, tracing_mode="symbolic",
                        decomposition_table=dict(core_aten_decompositions().items()))(params, *example)
        path.parent.mkdir(parents=True, exist_ok=True)
        batch, steps = torch.export.Dim("batch"), torch.export.Dim("steps", min=2)
        torch.onnx.export(_Traced(graph, params).eval(), example, str(path), input_names=list(INPUTS),
                          output_names=list(OUTPUTS), dynamo=True, opset_version=18, external_data=False,
                          dynamic_shapes=({0: batch}, {0: batch}, {0: batch}, {0: steps}, {0: steps}),
                          verbose=False)
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
