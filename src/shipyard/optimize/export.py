"""torch → ONNX with the softmax inside the graph, a dynamic batch axis, and a parity check
against PyTorch."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shipyard.errors import ShipyardError

INPUT = "input"
OUTPUT = "probabilities"
OPSET = 18
PARITY_TOLERANCE = 1e-4


class _WithSoftmax(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def export_onnx(model: nn.Module, num_features: int, path: Path) -> str:
    """Write `model` (logits out) as ONNX with `probabilities` out; returns the exporter used.
    The torch.export-based exporter first; the TorchScript one for models it cannot trace."""
    wrapped = _WithSoftmax(model).eval()
    example = (torch.rand(2, num_features),)
    path.parent.mkdir(parents=True, exist_ok=True)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    wrapped, example, str(path), input_names=[INPUT], output_names=[OUTPUT],
                    dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                    opset_version=OPSET, external_data=False, verbose=False,
                )
                return "torch.export"
            except Exception:  # noqa: BLE001 - any tracing failure: try the other exporter
                torch.onnx.export(
                    wrapped, example, str(path), input_names=[INPUT], output_names=[OUTPUT],
                    dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, dynamo=False,
                    opset_version=17,
                )
                return "torchscript"
    finally:
        quiet.setLevel(level)


def torch_probabilities(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        return torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()


def check_parity(reference: np.ndarray, got: np.ndarray, what: str) -> float:
    """Max |difference| between PyTorch and ONNX Runtime probabilities; fails above 1e-4."""
    diff = float(np.max(np.abs(reference - got)))
    if not diff <= PARITY_TOLERANCE:
        raise ShipyardError(f"{what}: ONNX Runtime output differs from PyTorch by up to {diff:.3g} "
                            f"(tolerance {PARITY_TOLERANCE:g}); refusing to bundle it")
    return diff
