"""shipyard: train → optimize → package → register → serve → monitor → update, in one tool.

The public API mirrors the CLI verbs. Importing `shipyard` stays light (no torch, no ONNX
Runtime): the server (`create_app`, `ServeConfig`), `Monitor` and the HTTP `Client` load on first use."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shipyard import data
from shipyard._version import __version__ as __version__
from shipyard.bundle import Bundle
from shipyard.errors import ShipyardError
from shipyard.optimizing import optimize
from shipyard.registry import Registry
from shipyard.settings import Settings
from shipyard.training import Recipe, Run, get_run, runs, train

__all__ = ["Bundle", "Client", "Monitor", "Recipe", "Registry", "Run", "ServeConfig", "Settings", "ShipyardError",
           "create_app", "data", "explain", "get_run", "optimize", "retrain", "rollback", "rollout", "runs", "train"]

if TYPE_CHECKING:
    from shipyard.attribution.api import explain
    from shipyard.client import Client
    from shipyard.monitor.api import Monitor
    from shipyard.serve.app import create_app
    from shipyard.serve.config import ServeConfig
    from shipyard.update.retrain import RetrainResult

_LAZY = {"create_app": "shipyard.serve.app", "ServeConfig": "shipyard.serve.config", "Monitor": "shipyard.monitor.api",
         "Client": "shipyard.client", "predict": "shipyard.serve.batch_predict", "explain": "shipyard.attribution.api"}


def __getattr__(name: str) -> Any:
    """The heavier parts of the API, imported when first named (PEP 562)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'shipyard' has no attribute {name!r}")


def retrain(name: str, **kwargs: Any) -> RetrainResult:
    """`shipyard.retrain("digits")`: a challenger from the production champion, trained on the
    original data plus labelled production samples, registered behind `candidate` and gated
    offline; see `shipyard.update.retrain.retrain` for options."""
    from shipyard.update.retrain import retrain as _retrain

    return _retrain(name, **kwargs)


def rollout(name: str, *, registry: Registry | None = None, settings: Settings | None = None, offline_gate: bool = True,
            log: Callable[[str], None] | None = None, **config: Any) -> dict[str, Any]:
    """`shipyard.rollout("digits", steps=(10, 50, 100))`: canary NAME@candidate step by step
    through the online gates and promote it, or put its weight back to 0 and raise
    `RolloutFailed` with the reason. `config`: fields of `shipyard.update.rollout.RolloutConfig`."""
    from shipyard.update.rollout import Rollout, RolloutConfig

    reg = registry or Registry(settings=settings)
    return Rollout(reg, name, RolloutConfig(**config), log=log or (lambda m: None)).start(offline_gate=offline_gate)


def rollback(name: str, *, registry: Registry | None = None, settings: Settings | None = None,
             reason: str | None = None) -> dict[str, Any]:
    """`shipyard.rollback("digits")`: `production` back to the version before its last move."""
    from shipyard.update.rollout import rollback as _rollback

    return _rollback(registry or Registry(settings=settings), name, reason)
