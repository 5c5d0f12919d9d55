"""The `optimize` stage: a trained run → ONNX variants, measured → the chosen one in a bundle.
Importing this package does not import torch; `optimize()` does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shipyard.bundle import Bundle
    from shipyard.training import Run


def optimize(run: Run | str, **kwargs: Any) -> Bundle:
    """`shipyard.optimize(run_or_id) -> Bundle`; see `shipyard.optimizing.build.optimize` for options."""
    from shipyard.optimizing.build import optimize as _optimize

    return _optimize(run, **kwargs)[0]


__all__ = ["optimize"]
