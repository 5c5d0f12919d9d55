"""Measure a variant on this machine: accuracy, file size, batch-1 p50 latency and batch-64
throughput, each at a fixed ONNX Runtime thread count so variants compare fairly."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


@dataclass
class Measured:
    name: str
    accuracy: float
    size_bytes: int
    latency_p50_ms: float
    throughput_per_s: float
    max_abs_diff: float | None = None  # fp32 variants: vs PyTorch
    agreement: float | None = None  # int8 variants: argmax agreement with fp32
    chosen: bool = False

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
            seconds: float = 0.5) -> tuple[Measured, np.ndarray]:
    """Returns the measurements and the variant's validation probabilities."""
    sess = session(path, threads)
    feed = sess.get_inputs()[0].name
    probs = predict(sess, x_val)
    accuracy = float((probs.argmax(1) == y_val).mean())
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
    return Measured(name, accuracy, path.stat().st_size, float(np.median(times)), throughput), probs
