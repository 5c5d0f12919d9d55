"""`shipyard predict` with real processes: a table model trained, optimized and registered through
the CLI (wine's numeric columns plus a categorical one) predicts a CSV and a Parquet file, and the
MNIST champion a folder of PNGs and NPZ arrays; every answer equals the bundle's own predictions
in this process (its preprocessing and ONNX Runtime, or `ModelRuntime`). Bad rows fail the job
naming their row and line and leave no output, or are skipped and listed with --skip-bad-rows.
The command never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest

from shipyard.bundle import Bundle

from ..conftest import SHIPYARD, run_cli
from .test_tabular import offline

if TYPE_CHECKING:
    from ..conftest import Champion

pytestmark = pytest.mark.timeout(600)

Table = tuple[dict[str, str], Bundle, pd.DataFrame]


def wine_rows() -> pd.DataFrame:
    """scikit-learn's wine data as a user's file holds it: numeric columns, a categorical one
    (the region, derived from a real column so that it carries signal) and the class by name."""
    from sklearn.datasets import load_wine

    bunch = load_wine(as_frame=True)
    df = bunch.frame.drop(columns=["od280/od315_of_diluted_wines", "proanthocyanins"])
    df["region"] = np.where(df["hue"] > 1.0, "north", np.where(df["hue"] > 0.75, "centre", "south"))
    df["cultivar"] = np.asarray(bunch.target_names)[df.pop("target")]
    return df


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Table:
    """The wine model trained on a CSV (no imputation: a missing value is a bad row), optimized
    and registered as wine@1 behind production: (CLI environment, bundle, the training rows)."""
    tmp = tmp_path_factory.mktemp("predict")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env |= {"SHIPYARD_HOME": str(tmp / "home"), "PYTHONUNBUFFERED": "1"}
    df = wine_rows()
    df.to_csv(tmp / "train.csv", index=False)
    run = run_cli(["train", "--data", f"csv:{tmp / 'train.csv'}", "--label-column", "cultivar", "--epochs", "20",
                   "-q", "--json"], env)
    run_id = json.loads(run.stdout.strip().splitlines()[-1])["run_id"]
    run_cli(["optimize", run_id, "--name", "wine", "-o", str(tmp / "wine.tar.gz"), "--variants", "fp32",
             "--bench-seconds", "0.05"], env)
    run_cli(["models", "register", str(tmp / "wine.tar.gz"), "--alias", "production"], env)
    return env, Bundle.load(tmp / "wine.tar.gz"), df


def last_json(text: str) -> dict[str, Any]:
    return json.loads(text.strip().splitlines()[-1])  # type: ignore[no-any-return]


def check_answers(out: pd.DataFrame, probs: np.ndarray, classes: list[str], version: int | None) -> None:
    assert list(out.columns) == ["row_id", "label", *(f"p_{c}" for c in classes), "version"]
    np.testing.assert_allclose(out[[f"p_{c}" for c in classes]].to_numpy(), probs, atol=1e-6)
    assert out["label"].astype(str).tolist() == [classes[i] for i in probs.argmax(axis=1)]
    if version is None:
        assert out["version"].isna().all()
    else:
        assert (out["version"] == version).all()


def test_csv_rows_equal_the_bundles_own_predictions(table: Table, tmp_path: Path) -> None:
    env, bundle, df = table
    src, dest = tmp_path / "wine.csv", tmp_path / "out" / "answers.csv"
    df.assign(note="kept apart").to_csv(src, index=False)  # the label column and another: both ignored
    p = run_cli(["predict", "wine@production", str(src), "-o", str(dest), "--batch-size", "50", "--json"], env)
    result = last_json(p.stdout)
    assert {"rows", "output", "version", "seconds"} <= result.keys()
    assert (result["rows"], result["output"], result["version"]) == (len(df), str(dest), 1)
    assert result["ignored_columns"] == ["cultivar", "note"] and result["bad_rows"] == []
    assert "ignored 2 column(s) the model does not take: cultivar, note" in p.stderr
    out = pd.read_csv(dest)
    assert out["row_id"].tolist() == list(range(1, len(df) + 1))
    probs = offline(bundle, df)
    check_answers(out, probs, bundle.classes, 1)
    assert np.mean(out["label"] == df["cultivar"]) > 0.85
    assert sorted(os.listdir(dest.parent)) == ["answers.csv"]  # the temporary file was renamed


def test_parquet_in_and_out_with_an_id_column(table: Table, tmp_path: Path) -> None:
    env, bundle, df = table
    src, dest = tmp_path / "wine.parquet", tmp_path / "answers.parquet"
    df.assign(sample=[f"w{i:03d}" for i in range(len(df))]).to_parquet(src)
    p = run_cli(["predict", "wine", str(src), "-o", str(dest), "--id-column", "sample", "--json"], env)
    assert last_json(p.stdout)["rows"] == len(df)
    out = pd.read_parquet(dest)
    assert out["row_id"].tolist() == [f"w{i:03d}" for i in range(len(df))]
    assert str(out["p_class_0"].dtype) == "float32" and str(out["version"].dtype) == "int64"
    check_answers(out, offline(bundle, df), bundle.classes, 1)
    # the same answers written as CSV by --format, whatever the suffix says
    run_cli(["predict", "wine@1", str(src), "-o", str(tmp_path / "answers.txt"), "--format", "csv", "-q"], env)
    check_answers(pd.read_csv(tmp_path / "answers.txt"), offline(bundle, df), bundle.classes, 1)


def write_with_blank_line(df: pd.DataFrame, path: Path, after: int) -> None:
    """The rows as CSV with a blank line after data row `after` (so rows and lines part ways)."""
    lines = df.to_csv(index=False).splitlines()
    lines.insert(after + 1, "")
    path.write_text("\n".join(lines) + "\n")


def test_a_bad_row_fails_the_job_naming_its_row_and_line(table: Table, tmp_path: Path) -> None:
    env, _, df = table
    rows = df.iloc[:20].copy()
    rows.iloc[6, rows.columns.get_loc("region")] = "west"  # data row 7
    src, dest = tmp_path / "bad.csv", tmp_path / "answers.csv"
    write_with_blank_line(rows, src, after=3)  # row 7 is on line 9: header, rows 1-3, a blank line, rows 4-7
    p = run_cli(["predict", "wine", str(src), "-o", str(dest), "--json"], env, check=False)
    assert p.returncode == 1, p.stderr
    assert "row 7 (line 9): column 'region': 'west' is not one of the categories training saw" in p.stderr
    assert "--skip-bad-rows" in p.stderr and "Traceback" not in p.stderr
    assert "row 7 (line 9)" in last_json(p.stdout)["error"]
    assert sorted(os.listdir(tmp_path)) == ["bad.csv"]  # no output, no partial file


def test_skip_bad_rows_writes_the_others_and_lists_the_bad_ones(table: Table, tmp_path: Path) -> None:
    env, bundle, df = table
    rows = df.iloc[:30].copy()
    rows["alcohol"] = rows["alcohol"].astype(object)
    rows.iloc[2, rows.columns.get_loc("alcohol")] = "n/a?"  # row 3: not a number
    rows.iloc[9, rows.columns.get_loc("region")] = "west"  # row 10: a category never seen
    rows.iloc[19, rows.columns.get_loc("magnesium")] = np.nan  # row 20: missing, and no imputation
    src, dest = tmp_path / "bad.csv", tmp_path / "answers.csv"
    rows.to_csv(src, index=False)
    p = run_cli(["predict", "wine", str(src), "-o", str(dest), "--skip-bad-rows", "--json", "--batch-size", "8"], env)
    result = last_json(p.stdout)
    assert (result["rows"], result["bad_row_count"]) == (27, 3)
    assert [(b["row"], b["line"], b["column"]) for b in result["bad_rows"]] == [
        (3, 4, "alcohol"), (10, 11, "region"), (20, 21, "magnesium")]
    assert "'n/a?' is not a number" in result["bad_rows"][0]["reason"]
    assert "no imputation" in result["bad_rows"][2]["reason"]
    for text in ("skipped 3 bad row(s)", "row 3 (line 4): column 'alcohol'", "row 10 (line 11): column 'region'",
                 "row 20 (line 21): column 'magnesium'"):
        assert text in p.stderr
    out = pd.read_csv(dest)
    good = [i for i in range(30) if i not in (2, 9, 19)]
    assert out["row_id"].tolist() == [i + 1 for i in good]
    check_answers(out, offline(bundle, df.iloc[good]), bundle.classes, 1)


def test_the_command_never_imports_torch(table: Table, tmp_path: Path) -> None:
    env, _, df = table
    df.to_csv(tmp_path / "wine.csv", index=False)
    code = ("import sys\nfrom shipyard.cli.app import app\n"
            f"try:\n    app(['predict', 'wine', {str(tmp_path / 'wine.csv')!r}, '-o', {str(tmp_path / 'o.csv')!r}])\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "print('torch' in sys.modules, 'sklearn' in sys.modules)\n")
    p = subprocess.run([SHIPYARD[0], "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "False False"
    assert len(pd.read_csv(tmp_path / "o.csv")) == len(df)


def runtime_answers(bundle: Bundle, images: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """What the server answers for these raw images: `ModelRuntime`'s features, graph and labels."""
    from shipyard.serve.runtime import ModelRuntime

    rt = ModelRuntime(bundle)
    probs = rt.predict(rt.features("image", images))
    return probs, [str(v) for v in rt.labels(probs)]


def test_an_image_folder_matches_the_server_runtime(champion: Champion, cli_env: dict[str, str],
                                                    tmp_path: Path) -> None:
    from PIL import Image

    from shipyard.data import mnist_sample

    _, reg = champion
    x = mnist_sample().x[::125][:40]  # 40 digits of every class
    folder = tmp_path / "digits"
    names = [f"{'batch-a' if i < 25 else 'batch-b/inner'}/{i:03d}.png" for i in range(len(x))]
    for name, img in zip(names, x, strict=True):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / name)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "big.png")
    (folder / "notes.txt").write_text("not an image")
    dest = tmp_path / "answers.csv"
    refused = run_cli(["predict", "digits", str(folder), "-o", str(dest)], cli_env, check=False)
    assert refused.returncode == 1 and "(big.png): image is 32x32, the model takes 28x28" in refused.stderr, \
        refused.stderr
    assert not dest.exists()
    p = run_cli(["predict", "digits@production", str(folder), "-o", str(dest), "--skip-bad-rows", "--json",
                 "--batch-size", "16"], cli_env)
    result = last_json(p.stdout)
    assert (result["rows"], result["bad_row_count"], result["bad_rows"][0]["id"]) == (40, 1, "big.png")
    out = pd.read_csv(dest, dtype={"row_id": str, "label": str})
    order = np.argsort(names)  # rows come in path order
    assert out["row_id"].tolist() == [names[i] for i in order]
    probs, labels = runtime_answers(reg.load("digits@1"), x[order])
    check_answers(out, probs, [str(c) for c in range(10)], 1)
    assert out["label"].tolist() == labels


def test_npz_arrays_and_a_bundle_path_in_process(champion: Champion, cli_env: dict[str, str], tmp_path: Path) -> None:
    import shipyard

    _, reg = champion
    bundle = reg.load("digits@1")
    x = shipyard.data.mnist_sample().x[7::50][:100]
    spec = bundle.preprocess
    assert spec is not None
    np.savez(tmp_path / "raw.npz", x=x, y=np.zeros(len(x)))
    np.savez(tmp_path / "features.npz", x_test=spec.apply(x))
    probs, _ = runtime_answers(bundle, x)
    p = run_cli(["predict", str(bundle.path), str(tmp_path / "raw.npz"), "-o", str(tmp_path / "raw.parquet"),
                 "--json"], cli_env)
    assert last_json(p.stdout)["version"] is None  # a bundle on disk has no registry version
    out = pd.read_parquet(tmp_path / "raw.parquet")
    assert out["row_id"].tolist() == list(range(1, len(x) + 1))
    check_answers(out, probs, bundle.classes, None)
    result = shipyard.predict(str(bundle.path), tmp_path / "features.npz", tmp_path / "features.csv")
    assert (result.rows, result.version, result.bad_row_count) == (len(x), None, 0)
    assert "taken as ready features" in result.notes[0]
    check_answers(pd.read_csv(tmp_path / "features.csv"), probs, bundle.classes, None)


def test_usage_and_data_errors_are_one_line_with_their_exit_code(champion: Champion, cli_env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 5, 5), np.uint8))
    cases = [(["digits", str(tmp_path / "x.npz"), "-o", str(tmp_path / "o.json")], 2, "cannot tell the output format"),
             (["digits", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "o.csv")], 1, "no such file"),
             (["digits", str(tmp_path / "x.npz"), "-o", str(tmp_path / "o.csv")], 1, "has shape [3, 5, 5]"),
             (["nope", str(tmp_path / "x.npz"), "-o", str(tmp_path / "o.csv")], 1, "no model 'nope'")]
    for args, rc, text in cases:
        p = run_cli(["predict", *args, "--json"], cli_env, check=False)
        assert p.returncode == rc and text in last_json(p.stdout)["error"], (args, p.returncode, p.stderr)
        assert "Traceback" not in p.stderr
    assert sorted(os.listdir(tmp_path)) == ["home", "x.npz"]


def test_the_csv_writer_without_pyarrow_writes_the_same_table(tmp_path: Path) -> None:
    from shipyard.serve.batch_predict import _Writer

    probs = np.random.default_rng(0).random((5, 2)).astype(np.float32)
    ids, labels = np.arange(1, 6), np.array(["a", "b", "a", "b", "a"], dtype=object)
    for arrow in (True, False):
        w = _Writer(tmp_path / f"{arrow}.csv", "csv", ["label", "p_a", "p_b"], False, False, 3, arrow=arrow)
        w.write(ids[:2], probs[:2], labels[:2])
        w.write(ids[2:], probs[2:], labels[2:])
        w.close()
    a, b = pd.read_csv(tmp_path / "True.csv"), pd.read_csv(tmp_path / "False.csv")
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == ["row_id", "label", "p_a", "p_b", "version"]
    np.testing.assert_allclose(a[["p_a", "p_b"]].to_numpy(), probs, rtol=1e-7)
