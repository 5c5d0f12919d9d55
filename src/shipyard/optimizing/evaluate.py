"""Measure a variant on this machine: accuracy, file size, batch-1 p50 latency and batch-64
throughput, each at a fixed ONNX Runtime thread count so variants compare fairly, and whether
an input's answer depends on its batch-mates (`invariance`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from shipyard.optimizing import invariance


@dataclass
class Measured:
    name: str
    accuracy: float | None  # None: a regression (its `mae` instead)
    size_bytes: int
    latency_p50_ms: float
    throughput_per_s: float
    max_abs_diff: float | None = None  # fp32 variants: vs PyTorch
    agreement: float | None = None  # int8 variants: argmax agreement with fp32
    chosen: bool = False
    batch_max_diff: float | None = None  # max |p alone − p inside a batch of 2–64| (None: not measured)
    batch_invariant: bool | None = None  # batch_max_diff ≤ invariance.TOLERANCE
    mae: float | None = None  # a regression's mean absolute error on the validation split

    def measure_invariance(self, predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> None:
        """Record whether an input of `x` gets the same answer alone and inside batches."""
        self.batch_max_diff = invariance.max_diff(predict, x)
        self.batch_invariant = invariance.is_invariant(self.batch_max_diff)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def predict(sess: ort.InferenceSession, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def measure(name: str, path: Path, x_val: np.ndarray, y_val: np.ndarray, *, threads: int = 1,
            seconds: float = 0.5, scale: float | None = None) -> tuple[Measured, np.ndarray]:
    """Returns the measurements (batch invariance on `x_val` included) and the variant's
    validation probabilities. `scale`: a regression's (the targets' std): its MAE is measured
    instead of accuracy, and batch invariance in units of that scale."""
    sess = session(path, threads)
    feed = sess.get_inputs()[0].name
    probs = predict(sess, x_val)
    regression = scale is not None
    accuracy = None if regression else float((probs.argmax(1) == y_val).mean())
    one = x_val[:1]
    batch = np.ascontiguousarray(np.resize(x_val, (64, *x_val.shape[1:])))
    for _ in range(20):
        sess.run(None, {feed: one})
        sess.run(None, {feed: batch})
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 50 or (time.perf_counter() < deadline and len(times) < 5000):
        start_ns = time.perf_counter_ns()
        sess.run(None, {feed: one})
        times.append((time.perf_counter_ns() - start_ns) / 1e6)
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while n < 20 or time.perf_counter() < deadline:
        sess.run(None, {feed: batch})
        n += 1
    throughput = n * 64 / (time.perf_counter() - t0)
    m = Measured(name, accuracy, path.stat().st_size, float(np.median(times)), throughput)
    if scale is not None:
        m.mae = float(np.abs(probs - y_val.reshape(len(y_val), -1)).mean())
        m.measure_invariance(lambda a: sess.run(None, {feed: a})[0] / scale, x_val)
    else:
        m.measure_invariance(lambda a: sess.run(None, {feed: a})[0], x_val)
    return m, probs
