"""The `monitor` stage: metrics, the prediction log and feedback, drift detectors (against the
reference profile bundles carry, `shipyard.bundle.reference`), the evaluator that windows live
traffic, alerts, and `Monitor`, the Python API over the persisted state. Imported lazily: a
server worker loads only what it uses."""

from typing import Any

__all__ = ["Monitor"]


def __getattr__(name: str) -> Any:
    if name == "Monitor":
        from shipyard.monitor.api import Monitor

        return Monitor
    raise AttributeError(name)
