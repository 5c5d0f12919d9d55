"""Tables end to end with real processes: a CSV of named numeric and categorical columns with
missing values is trained on (`--impute median`), optimized, registered and served; clients send
the rows as they are (one V2 input per column, JSON and binary, our own code and tritonclient),
and the answers equal the bundle's offline predictions on the same rows. Bad requests get a 400
naming the column."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from shipyard.bundle import Bundle

from ..conftest import run_cli
from ..serving import Server, serve, server_env

pytestmark = pytest.mark.timeout(600)


def wine_table() -> pd.DataFrame:
    """scikit-learn's wine data as a user's file would hold it: class names as text, a categorical
    column (the vineyard's region, from a real column so that it carries signal), and holes."""
    from sklearn.datasets import load_wine

    bunch = load_wine(as_frame=True)
    df = bunch.frame.drop(columns=["od280/od315_of_diluted_wines", "proanthocyanins"])
    df["region"] = np.where(df["hue"] > 1.0, "north", np.where(df["hue"] > 0.75, "centre", "south"))
    df["strong"] = df["alcohol"] > 13.0  # a boolean column: categorical, 'False' and 'True'
    df["cultivar"] = np.asarray(bunch.target_names)[df.pop("target")]
    rng = np.random.default_rng(7)
    holes = rng.choice(len(df), 12, replace=False)
    df.loc[holes[:6], "magnesium"] = np.nan
    df.loc[holes[6:], "region"] = None
    return df


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Bundle, pd.DataFrame, Path]]:
    tmp = tmp_path_factory.mktemp("tabular")
    home = tmp / "home"
    env = server_env(home)
    df = wine_table()
    csv_path = tmp / "wine.csv"
    df.to_csv(csv_path, index=False)
    refused = run_cli(["train", "--data", f"csv:{csv_path}", "--label-column", "cultivar", "--epochs", "1", "-q"],
                      env, check=False)
    assert refused.returncode == 1  # a data error (2 is a usage error)
    first_hole = int(df.index[df["magnesium"].isna()][0])
    assert f"line {first_hole + 2}: column 'magnesium' has no value" in refused.stderr
    assert "Traceback" not in refused.stderr
    run = run_cli(["train", "--data", f"csv:{csv_path}", "--label-column", "cultivar", "--impute", "median",
                   "--epochs", "40", "-q", "--json"], env)
    run_id = json.loads(run.stdout.strip().splitlines()[-1])["run_id"]
    bundle_path = tmp / "wine.tar.gz"
    run_cli(["optimize", run_id, "--name", "wine", "-o", str(bundle_path), "--variants", "fp32",
             "--bench-seconds", "0.05"], env)
    run_cli(["models", "register", str(bundle_path), "--alias", "production"], env)
    bundle = Bundle.load(bundle_path)
    # an all-numeric table beside it, made in this process (the CLI path is the wine model's)
    from shipyard.optimizing import optimize
    from shipyard.registry import Registry
    from shipyard.settings import Settings
    from shipyard.training import train

    settings = Settings(home=home)
    cancer_run = train(data="sklearn:breast_cancer", epochs=8, settings=settings, progress=False)
    cancer = optimize(cancer_run, name="cancer", output=tmp / "cancer.tar.gz", variants=("fp32",),
                      bench_seconds=0.05, settings=settings)
    Registry(settings=settings).register(cancer.path, "cancer", alias="production")
    with serve(home, "wine", "cancer") as server:
        yield server, bundle, df, tmp


def offline(bundle: Bundle, df: pd.DataFrame) -> np.ndarray:
    """The bundle's own preprocessing and graph on the rows, in this process (no server)."""
    spec = bundle.preprocess
    assert spec is not None
    raw = spec.encode({c.name: df[c.name].to_numpy(dtype=object if c.kind == "categorical" else np.float64)
                       for c in spec.columns or ()})
    sess = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
    return sess.run(None, {bundle.meta.signature.onnx_input: spec.apply(raw)})[0]  # type: ignore[no-any-return]


def columns_json(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for name in df.columns:
        col = df[name]
        if col.dtype.kind in "fi" and col.dtype != bool:
            out.append({"name": name, "datatype": "FP32", "shape": [len(df)], "data": col.astype(float).tolist()})
        else:
            out.append({"name": name, "datatype": "BYTES", "shape": [len(df)], "data": col.astype(str).tolist()})
    return out


def test_signature_names_the_raw_columns(served: tuple[Server, Bundle, pd.DataFrame, Path]) -> None:
    server, bundle, df, _ = served
    meta = httpx.get(f"{server.base}/v2/models/wine", timeout=10).json()
    kinds = {i["name"]: (i["datatype"], i["parameters"]["kind"]) for i in meta["inputs"]}
    features = [c for c in df.columns if c != "cultivar"]
    for name in features:
        assert kinds[name] == ("BYTES" if name in ("region", "strong") else "FP32", "column")
    assert "raw" not in kinds  # a categorical column: no all-numeric raw matrix
    spec = bundle.preprocess
    assert spec is not None and spec.impute == "median"
    region = next(c for c in spec.columns or () if c.name == "region")
    assert region.categories == ("centre", "north", "south") and region.fill is not None


def test_served_rows_equal_offline_predictions(served: tuple[Server, Bundle, pd.DataFrame, Path]) -> None:
    server, bundle, df, _ = served
    rows = df.drop(columns="cultivar").dropna().iloc[:40]
    r = httpx.post(f"{server.base}/v2/models/wine/infer", json={"inputs": columns_json(rows)}, timeout=30)
    assert r.status_code == 200, r.text
    probs = np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(len(rows), -1)
    np.testing.assert_allclose(probs, offline(bundle, rows), atol=1e-6)
    labels = r.json()["outputs"][1]["data"]
    truth = df.loc[rows.index, "cultivar"].tolist()
    assert np.mean([a == b for a, b in zip(labels, truth, strict=True)]) > 0.85


def test_tritonclient_sends_columns_in_binary(served: tuple[Server, Bundle, pd.DataFrame, Path]) -> None:
    """A real third-party client: Triton's, with BYTES and FP32 columns as binary tensors, and a
    missing numeric value (NaN) that training's imputation fills."""
    import tritonclient.http as th

    server, bundle, df, _ = served
    rows = df.drop(columns="cultivar").iloc[:30].copy()
    rows["region"] = rows["region"].fillna("north")  # a missing category is sent as a category
    rows.loc[rows.index[:3], "magnesium"] = np.nan
    client = th.InferenceServerClient(server.base.removeprefix("http://"))
    inputs = []
    for name in rows.columns:
        if name == "region":
            arr = rows[name].to_numpy(dtype=object)
            t = th.InferInput(name, [len(rows)], "BYTES")
        elif name == "strong":
            arr = rows[name].to_numpy(dtype=bool)
            t = th.InferInput(name, [len(rows)], "BOOL")
        else:
            arr = rows[name].to_numpy(dtype=np.float32)
            t = th.InferInput(name, [len(rows)], "FP32")
        t.set_data_from_numpy(arr, binary_data=True)
        inputs.append(t)
    result = client.infer("wine", inputs, outputs=[th.InferRequestedOutput("probabilities", binary_data=True)])
    probs = result.as_numpy("probabilities")
    np.testing.assert_allclose(probs, offline(bundle, rows), atol=1e-6)


def test_our_client_sends_a_dataframe(served: tuple[Server, Bundle, pd.DataFrame, Path]) -> None:
    """`shipyard.Client.predict(dataframe)`: one input per column (FP32, BOOL, BYTES), binary by
    default and in JSON, answered as the bundle answers offline."""
    from shipyard import Client

    server, bundle, df, _ = served
    rows = df.drop(columns="cultivar").dropna().iloc[:25]
    with Client(server.base) as client:
        binary = client.predict("wine", rows)
        as_json = client.predict("wine", rows, binary=False)
    np.testing.assert_allclose(binary.probabilities, offline(bundle, rows), atol=1e-6)
    np.testing.assert_array_equal(binary.probabilities, as_json.probabilities)
    assert list(binary.labels) == list(as_json.labels) and len(binary.instance_ids) == 25


def test_v1_takes_named_columns_in_both_forms(served: tuple[Server, Bundle, pd.DataFrame, Path]) -> None:
    """TF Serving's forms for several named inputs: rows of objects, or an object of columns;
    null is a missing value (imputed here), answered as the bundle answers offline."""
    server, bundle, df, _ = served
    rows = df.drop(columns="cultivar").fillna({"region": "centre"}).iloc[:12].copy()
    rows.loc[rows.index[2], "magnesium"] = np.nan
    expected = offline(bundle, rows)
    records = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
               for r in json.loads(rows.to_json(orient="records"))]
    assert records[2]["magnesium"] is None
    by_rows = httpx.post(f"{server.base}/v1/models/wine:predict", json={"instances": records}, timeout=10)
    assert by_rows.status_code == 200, by_rows.text
    np.testing.assert_allclose([p["probabilities"] for p in by_rows.json()["predictions"]], expected, atol=1e-5)
    by_columns = httpx.post(f"{server.base}/v1/models/wine:predict", json={
        "inputs": {k: [r[k] for r in records] for k in records[0]}}, timeout=10)
    assert by_columns.status_code == 200, by_columns.text
    np.testing.assert_allclose(by_columns.json()["outputs"]["probabilities"], expected, atol=1e-5)
    ragged = httpx.post(f"{server.base}/v1/models/wine:predict", json={
        "instances": [records[0], {k: v for k, v in records[1].items() if k != "hue"}]}, timeout=10)
    assert ragged.status_code == 400 and "'instances'[1] must name the same columns" in ragged.json()["error"]
    unknown = httpx.post(f"{server.base}/v1/models/wine:predict", json={
        "instances": [{**records[0], "region": "arctic"}]}, timeout=10)
    assert unknown.status_code == 400 and "'arctic', not one of the categories" in unknown.json()["error"]


def test_raw_v1_rows_of_a_numeric_table_are_preprocessed(served: tuple[Server, Bundle, pd.DataFrame, Path]) -> None:
    """An all-numeric table takes `raw` [N, columns]; unnamed v1 rows go there too, never
    straight into the standardized features (the silent skew a user reported)."""
    from sklearn.datasets import load_breast_cancer

    server = served[0]
    data = load_breast_cancer()
    x, y = data.data[:200], data.target[:200]
    names = [str(data.target_names[i]) for i in y]
    v1 = httpx.post(f"{server.base}/v1/models/cancer:predict", json={"instances": x.tolist()}, timeout=30)
    v2 = httpx.post(f"{server.base}/v2/models/cancer/infer", json={"inputs": [
        {"name": "raw", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}, timeout=30)
    assert v1.status_code == 200 and v2.status_code == 200, (v1.text, v2.text)
    v1_labels = [p["label"] for p in v1.json()["predictions"]]
    assert v1_labels == v2.json()["outputs"][1]["data"]
    assert np.mean([a == b for a, b in zip(v1_labels, names, strict=True)]) > 0.9  # raw rows, preprocessed


@pytest.mark.parametrize(("change", "status", "message"), [
    (lambda ins: ins[:-1], 400, "missing column 'strong'"),
    (lambda ins: [*ins, {"name": "colour", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}], 400,
     "unknown column 'colour'"),
    (lambda ins: [{**i, "datatype": "BYTES", "data": ["x", "y"]} if i["name"] == "alcohol" else i for i in ins],
     400, "column 'alcohol' is numeric: send FP32"),
    (lambda ins: [{**i, "datatype": "FP32", "data": [1, 2]} if i["name"] == "region" else i for i in ins],
     400, "column 'region' is categorical: send BYTES"),
    (lambda ins: [{**i, "data": ["north", "arctic"]} if i["name"] == "region" else i for i in ins],
     400, "column 'region': row 1 holds 'arctic', not one of the categories training saw"),
    (lambda ins: [{**i, "data": ["north", 3]} if i["name"] == "region" else i for i in ins],
     400, "input 'region' is BYTES: 'data' takes strings"),
    (lambda ins: [{**i, "shape": [3], "data": [1.0, 2.0, 3.0]} if i["name"] == "hue" else i for i in ins],
     400, "columns have different lengths"),
    (lambda ins: [{**i, "shape": [0], "data": []} for i in ins], 400, "holds no instances"),
    (lambda ins: [i for i in ins if i["name"] == "hue"], 400, "missing column 'alcohol'"),
])
def test_bad_columns_get_a_400_naming_the_column(served: tuple[Server, Bundle, pd.DataFrame, Path], change: Any,
                                                 status: int, message: str) -> None:
    server, _, df, _ = served
    good = columns_json(df.drop(columns="cultivar").dropna().iloc[:2])
    r = httpx.post(f"{server.base}/v2/models/wine/infer", json={"inputs": change(good)}, timeout=10)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert httpx.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200


def test_numeric_columns_take_any_number_type(served: tuple[Server, Bundle, pd.DataFrame, Path]) -> None:
    """FP64 or INT64 numeric columns (pandas' own types) are read as numbers, as FP32 ones are."""
    server, bundle, df, _ = served
    rows = df.drop(columns="cultivar").dropna().iloc[:3]
    inputs = [{**i, "datatype": "FP64"} if i["datatype"] == "FP32" else i for i in columns_json(rows)]
    inputs = [{**i, "datatype": "INT64", "data": [int(v) for v in i["data"]]} if i["name"] == "magnesium" else i
              for i in inputs]  # magnesium holds whole numbers
    r = httpx.post(f"{server.base}/v2/models/wine/infer", json={"inputs": inputs}, timeout=10)
    assert r.status_code == 200, r.text
    probs = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(3, -1)
    np.testing.assert_allclose(probs, offline(bundle, rows), atol=1e-5)


def test_a_flood_of_text_elements_is_a_413(served: tuple[Server, Bundle, pd.DataFrame, Path]) -> None:
    """Each BYTES element is a Python string decoded on the event loop: a request of tens of
    thousands of one-letter strings is refused before they are read, and the worker serves on."""
    server, _, _, _ = served
    n = 70_000
    blob = ((1).to_bytes(4, "little") + b"a") * n
    header = json.dumps({"inputs": [{"name": "region", "datatype": "BYTES", "shape": [n],
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    r = httpx.post(f"{server.base}/v2/models/wine/infer", content=header + blob,
                   headers={"Inference-Header-Content-Length": str(len(header))}, timeout=10)
    assert r.status_code == 413 and "more than 65,536 BYTES elements" in r.json()["error"]
    assert httpx.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200


def test_binary_bytes_cut_short_is_a_400(served: tuple[Server, Bundle, pd.DataFrame, Path]) -> None:
    server, _, df, _ = served
    rows = df.drop(columns="cultivar").dropna().iloc[:1]
    inputs = [i for i in columns_json(rows) if i["name"] != "region"]
    blob = (10).to_bytes(4, "little") + b"nor"  # says 10 bytes, holds 3
    header = json.dumps({"inputs": [*inputs, {"name": "region", "datatype": "BYTES", "shape": [1],
                                               "parameters": {"binary_data_size": len(blob)}}]}).encode()
    r = httpx.post(f"{server.base}/v2/models/wine/infer", content=header + blob,
                   headers={"Inference-Header-Content-Length": str(len(header))}, timeout=10)
    assert r.status_code == 400 and "BYTES element 0 says 10 bytes, 3 are left" in r.json()["error"]


def test_data_show_prints_the_schema(served: tuple[Server, Bundle, pd.DataFrame, Path]) -> None:
    _, _, df, tmp = served
    env = server_env(tmp / "home")
    shown = run_cli(["data", "show", f"csv:{tmp / 'wine.csv'}", "--label-column", "cultivar", "--impute", "mean",
                     "--json"], env)
    info = json.loads(shown.stdout.strip().splitlines()[-1])
    cols = {c["name"]: c for c in info["columns"]}
    assert cols["region"]["type"] == "categorical" and cols["region"]["categories"] == ["centre", "north", "south"]
    assert cols["region"]["missing"] == 6 and cols["magnesium"]["missing"] == 6
    assert cols["alcohol"]["type"] == "numeric" and info["task"] == "classification"
    parquet = tmp / "wine.parquet"
    df.to_parquet(parquet)
    via_parquet = json.loads(run_cli(["data", "show", f"parquet:{parquet}", "--label-column", "cultivar",
                                      "--impute", "mean", "--json"], env).stdout.strip().splitlines()[-1])
    assert via_parquet["fingerprint"] == info["fingerprint"]  # the same table, read from either file
    text = run_cli(["data", "show", f"csv:{tmp / 'wine.csv'}", "--label-column", "cultivar", "--impute", "mean"],
                   env).stdout
    assert "region" in text and "categorical" in text and "6 missing" in text


def test_a_table_is_explained_per_column(served: tuple[Server, Bundle, pd.DataFrame, Path]) -> None:
    """One attribution per column (a categorical column: the sum over its one-hot features), the
    same on V2 columns, v1 named rows and in-process; Integrated Gradients stay complete."""
    import shipyard

    server, bundle, df, tmp = served
    rows = df.drop(columns="cultivar").iloc[:6].fillna({"region": "north"})  # a NaN magnesium: imputed
    # the path from zero features to a row crosses several standard deviations: 256 steps for 1%
    r = httpx.post(f"{server.base}/v2/models/wine/explain", timeout=30,
                   json={"inputs": columns_json(rows), "parameters": {"steps": 256}})
    assert r.status_code == 200, r.text
    doc = r.json()
    names = [c.name for c in bundle.preprocess.columns or ()]  # type: ignore[union-attr]
    got = {o["name"]: np.array(o["data"]) for o in doc["outputs"]}
    assert list(got) == [f"attributions/{n}" for n in names] and all(v.shape == (6,) for v in got.values())
    p = doc["parameters"]
    delta = np.array(p["output"]) - np.array(p["baseline_output"])
    total = np.sum(list(got.values()), axis=0)
    assert np.all(np.abs(total - delta) <= 0.01 * np.abs(delta) + 1e-5)  # completeness, column by column summed
    records = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
               for row in rows.astype(object).to_dict("records")]
    v1 = httpx.post(f"{server.base}/v1/models/wine:explain", json={"instances": records, "parameters": {"steps": 256}},
                    timeout=30)
    assert v1.status_code == 200, v1.text
    first = v1.json()["explanations"][0]
    assert list(first["attributions"]) == names
    assert np.allclose([first["attributions"][n] for n in names], [got[f"attributions/{n}"][0] for n in names],
                       atol=1e-5)
    rows.to_csv(tmp / "explain.csv", index=False)
    local = shipyard.explain(bundle.path, tmp / "explain.csv", rows=6, steps=256)
    assert local.kind == "columns" and local.columns == names
    for n in names:
        assert np.allclose(local.explanation.attributions[f"attributions/{n}"], got[f"attributions/{n}"], atol=1e-5)
    bad = httpx.post(f"{server.base}/v2/models/wine/explain", json={"inputs": columns_json(rows.drop(columns="hue"))},
                     timeout=30)
    assert bad.status_code == 400 and "'hue'" in bad.json()["error"]
