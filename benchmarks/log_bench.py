"""What the prediction log costs on disk: bytes per million requests, and what its size budget
holds it to.

    python benchmarks/log_bench.py [--requests 400000] [--features 784] [--components 32] [--budget 32M]

Writes requests through the real `PredictionLog` into a fresh SQLite home, in flushes of 1,750
(7,000 req/s at the writer's 0.25 s), with the canonical model's shapes: 784 float features,
the reference projection (32 PCA components plus the reconstruction error, float16), request
ids the server makes (32 hex characters), random inputs (quantized to uint8 like any input).
The file's size counts its write-ahead log. The input ring is off: it holds a fixed 50,000
inputs per model (~40 MB at 784 features), not a cost per request. For each input sample share
it prints the SQLite file's growth and the rows' bytes by table, per million requests; then it
writes the same traffic under `--budget`, with retention after every 1% of the requests (the
server runs it every minute), and prints what the log holds at the end: the file stops growing
near the budget (plus the write-ahead log), the newest predictions kept, the sample share
lowered. Sizes only: no time is measured or asserted.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from shipyard.monitor.config import LogConfig, parse_size  # noqa: E402
from shipyard.monitor.logbudget import human, measure  # noqa: E402
from shipyard.monitor.predlog import PredictionLog  # noqa: E402
from shipyard.registry import Registry  # noqa: E402
from shipyard.settings import Settings  # noqa: E402
from shipyard.store.engine import sqlite_path  # noqa: E402

FLUSH = 1750


def on_disk(path: str) -> int:
    """The database file and its write-ahead log (rows sit there until a checkpoint)."""
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


class Runtime:
    """The served model as the log sees it: its name, version and reference projection."""

    def __init__(self, components: int, rng: np.random.Generator) -> None:
        self.name, self.version, self.dim, self.rng = "digits", 1, components + 1, rng

    def project(self, feats: list[np.ndarray]) -> np.ndarray:
        return self.rng.normal(size=(sum(len(f) for f in feats), self.dim)).astype(np.float32)


def write(home: Path, config: LogConfig, requests: int, features: int, components: int,
          retain_every: int = 0) -> dict[str, float]:
    """Log `requests` requests; what the SQLite file and the tables hold afterwards."""
    rng = np.random.default_rng(0)
    reg = Registry(settings=Settings(home=home))
    path = sqlite_path(reg.engine)
    assert path is not None
    start = on_disk(path)
    log = PredictionLog(reg.engine, config)
    rt = Runtime(components, rng)
    x = rng.random((FLUSH, features)).astype(np.float32)
    probs = rng.dirichlet(np.ones(10), FLUSH).astype(np.float32)
    done, flushes = 0, 0
    peak = start
    while done < requests:
        n = min(FLUSH, requests - done)
        rids = [secrets.token_hex(16) for _ in range(n)]
        log.record_batch(rt, rids, [1] * n, x[:n], probs[:n])  # type: ignore[arg-type]
        log.flush()
        done += n
        flushes += 1
        if retain_every and flushes % retain_every == 0:
            log.retain()
            peak = max(peak, on_disk(path))
    if retain_every:
        log.retain()
    with reg.engine.connect() as conn:
        tables = measure(conn)
        kept = conn.exec_driver_sql("SELECT coalesce(sum(n), 0) FROM prediction_chunks").scalar_one()
        inputs = conn.exec_driver_sql("SELECT coalesce(sum(n), 0) FROM prediction_inputs").scalar_one()
    size = on_disk(path)
    reg.engine.dispose()
    return {"file": size - start, "file_total": size, "peak": max(peak, size), "chunks": tables["prediction_chunks"],
            "inputs": tables["prediction_inputs"], "kept": kept, "kept_inputs": inputs, "share": log.budget.share}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400_000)
    ap.add_argument("--features", type=int, default=784)
    ap.add_argument("--components", type=int, default=32)
    ap.add_argument("--budget", default="32M", help="the size budget of the last run (e.g. 64M, 1G)")
    args = ap.parse_args()
    per_m = 1e6 / args.requests
    print(f"{args.requests:,} requests, {args.features} features, projection {args.components}+1, "
          f"flushes of {FLUSH}; SQLite; per million requests:\n")
    print(f"{'input sample':>14} {'file growth':>12} {'predictions':>12} {'inputs':>12} {'bytes/request':>14}")
    for share in (0.10, 0.01, 0.0):
        with tempfile.TemporaryDirectory() as tmp:
            r = write(Path(tmp), LogConfig(sample=share, ring=0, max_bytes=1 << 40), args.requests,
                      args.features, args.components)
        label = f"{share:.0%}" + (" (default)" if share == LogConfig.sample else "")
        print(f"{label:>14} {human(r['file'] * per_m):>12} {human(r['chunks'] * per_m):>12} "
              f"{human(r['inputs'] * per_m):>12} {r['file'] / args.requests:>14.1f}")
    budget = parse_size(args.budget)
    every = max(1, args.requests // FLUSH // 100)
    with tempfile.TemporaryDirectory() as tmp:
        r = write(Path(tmp), LogConfig(ring=0, max_bytes=budget), args.requests, args.features, args.components,
                  retain_every=every)
    print(f"\nunder a {human(budget)} budget (defaults otherwise; retention every {every} flushes): the file "
          f"peaked at {human(r['peak'])} and ends at {human(r['file_total'])}; the rows hold "
          f"{human(r['chunks'] + r['inputs'])} ({human(r['chunks'])} predictions, {human(r['inputs'])} inputs); "
          f"{r['kept']:,} of {args.requests:,} predictions kept (the newest), {r['kept_inputs']:,} sampled inputs; "
          f"sample share now {r['share']:.4g}")


if __name__ == "__main__":
    main()
