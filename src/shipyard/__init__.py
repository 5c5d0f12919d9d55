"""shipyard: train → optimize → package → register → serve → monitor → update, in one tool.

The public API mirrors the CLI verbs. Importing `shipyard` stays light (no torch)."""

from __future__ import annotations

from shipyard import data
from shipyard.errors import ShipyardError
from shipyard.settings import Settings
from shipyard.train import Recipe, Run, get_run, runs, train

__version__ = "0.1.0"
__all__ = ["Recipe", "Run", "Settings", "ShipyardError", "data", "get_run", "runs", "train"]
