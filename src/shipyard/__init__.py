"""shipyard: train → optimize → package → register → serve → monitor → update, in one tool.

The public API mirrors the CLI verbs. Importing `shipyard` stays light (no torch)."""

from __future__ import annotations

from typing import Any

from shipyard import data
from shipyard.bundle import Bundle
from shipyard.errors import ShipyardError
from shipyard.optimize import optimize
from shipyard.registry import Registry
from shipyard.settings import Settings
from shipyard.train import Recipe, Run, get_run, runs, train

__version__ = "0.1.0"
__all__ = ["Bundle", "Recipe", "Registry", "Run", "Settings", "ShipyardError", "data", "get_run", "optimize",
           "retrain", "runs", "train"]


def retrain(name: str, **kwargs: Any) -> Any:
    """`shipyard.retrain("digits")`: a challenger from the production champion, trained on the
    original data plus labelled production samples, registered behind `candidate` and gated
    offline; see `shipyard.update.retrain.retrain` for options."""
    from shipyard.update.retrain import retrain as _retrain

    return _retrain(name, **kwargs)
