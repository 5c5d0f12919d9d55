"""Monitoring tests' common moves: a registry with a digits model that has a real reference
profile, and logging what it answers for raw images as a server would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.bundles import make_bundle
from shipyard.monitor.predlog import PredictionLog
from shipyard.registry import Registry
from shipyard.serve.runtime import ModelRuntime
from shipyard.settings import Settings

from .waiting import clock_moves_on


def deploy(tmp_path: Path, **bundle: Any) -> tuple[Registry, ModelRuntime, PredictionLog]:
    """`digits@1` behind `production` in a fresh home (`bundle`: `make_bundle` options), its
    runtime and a prediction log on the same database."""
    reg = Registry(settings=Settings(home=tmp_path / "home"))
    reg.register(make_bundle(tmp_path / "a", reference=True, **bundle), "digits", alias="production")
    return reg, ModelRuntime(reg.load("digits@1"), 1, name="digits"), PredictionLog(reg.engine)


def log_images(log: PredictionLog, rt: ModelRuntime, images: np.ndarray, prefix: str
               ) -> tuple[list[str], np.ndarray]:
    """Log what `rt` answers for raw uint8 `images`, one request each (`PREFIX-i`), and let the
    clock move on so the next call's predictions come strictly later; the ids and predicted classes."""
    feats = (images.reshape(len(images), -1) / 255.0).astype(np.float32)
    probs = rt.predict(feats)
    ids = [f"{prefix}-{i}" for i in range(len(images))]
    log.record_batch(rt, ids, [1] * len(ids), feats, probs)
    log.flush()
    clock_moves_on()
    return ids, probs.argmax(1)
