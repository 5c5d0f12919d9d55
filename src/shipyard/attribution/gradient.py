"""The gradient graph: at optimize time, the model's input gradient as a second ONNX graph, so a
server explains with ONNX Runtime alone (no torch where it serves).

Exporters cannot trace `torch.autograd.grad` itself, so the forward and backward pass are first
traced together into plain ATen operations (`make_fx` over `functional_call`, the weights passed
as inputs so nothing is captured as a fake constant), with the core decompositions turning the
backward kernels (`threshold_backward`, `_softmax_backward_data`, …) into ordinary operations,
and two of our own for the kernels they leave: a convolution's input gradient as the transposed
convolution, max pooling's as a scatter-add at the pooled indices. That graph is then exported
like any module, with a dynamic batch axis.

The graph: `input` [N, F] features and `target` [N, K] weights over the outputs (one-hot: the
class to explain) → `gradient` [N, F], d(Σ_k target_k · output_k)/d input, and `output` [N, K]
(probabilities, or a regression's values), both from the same fp32 weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shipyard.optimizing._common import quiet

INPUT, TARGET, GRADIENT, OUTPUT = "input", "target", "gradient", "output"
aten = torch.ops.aten


def _convolution_backward(grad_out: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, bias_sizes: object,
                          stride: list[int], padding: list[int], dilation: list[int], transposed: bool,
                          output_padding: list[int], groups: int, output_mask: list[bool]
                          ) -> tuple[torch.Tensor, None, None]:
    """The input's gradient only (the weights are constants here): the transposed convolution."""
    if transposed or output_mask[1] or output_mask[2]:
        raise NotImplementedError("gradients of a transposed convolution or of its weights")
    pad = [inp.shape[2 + i] - ((grad_out.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                               + dilation[i] * (weight.shape[2 + i] - 1) + 1) for i in range(inp.dim() - 2)]
    return aten.convolution.default(grad_out, weight, None, stride, padding, dilation, True, pad, groups), None, None


def _max_pool2d_backward(grad_out: torch.Tensor, inp: torch.Tensor, kernel_size: object, stride: object,
                         padding: object, dilation: object, ceil_mode: bool, indices: torch.Tensor) -> torch.Tensor:
    """Each pooled gradient back to the position its maximum came from."""
    flat = torch.zeros_like(inp).flatten(2)
    return flat.scatter_add(2, indices.flatten(2), grad_out.flatten(2)).view(inp.shape)


class _Traced(nn.Module):
    """The traced forward+backward graph with the weights as buffers (what the exporter sees)."""

    def __init__(self, graph: nn.Module, params: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.graph = graph
        self.keys = list(params)
        for i, k in enumerate(self.keys):
            self.register_buffer(f"w{i}", params[k])

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = {k: getattr(self, f"w{i}") for i, k in enumerate(self.keys)}
        grad, out = self.graph(params, x, target)
        return grad, out


GradientFn = Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def gradient_fn(model: nn.Module, *, softmax: bool = True) -> GradientFn:
    """(params, x, target) → (d Σ target·output / dx, output): the function traced and exported,
    and the reference its export is checked against."""
    model = model.eval()

    def fn(params: dict[str, torch.Tensor], x: torch.Tensor, target: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            out = torch.func.functional_call(model, params, (x,))
            if softmax:
                out = torch.softmax(out, dim=1)
            (grad,) = torch.autograd.grad((out * target).sum(), x)
        return grad, out.detach()

    return fn


def export_gradient(model: nn.Module, num_features: int, num_outputs: int, path: Path, *,
                    softmax: bool = True, check: np.ndarray | None = None) -> float:
    """Write the gradient graph of `model` (logits, or a regression's values, out) to `path`;
    returns the largest |ONNX − torch autograd| gradient difference on the rows `check` (each
    row's own most likely class as its target), relative to the largest gradient when that is
    above 1 (a regression's, in its target's units). Raises when the model cannot be traced."""
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    fn = gradient_fn(model, softmax=softmax)
    params = {k: v.detach() for k, v in [*model.named_parameters(), *model.named_buffers()]}
    x = torch.rand(3, num_features)
    target = torch.eye(num_outputs)[torch.arange(3) % num_outputs]
    with quiet("torch.onnx"), quiet("torch"):
        decompositions = dict(core_aten_decompositions().items())
        decompositions[aten.convolution_backward.default] = _convolution_backward
        decompositions[aten.max_pool2d_with_indices_backward.default] = _max_pool2d_backward
        graph = make_fx(fn, tracing_mode="symbolic", decomposition_table=decompositions)(
            params, x, target)
        path.parent.mkdir(parents=True, exist_ok=True)
        batch = torch.export.Dim("batch")
        torch.onnx.export(_Traced(graph, params).eval(), (x, target), str(path), input_names=[INPUT, TARGET],
                          output_names=[GRADIENT, OUTPUT], dynamic_shapes=({0: batch}, {0: batch}), dynamo=True,
                          opset_version=18, external_data=False, verbose=False)
    rows = torch.from_numpy(np.ascontiguousarray(check if check is not None else x.numpy(), dtype=np.float32))
    with torch.no_grad():
        out = model(rows)
    t = torch.eye(num_outputs)[out.argmax(1)] if softmax else torch.ones(len(rows), num_outputs)
    want, _ = fn(params, rows, t)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run([GRADIENT], {INPUT: rows.numpy(), TARGET: t.numpy()})[0]
    return float(np.abs(got - want.numpy()).max() / max(1.0, float(np.abs(want.numpy()).max())))
