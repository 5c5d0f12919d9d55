"""fp32 vs int8 (dynamic, static QDQ) for the canonical model on Fashion-MNIST: accuracy, size,
batch-1 p50 latency and batch-64 throughput in ONNX Runtime at one thread, with ratios to fp32.

    python benchmarks/quantize_bench.py [--run RUN] [--epochs 10] [--seconds 2]

Trains the canonical recipe on fashion-mnist first unless --run names a finished run. Goal for
the chosen int8 variant: ≤ 0.3× the fp32 size, accuracy within 0.5 point, faster at batch 64.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from shipyard.optimizing.build import optimize
from shipyard.settings import Settings
from shipyard.training import get_run, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="an existing run id (in SHIPYARD_HOME) instead of training one")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=2.0, help="per latency and per throughput measurement")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            settings = Settings.from_env()
            run = get_run(args.run, settings=settings)
        else:
            settings = Settings(home=Path(tmp) / "home")
            run = train(data="fashion-mnist", epochs=args.epochs, settings=settings)
        bundle, measured, reason = optimize(run, settings=settings, bench_seconds=args.seconds,
                                            output=Path(tmp) / "bundle")
    fp32 = next(m for m in measured if m.name == "fp32")
    print(f"\nquantize_bench: {run.data_source}, run {run.id}, ONNX Runtime, 1 thread\n")
    print(f"{'variant':<14}{'accuracy':>9}{'Δ points':>9}{'size KiB':>10}{'× fp32':>8}{'p50 µs':>9}"
          f"{'× fp32':>8}{'batch64/s':>11}{'× fp32':>8}  chosen")
    for m in measured:
        print(f"{m.name:<14}{m.accuracy:>9.2%}{(m.accuracy - fp32.accuracy) * 100:>+9.2f}"
              f"{m.size_bytes / 1024:>10.0f}{m.size_bytes / fp32.size_bytes:>8.2f}"
              f"{m.latency_p50_ms * 1000:>9.1f}{m.latency_p50_ms / fp32.latency_p50_ms:>8.2f}"
              f"{m.throughput_per_s:>11,.0f}{m.throughput_per_s / fp32.throughput_per_s:>8.2f}"
              f"  {'*' if m.chosen else ''}")
    print(f"\nchosen: {bundle.meta.variant} ({reason})")
    int8 = [m for m in measured if m.name != "fp32"]
    best = next((m for m in measured if m.chosen and m.name != "fp32"), None) or max(
        int8, key=lambda m: m.throughput_per_s)
    checks = [("size ≤ 0.30× fp32", best.size_bytes / fp32.size_bytes <= 0.30,
               f"{best.size_bytes / fp32.size_bytes:.2f}×"),
              ("accuracy within 0.5 point", fp32.accuracy - best.accuracy <= 0.005,
               f"{(best.accuracy - fp32.accuracy) * 100:+.2f} points"),
              ("faster at batch 64", best.throughput_per_s > fp32.throughput_per_s,
               f"{best.throughput_per_s / fp32.throughput_per_s:.2f}×")]
    print(f"\ngoals for {best.name}:")
    for what, ok, value in checks:
        print(f"  {what:<28}{value:>16}   {'PASS' if ok else 'MISS'}")


if __name__ == "__main__":
    main()
