"""What the optimize stage's modules share, torch-free so importing an ONNX model never loads
torch: the graph's tensor names, the parity rule, and a guard for noisy tools."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

import numpy as np

from shipyard.errors import ShipyardError

INPUT = "input"
OUTPUT = "probabilities"
PARITY_TOLERANCE = 1e-4


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Exporters and quantizers warn and log freely, some on stdout, which carries `--json`:
    silence their warnings, send their prints to stderr, and keep their loggers to errors."""
    logs = [logging.getLogger(name) for name in loggers or ("",)]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.setLevel(level)


def check_parity(reference: np.ndarray, got: np.ndarray, what: str, against: str = "PyTorch") -> float:
    """Max |difference| between the source framework's and ONNX Runtime's outputs; fails above 1e-4."""
    diff = float(np.max(np.abs(reference - got)))
    if not diff <= PARITY_TOLERANCE:
        raise ShipyardError(f"{what}: ONNX Runtime output differs from {against} by up to {diff:.3g} "
                            f"(tolerance {PARITY_TOLERANCE:g}); refusing to bundle it")
    return diff
