"""torch → ONNX with the softmax inside the graph and a dynamic batch axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from shipyard.optimizing._common import INPUT, OUTPUT, PARITY_TOLERANCE, check_parity, quiet

__all__ = ["INPUT", "OUTPUT", "PARITY_TOLERANCE", "check_parity", "export_onnx", "quiet", "torch_probabilities"]

OPSET = 18


class _WithSoftmax(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def export_onnx(model: nn.Module, num_features: int, path: Path, *, softmax: bool = True) -> str:
    """Write `model` (logits out) as ONNX with `probabilities` out (a regression, `softmax`
    False: its values as they are); returns the exporter used. The torch.export-based exporter
    first; the TorchScript one for models it cannot trace."""
    wrapped = (_WithSoftmax(model) if softmax else model).eval()
    out_name = OUTPUT if softmax else "prediction"
    example = (torch.rand(2, num_features),)
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet("torch.onnx"):
        try:
            torch.onnx.export(
                wrapped, example, str(path), input_names=[INPUT], output_names=[out_name],
                dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                opset_version=OPSET, external_data=False, verbose=False,
            )
            return "torch.export"
        except Exception:  # noqa: BLE001 - any tracing failure: try the other exporter
            torch.onnx.export(
                wrapped, example, str(path), input_names=[INPUT], output_names=[out_name],
                dynamic_axes={INPUT: {0: "batch"}, out_name: {0: "batch"}}, dynamo=False,
                opset_version=17,
            )
            return "torchscript"


def torch_probabilities(model: nn.Module, x: np.ndarray, *, softmax: bool = True) -> np.ndarray:
    """The model's answers in PyTorch: probabilities, or (a regression) values."""
    model.eval()
    with torch.inference_mode():
        out = model(torch.from_numpy(x))
        return (torch.softmax(out, dim=1) if softmax else out).numpy()
