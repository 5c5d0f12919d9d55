"""`optimize(run) -> Bundle`: export the run's best checkpoint, build and measure the variants,
choose one by policy, and write the bundle with its reference profile."""

from __future__ import annotations

import io
import re
import shutil
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from shipyard import bundle as bundle_mod
from shipyard.bundle import Bundle, reference
from shipyard.data import PreprocessSpec
from shipyard.errors import ShipyardError, UsageError
from shipyard.optimizing import variants as V
from shipyard.optimizing.choose import OBJECTIVES, choose
from shipyard.optimizing.evaluate import Measured, measure, predict, session
from shipyard.optimizing.export import INPUT, OUTPUT, check_parity, export_onnx, torch_probabilities
from shipyard.registry.refs import check_name
from shipyard.settings import Settings
from shipyard.training.recipe import Recipe
from shipyard.training.tracking import Run, RunStore
from shipyard.training.zoo import build_model

PARITY_SAMPLES = 1000
#: a production reference needs this many held-out rows, else the validation split is the reference
REFERENCE_MIN_ROWS = 200
#: the gradient graph's largest |ONNX − torch autograd| difference it may ship with
GRADIENT_TOLERANCE = 1e-4
#: and is topped up towards this many (two halves of 500: windows of 250 calibrate on either half)
REFERENCE_TARGET_ROWS = 1000
#: the chance of refusing a top-up from the same world (the three drift tests, α/3 each)
SAME_WORLD_ALPHA = 0.01


@dataclass
class HeldOut:
    """Labelled rows a retrained version's reference profile may describe, none of them trained
    on: `x`/`y` the production rows (raw inputs; the first `holdout` are the recent holdout, the
    rest production rows of the retrain's validation split); `top_up_x`/`top_up_y` rows of the
    original data the run also held out, in order of preference, added towards
    `REFERENCE_TARGET_ROWS` only when the production rows look like them (`_same_world`): a
    reference half in the old world would alarm on every window of the shift the retrain fixed."""

    x: np.ndarray
    y: np.ndarray
    holdout: int
    top_up_x: np.ndarray | None = None
    top_up_y: np.ndarray | None = None


def default_name(run: Run) -> str:
    kind = run.data_source.split(":", 1)[0]
    return re.sub(r"[^a-z0-9-]+", "-", f"{run.recipe.get('model', 'model')}-{kind}".lower()).strip("-")


def optimize(run: Run | str, *, name: str | None = None, output: Path | None = None,
             optimize_for: str = "throughput", variants: tuple[str, ...] = V.VARIANTS,
             threads: int = 1, bench_seconds: float = 0.5, settings: Settings | None = None,
             console: Console | None = None, lineage: dict[str, Any] | None = None,
             reference_data: tuple[np.ndarray, np.ndarray] | HeldOut | None = None,
             allow_batch_variance: bool = False) -> tuple[Bundle, list[Measured], str]:
    """Returns the written bundle, the measured variants, and the reason for the choice.
    `lineage` adds to the bundle's lineage (retraining: the parent version, the production
    window trained on). `reference_data` (raw inputs, labels; or a `HeldOut`): the held-out data
    the reference profile describes, instead of the validation split — a model retrained for a
    shifted world is monitored against that world, not the one it left; its accuracy there is
    `metrics.holdout_accuracy`, while `val_accuracy` stays the validation split's.
    `allow_batch_variance`: a variant whose answers depend on its batch-mates (int8-dynamic) may
    be chosen; the choice records it."""
    settings = settings or Settings.from_env()
    console = console or Console(stderr=True, highlight=False, soft_wrap=True)
    store = RunStore(settings)
    run = store.get(run) if isinstance(run, str) else run
    if run.status not in ("finished", "interrupted") or "checkpoint" not in run.artifacts:
        raise UsageError(f"run {run.id} is {run.status} and has no checkpoint to optimize")
    if unknown := [v for v in variants if v not in V.VARIANTS]:
        raise UsageError(f"unknown variant(s) {unknown}: choose from {', '.join(V.VARIANTS)}")
    if "fp32" not in variants:
        raise UsageError("the fp32 variant is the accuracy reference; it cannot be left out")
    if optimize_for not in OBJECTIVES:
        raise UsageError(f"--optimize-for {optimize_for!r}: choose {' or '.join(OBJECTIVES)}")
    name = check_name(name or default_name(run))
    # the run's folder when it trained on this host, else one here (it trained elsewhere)
    here = Path(run.run_dir) if run.run_dir and Path(run.run_dir).is_dir() else settings.runs_dir / run.id
    dest = Path(output) if output else here / "bundle"
    tarball = dest.name.endswith((".tar.gz", ".tgz"))
    if output is not None and dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise UsageError(f"{dest}: already exists; choose a new path for the bundle")

    recipe = Recipe.from_dict(run.recipe)
    ds = recipe.load_data()
    if run.data_fingerprint and ds.fingerprint != run.data_fingerprint:
        raise ShipyardError(f"the data behind {ds.source} changed since run {run.id} trained "
                            f"(fingerprint {run.data_fingerprint[:12]} → {ds.fingerprint[:12]}); "
                            "validation numbers would not be comparable")
    splits = ds.split(recipe.val_fraction, recipe.split_seed)
    spec = PreprocessSpec.from_dict(run.preprocess) if run.preprocess else ds.preprocess.fitted(splits.x_train)
    x_train, x_val = spec.apply(splits.x_train), spec.apply(splits.x_val)
    y_val = splits.y_val

    weights = store.artifacts.get_bytes(run.artifacts["checkpoint"]["sha256"])
    regression = ds.regression
    model = build_model(recipe.model, input_shape=spec.raw_shape, num_features=spec.num_features,
                        num_classes=len(ds.classes), args=recipe.model_args, regression=regression)
    model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
    torch_val = torch_probabilities(model, x_val, softmax=not regression)
    # a regression's values are compared in units of the targets' spread (parity, batch invariance)
    scale = float(np.asarray(splits.y_train, np.float64).std()) or 1.0 if regression else None

    work = Path(tempfile.mkdtemp(prefix="shipyard-optimize-"))
    try:
        console.print(f"exporting run {run.id} to ONNX …")
        raw_path = work / "exported.onnx"
        exporter = export_onnx(model, spec.num_features, raw_path, softmax=not regression)
        files: dict[str, Path] = {"fp32": V.fp32_optimized(raw_path, work / "fp32.onnx")}
        unit = scale or 1.0
        parity = {
            "exported": check_parity(torch_val[:PARITY_SAMPLES] / unit,
                                     predict(session(raw_path), x_val[:PARITY_SAMPLES]) / unit, "exported model"),
        }
        explain = _gradient_graph(model, spec.num_features, len(ds.classes), work, not regression, x_val, console)
        if "int8-dynamic" in variants:
            files["int8-dynamic"] = V.int8_dynamic(raw_path, work / "int8-dynamic.onnx", work)
        if "int8-static" in variants:
            rng = np.random.default_rng(recipe.seed)
            calib = x_train[rng.choice(len(x_train), min(V.CALIBRATION_SAMPLES, len(x_train)), replace=False)]
            files["int8-static"] = V.int8_static(raw_path, work / "int8-static.onnx", work, calib)

        measured: list[Measured] = []
        probs: dict[str, np.ndarray] = {}
        for vname, path in files.items():
            console.print(f"measuring {vname} …")
            m, p = measure(vname, path, x_val, y_val, threads=threads, seconds=bench_seconds, scale=scale)
            if vname == "fp32":
                m.max_abs_diff = check_parity(torch_val[:PARITY_SAMPLES] / unit, p[:PARITY_SAMPLES] / unit,
                                              "fp32 variant")
            measured.append(m)
            probs[vname] = p
        for m in measured:
            if m.name != "fp32" and not regression:
                m.agreement = float((probs[m.name].argmax(1) == probs["fp32"].argmax(1)).mean())
        chosen, reason = choose(measured, optimize_for, allow_batch_variance=allow_batch_variance)
        chosen.chosen = True
        console.print(f"chose [bold]{chosen.name}[/]: {reason}")

        # a regression's reference: its inputs and the distribution of its answers (no accuracy to estimate)
        ref_x, ref_probs, ref_y, ref_from = x_val, probs[chosen.name], y_val, "validation split"
        rows: dict[str, int] | None = None
        holdout_score = None  # accuracy, or a regression's MAE, on the recent holdout
        if reference_data is not None:
            held = reference_data if isinstance(reference_data, HeldOut) else \
                HeldOut(reference_data[0], np.asarray(reference_data[1]), len(reference_data[1]))
            sess = session(files[chosen.name])
            hx = spec.apply(held.x)
            hp = predict(sess, hx) if len(hx) else np.zeros((0, len(ds.classes)), np.float32)
            if held.holdout:
                hy = np.asarray(held.y[:held.holdout])
                holdout_score = float(np.abs(hp[:held.holdout].reshape(len(hy), -1) - hy.reshape(len(hy), -1)).mean()
                                      if regression else (hp[:held.holdout].argmax(1) == hy).mean())
            if len(held.y) >= REFERENCE_MIN_ROWS:
                ref_x, ref_probs, ref_y = hx, hp, np.asarray(held.y)
                rows = {"recent_holdout": held.holdout, "production_validation": len(held.y) - held.holdout}
                ref_from = f"{len(ref_y)} labelled production samples"
                need = REFERENCE_TARGET_ROWS - len(ref_y)
                if need > 0 and held.top_up_x is not None and held.top_up_y is not None and len(held.top_up_y):
                    tx = spec.apply(held.top_up_x[:need])
                    tp = predict(sess, tx)
                    first = slice(0, 1) if regression else slice(None)  # a regression's first target's values
                    if _same_world(x_train, recipe.seed, hx, hp[:, first], held.y, tx, tp[:, first]):
                        ref_x, ref_probs = np.concatenate([hx, tx]), np.concatenate([hp, tp])
                        ref_y = np.concatenate([ref_y, held.top_up_y[:need]])
                        rows["original_validation"] = len(tx)
                        ref_from = f"{len(ref_y)} held-out rows: {ref_from} + {len(tx)} of the original data"
                    else:
                        console.print(f"the reference stays {len(hx)} production rows: they differ from the "
                                      "original data, which would make every window of this world drift")
        ref = reference.build(x_train, ref_probs, ref_y, seed=recipe.seed, x_val=ref_x, regression=regression)
        if explain:  # what each class looks at, on held-out rows: the dashboard's global explanation
            ref.update(_class_maps(work / bundle_mod.EXPLAIN, explain["kind"], files["fp32"], spec, ref_x,
                                   len(ds.classes), regression))
        ref_path = _save_reference(ref, work)
        meta = _meta(name, run, ds.classes, spec, chosen, measured, reason, optimize_for, threads,
                     exporter, parity, reference.summary(ref), task=ds.task)
        meta["lineage"].update(lineage or {})
        meta["choice"]["allow_batch_variance"] = allow_batch_variance
        meta["reference"]["held_out"] = ref_from
        meta["explain"] = explain
        if rows is not None:  # "validation accuracy" stays the validation split's, whatever the reference
            meta["reference"]["val_accuracy"] = None if regression else chosen.accuracy
            meta["reference"]["held_out_rows"] = rows
        if holdout_score is not None:
            meta["metrics"]["holdout_mae" if regression else "holdout_accuracy"] = holdout_score
        result = _write(meta, files[chosen.name], weights, ref_path, work, dest, tarball, output,
                        work / bundle_mod.EXPLAIN if explain else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result, measured, reason


def _save_reference(ref: dict[str, np.ndarray], work: Path) -> Path:
    """`reference.npz`, with the drift thresholds for the usual window sizes (so a server never
    calibrates them itself)."""
    from shipyard.monitor import drift
    from shipyard.monitor.evaluator import MonitorConfig

    ref["drift_thresholds"] = drift.precalibrate(ref, alpha=MonitorConfig.alpha, draws=MonitorConfig.draws)
    path = work / "reference.npz"
    np.savez_compressed(path, allow_pickle=False, **ref)  # numeric arrays only: never pickle
    return path


def _gradient_graph(model: torch.nn.Module, num_features: int, num_outputs: int, work: Path, softmax: bool,
                    x_val: np.ndarray, console: Console) -> dict[str, Any] | None:
    """The graph explanations run Integrated Gradients on (`explain.onnx`): the factored one for
    a model that begins with a linear layer, else the gradient graph; with its parity against
    torch autograd. None, said once, when neither can be traced (forward-pass methods then)."""
    from shipyard.attribution.gradient import export_gradient
    from shipyard.attribution.integrated import export_integrated, split_linear

    kinds = (["integrated"] if split_linear(model) is not None else []) + ["gradient"]
    problems = []
    for kind in kinds:
        export = export_integrated if kind == "integrated" else export_gradient
        try:
            diff = export(model, num_features, num_outputs, work / bundle_mod.EXPLAIN, softmax=softmax,
                          check=x_val[:PARITY_SAMPLES])
        except Exception as e:  # noqa: BLE001 - any tracing or export failure: the next kind, or none
            problems.append(f"{kind}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
            continue
        if diff <= GRADIENT_TOLERANCE:
            return {"file": bundle_mod.EXPLAIN, "gradient_max_abs_diff": diff, "kind": kind,
                    "exporter": "torch.onnx, backward written out" if kind == "integrated" else "make_fx+torch.export"}
        problems.append(f"{kind}: differs from torch autograd by {diff:.1e} (> {GRADIENT_TOLERANCE:g})")
    (work / bundle_mod.EXPLAIN).unlink(missing_ok=True)
    console.print(f"no gradient graph ({'; '.join(problems)}): explanations of this bundle use occlusion or "
                  "kernel_shap")
    return None


def _class_maps(graph: Path, kind: str, model: Path, spec: PreprocessSpec, x: np.ndarray, classes: int,
                regression: bool) -> dict[str, np.ndarray]:
    from shipyard.attribution import maps, methods

    ig = methods.graph_ig(session(graph), kind)
    image = not spec.is_table and len(spec.raw_shape) >= 2
    black = spec.apply(np.zeros((1, *spec.raw_shape), np.dtype(spec.raw_dtype)))[0] if image else \
        np.zeros(spec.num_features, np.float32)
    return maps.at_build(ig, predict(session(model), x), x, black, classes, regression=regression)


def _write(meta: dict[str, Any], model: Path, weights: bytes, ref_path: Path | None, work: Path, dest: Path,
           tarball: bool, output: Path | None, explain: Path | None = None) -> Bundle:
    staging = work / "staging"
    files: dict[str, Path | bytes] = {bundle_mod.MODEL: model, bundle_mod.WEIGHTS: weights}
    if ref_path is not None:
        files[bundle_mod.REFERENCE] = ref_path
    if explain is not None:
        files[bundle_mod.EXPLAIN] = explain
    bundle_mod.write(staging, meta, files)
    if tarball:
        bundle_mod.pack(staging, dest)
        return Bundle.load(dest)  # its unpacked copy goes with it (`Bundle.close`, or when collected)
    # the run's own bundle folder is ours to replace; a user's path must be new
    return bundle_mod.place(staging, dest, replace=output is None)


def _same_world(x_train: np.ndarray, seed: int, x: np.ndarray, probs: np.ndarray, y: np.ndarray,
                x_more: np.ndarray, probs_more: np.ndarray) -> bool:
    """Whether rows `x_more` look like the production rows `x` to the three drift tests (inputs on
    the reference's PCA basis, class mix, confidences), each two-sample at α/3: then a reference of
    both describes this world. Windows of about that size are what would alarm otherwise."""
    from scipy.stats import chi2_contingency

    from shipyard.monitor import drift

    probe = reference.build(x_train, probs, y, seed=seed, x_val=x)
    more = reference.profile(probe["pca_mean"], probe["pca_components"], x_more)
    t = SAME_WORLD_ALPHA / 3
    if drift.input_drift(probe["val_profile"].astype(np.float64), more, threshold=t).alarm or \
            drift.confidence_drift(probs.max(1), probs_more.max(1), threshold=t).alarm:
        return False
    # the class mix: both samples are estimates (drift.prediction_drift takes the reference's as
    # exact, which at these sizes alarms on most samples of one world)
    k = probs.shape[1]
    mix = np.stack([np.bincount(probs.argmax(1), minlength=k), np.bincount(probs_more.argmax(1), minlength=k)])
    mix = mix[:, mix.sum(0) > 0]
    return mix.shape[1] < 2 or float(chi2_contingency(mix).pvalue) > t


def _meta(name: str, run: Run, classes: list[str], spec: PreprocessSpec, chosen: Measured,
          measured: list[Measured], reason: str, objective: str, threads: int, exporter: str,
          parity: dict[str, float], ref_summary: dict[str, Any] | None, task: str = "classification"
          ) -> dict[str, Any]:
    inputs = bundle_mod.signature_inputs(INPUT, [spec.num_features], spec)
    versions = dict(run.library_versions or {})
    for dist in ("onnx", "onnxruntime"):
        with suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "name": name,
        "created_at": datetime.now(UTC).isoformat(),
        "signature": {
            "inputs": inputs,
            "outputs": [{"name": OUTPUT if task == "classification" else "prediction", "dtype": "float32",
                         "shape": [-1, len(classes)]}],
            "onnx_input": INPUT,
        },
        "classes": classes,
        "preprocess": spec.to_dict(),
        "variant": chosen.name,
        "variants": [m.to_dict() for m in measured],
        "choice": {"objective": objective, "reason": reason, "threads": threads},
        "metrics": {"val_accuracy": chosen.accuracy, "test_accuracy": run.test_accuracy,
                    "train_best_val_accuracy": run.best_val_accuracy} if task == "classification" else
                   {"val_mae": chosen.mae, "test_mae": run.test_mae, "train_best_val_mae": run.best_val_mae},
        "task": task,
        "parity": {**parity, "tolerance": 1e-4},
        "lineage": {
            "run_id": run.id, "parent_version": None, "data_source": run.data_source,
            "data_fingerprint": run.data_fingerprint, "library_versions": versions,
            "recipe": run.recipe, "exporter": exporter,
        },
        "retrainable": True,
        "reference": ref_summary,
    }
