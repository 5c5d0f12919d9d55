"""`shipyard predict` on a large CSV against a plain script doing the same job: rows/s of each and
the ratio (goal: predict ≥ 0.8× the plain script, the limit for a file job).

    python benchmarks/predict_bench.py [--rows 500000] [--batch-size 4096] [--threads 1] [--repeat 3]

Trains the MLP on scikit-learn's wine table (13 numeric columns, 3 classes; 20 epochs), optimizes
it (fp32) and registers it as `wine@production` in a throw-away SHIPYARD_HOME, then writes a CSV
of `--rows` rows: the 178 real rows repeated with 1% multiplicative jitter, 4 decimals, with the
label column `target` (which predict ignores). Both sides then read that file in chunks of
`--batch-size` rows with pandas, run the bundle's preprocessing (the plain script: `spec.encode`
and `spec.apply`), run ONNX Runtime on the same batches with the same thread count, and write the
same CSV (row_id, label, p_<class>…, version; pyarrow's CSV writer). Timed end to end, best of
`--repeat`:

- in-process: `shipyard.serve.batch_predict.predict(...)` against the plain script as a function
  in this process (each loads the bundle and starts its ONNX Runtime session inside the timing);
- command: `shipyard predict … -q` against `python predict_bench.py --plain …` (each a fresh
  process: the interpreter and the imports count on both sides; the fixed cost of each, on a
  100-row file, is printed apart).

The two outputs must be equal (the same labels, probabilities within 1e-6). For reference it also
times the plain script writing with pandas' `to_csv` instead (what a script would usually do).
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
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

BIN = Path(sys.executable).parent
SHIPYARD = [sys.executable, "-m", "shipyard"]
GOAL = 0.8


def plain(bundle_dir: str, csv: str, out: str, batch_size: int, threads: int, version: int,
          writer: str = "arrow") -> int:
    """What a user would write by hand: read the CSV in chunks, the bundle's preprocessing, ONNX
    Runtime on each chunk, labels as classes[argmax], the same CSV out. Returns the rows written."""
    import onnxruntime as ort
    import pandas as pd

    from shipyard.bundle import Bundle

    bundle = Bundle.load(bundle_dir)
    spec = bundle.preprocess
    assert spec is not None and spec.columns is not None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(bundle.model_path), opts, providers=["CPUExecutionProvider"])
    inp, outp = bundle.meta.signature.onnx_input, sess.get_outputs()[0].name
    classes = np.array(bundle.classes, dtype=object)
    names = [c.name for c in spec.columns]
    probs_cols = [f"p_{c}" for c in bundle.classes]
    n = 0
    if writer == "arrow":
        import pyarrow as pa
        import pyarrow.csv as pc

        schema = pa.schema([("row_id", pa.int64()), ("label", pa.string()),
                            *[(c, pa.float32()) for c in probs_cols], ("version", pa.int64())])
        w = pc.CSVWriter(out, schema, write_options=pc.WriteOptions(quoting_style="needed"))
    else:
        f = open(out, "w", newline="")  # noqa: SIM115
    for chunk in pd.read_csv(csv, chunksize=batch_size):
        x = spec.apply(spec.encode({c: chunk[c].to_numpy() for c in names}))
        p = sess.run([outp], {inp: x})[0]
        ids = np.arange(n + 1, n + len(x) + 1)
        labels = classes[p.argmax(axis=1)]
        if writer == "arrow":
            w.write(pa.RecordBatch.from_arrays(
                [pa.array(ids), pa.array(labels, type=pa.string()), *[pa.array(p[:, j]) for j in range(p.shape[1])],
                 pa.array(np.full(len(x), version))], schema=schema))
        else:
            frame = pd.DataFrame({"row_id": ids, "label": labels, **{c: p[:, j] for j, c in enumerate(probs_cols)},
                                  "version": version})
            frame.to_csv(f, index=False, header=n == 0)
        n += len(x)
    (w if writer == "arrow" else f).close()
    return n


def make_csv(path: Path, rows: int) -> None:
    import pandas as pd
    from sklearn.datasets import load_wine

    bunch = load_wine(as_frame=True)
    df = bunch.frame.copy()
    df["target"] = np.asarray(bunch.target_names)[df["target"]]
    rng = np.random.default_rng(0)
    big = df.iloc[np.arange(rows) % len(df)].reset_index(drop=True)
    num = [c for c in big.columns if c != "target"]
    big[num] = (big[num].to_numpy() * rng.normal(1.0, 0.01, size=(rows, len(num)))).round(4)
    big.to_csv(path, index=False)
    del pd


def setup(tmp: Path, env: dict[str, str]) -> None:
    def cli(*args: str) -> str:
        return subprocess.run([*SHIPYARD, *args], env=env, capture_output=True, text=True, check=True).stdout

    run = json.loads(cli("train", "--data", "sklearn:wine", "--epochs", "20", "-q", "--json").splitlines()[-1])
    cli("optimize", run["run_id"], "--name", "wine", "--variants", "fp32", "--bench-seconds", "0.05",
        "-o", str(tmp / "wine.tar.gz"))
    cli("models", "register", str(tmp / "wine.tar.gz"), "--alias", "production")


def best(f: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--plain", nargs=4, metavar=("BUNDLE", "CSV", "OUT", "VERSION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        bundle, csv, out, version = args.plain
        plain(bundle, csv, out, args.batch_size, args.threads, int(version))
        return

    import pandas as pd

    from shipyard.registry import Registry
    from shipyard.serve.batch_predict import predict
    from shipyard.settings import Settings

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        env = {**os.environ, "SHIPYARD_HOME": str(tmp / "home")}
        setup(tmp, env)
        csv = tmp / "rows.csv"
        make_csv(csv, args.rows)
        settings = Settings(home=tmp / "home")
        reg = Registry(settings=settings)
        mv = reg.get("wine@production")
        bundle_dir = str(reg.bundle_path(mv))
        small = tmp / "small.csv"
        with csv.open() as f:  # the fixed cost: 100 rows
            small.write_text("".join(next(f) for _ in range(101)))
        outs = {k: tmp / f"{k}.csv" for k in ("predict", "plain", "cli", "plain-cli", "pandas")}
        common = ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        timings = {
            "predict": best(lambda: predict("wine@production", csv, outs["predict"], batch_size=args.batch_size,
                                            threads=args.threads, registry=reg), args.repeat),
            "plain": best(lambda: plain(bundle_dir, str(csv), str(outs["plain"]), args.batch_size, args.threads,
                                        mv.version), args.repeat),
            "cli": best(lambda: subprocess.run([*SHIPYARD, "predict", "wine@production", str(csv), "-o",
                                                str(outs["cli"]), "-q", *common], env=env, check=True,
                                               capture_output=True), args.repeat),
            "plain-cli": best(lambda: subprocess.run([sys.executable, __file__, "--plain", bundle_dir, str(csv),
                                                      str(outs["plain-cli"]), str(mv.version), *common], env=env,
                                                     check=True), args.repeat),
            "cli-start": best(lambda: subprocess.run([*SHIPYARD, "predict", "wine@production", str(small), "-o",
                                                      str(tmp / "s1.csv"), "-q", *common], env=env, check=True,
                                                     capture_output=True), args.repeat),
            "plain-start": best(lambda: subprocess.run([sys.executable, __file__, "--plain", bundle_dir, str(small),
                                                        str(tmp / "s2.csv"), str(mv.version), *common], env=env,
                                                       check=True), args.repeat),
            "pandas": best(lambda: plain(bundle_dir, str(csv), str(outs["pandas"]), args.batch_size, args.threads,
                                         mv.version, writer="pandas"), 1),
        }
        frames = {k: pd.read_csv(p) for k, p in outs.items()}
        ref = frames["plain"]
        for k, f in frames.items():
            assert list(f.columns) == list(ref.columns), (k, list(f.columns))
            assert len(f) == args.rows, k
            assert (f["row_id"] == ref["row_id"]).all() and (f["label"] == ref["label"]).all(), k
            p = [c for c in f.columns if c.startswith("p_")]
            assert np.abs(f[p].to_numpy() - ref[p].to_numpy()).max() <= 1e-6, k
        size = csv.stat().st_size
    rate = {k: args.rows / t for k, t in timings.items()}
    print(f"\npredict_bench: {args.rows:,} rows × 13 columns ({size / 1e6:.1f} MB CSV), wine MLP (fp32), "
          f"batches of {args.batch_size}, {args.threads} ORT thread(s), best of {args.repeat}\n")
    print(f"{'':<44}{'seconds':>9}{'rows/s':>12}")
    rows = [("shipyard.serve.batch_predict.predict()", "predict"), ("plain script, in-process", "plain"),
            ("shipyard predict (command)", "cli"), ("plain script (python process)", "plain-cli"),
            ("plain script with pandas to_csv (1 run)", "pandas")]
    for what, k in rows:
        print(f"{what:<44}{timings[k]:>9.2f}{rate[k]:>12,.0f}")
    print(f"\nfixed cost of a process (a 100-row file): shipyard predict {timings['cli-start']:.2f} s, "
          f"plain script {timings['plain-start']:.2f} s")
    print("\noutputs equal (labels; probabilities within 1e-6)")
    print(f"\ngoal: predict ≥ {GOAL}× the plain script's rows/s")
    for what, a, b in (("in-process", "predict", "plain"), ("command", "cli", "plain-cli")):
        ratio = rate[a] / rate[b]
        print(f"  {what:<12}{ratio:>6.2f}×   {'PASS' if ratio >= GOAL else 'MISS'}")


if __name__ == "__main__":
    main()
