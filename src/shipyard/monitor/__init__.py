"""The `monitor` stage: metrics, the prediction log and feedback, the reference profile that
bundles carry, drift detectors, the evaluator that windows live traffic, and `Monitor`, the
Python API over the persisted state."""

from shipyard.monitor.api import Monitor

__all__ = ["Monitor"]
