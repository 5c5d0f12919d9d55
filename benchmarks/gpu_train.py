"""The canonical recipe on Fashion-MNIST with `--device cuda` and on the CPU, in one script,
reporting epoch times from the runs' own tracked metrics.

    python benchmarks/gpu_train.py [--epochs 10] [--data fashion-mnist] [--cpu-threads 1]

Runs `shipyard train` as a subprocess (from the installed package, or from the source tree with
PYTHONPATH=src on a machine that brings its own torch). Needs a CUDA device for the cuda rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def train(home: str, data: str, epochs: int, device: str, threads: int, batch: int) -> dict:  # type: ignore[type-arg]
    cmd = [sys.executable, "-m", "shipyard", "--home", home, "train", "--data", data, "--epochs",
           str(epochs), "--device", device, "--threads", str(threads), "--batch-size", str(batch),
           "--quiet", "--json"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--cpu-threads", type=int, default=1)
    ap.add_argument("--extra-batch", type=int, default=256, help="also run both devices at this batch size")
    args = ap.parse_args()
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(f"torch {torch.__version__}, cuda device: {gpu or 'none'}, cpu cores: {os.cpu_count()}")
    configs = [("cuda", 1, 32), ("cpu", args.cpu_threads, 32)]
    if args.extra_batch:
        configs += [("cuda", 1, args.extra_batch), ("cpu", args.cpu_threads, args.extra_batch)]
    if gpu is None:
        configs = [c for c in configs if c[0] != "cuda"]
    rows = []
    with tempfile.TemporaryDirectory() as home:
        for device, threads, batch in configs:
            r = train(home, args.data, args.epochs, device, threads, batch)
            times = r["metrics"]["epoch_time_s"]
            rows.append((device, threads, batch, times[0], statistics.median(times[1:] or times),
                         r["wall_s"], r["best_val_accuracy"], r["test_accuracy"]))
            print(f"  done {device} batch {batch}", file=sys.stderr)
    print(f"\n{args.data}, canonical MLP, {args.epochs} epochs, Adam 0.001\n")
    print(f"{'device':<7}{'threads':>8}{'batch':>6}{'epoch1 s':>10}{'median epoch s':>16}{'wall s':>9}"
          f"{'best val':>10}{'test':>8}")
    for d, t, b, e1, med, wall, val, test in rows:
        print(f"{d:<7}{t:>8}{b:>6}{e1:>10.2f}{med:>16.2f}{wall:>9.1f}{val:>10.2%}{(test or 0):>8.2%}")
    by = {(d, b): med for d, _, b, _, med, *_ in rows}
    for b in sorted({b for _, b in by}):
        if ("cuda", b) in by and ("cpu", b) in by:
            print(f"batch {b}: cpu median epoch / cuda median epoch = {by[('cpu', b)] / by[('cuda', b)]:.2f}x")


if __name__ == "__main__":
    main()
