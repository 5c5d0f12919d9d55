"""`bundle.json`, typed: `BundleMeta` is the only reader and writer of a bundle's metadata.

Reading upgrades an older layout (one function per schema version, `UPGRADES`), then checks
every key against the records below (`record.py`): an unknown key, a missing required one or a
value of the wrong type is refused with a `BundleError` naming the file, the key
(`signature.inputs[0].dtype`) and the value. Bundles are checked when they are written and again
when they are read, so a wrong key fails when the bundle is built, not when it is served. The
JSON keeps its shape: the keys a bundle.json held are written back, sorted as on disk. No torch,
no ONNX Runtime: the server reads this."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from shipyard.bundle.record import Record, RecordError, dump, short, wrong
from shipyard.data.preprocess import PreprocessSpec
from shipyard.errors import ShipyardError

#: version 2: every signature input states its `kind`, and the signature its `onnx_input`;
#: version 3: variants may state their batch invariance (absent: not measured, so not proven);
#: version 4: metrics may state `holdout_accuracy`, the reference summary `held_out_rows`;
#: version 5: tables — signature inputs of kind `column` (one per named column, `object` dtype for
#: categorical ones: V2 BYTES) and the preprocessing spec's `columns`, `impute`, `impute_value`;
#: `task` (absent: classification): a regression's graph answers values, not probabilities, and
#: its metrics state MAEs (`val_mae`, `test_mae`, `train_best_val_mae`, `holdout_mae`);
#: version 6: `explain` (optional) names the gradient graph `explain.onnx` and its measured parity
SCHEMA_VERSION = 6
META = "bundle.json"


class BundleError(ShipyardError):
    """A bundle that is malformed or does not verify; the message names the file (and, for
    bundle.json, the key and its value)."""

    http_status = 400


# -- the records -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SignatureInput(Record):
    """One input a client may send: `features` go to the graph as they are; a `raw` input (e.g.
    `image` uint8 [-1, 28, 28]) is turned into features by the preprocessing spec first; a
    `column` is one named column of a table (float32, or `object`: strings), sent together with
    the table's other columns."""

    name: str
    dtype: str
    shape: tuple[int, ...]  # with the batch axis, -1 where any size goes
    kind: Literal["features", "raw", "column"]

    def check(self, key: str) -> None:
        _check_tensor(self.dtype, self.shape, key)


@dataclass(frozen=True)
class SignatureOutput(Record):
    name: str
    dtype: str
    shape: tuple[int, ...]

    def check(self, key: str) -> None:
        _check_tensor(self.dtype, self.shape, key)


@dataclass(frozen=True)
class Signature(Record):
    """What the model takes and answers; `onnx_input` is the graph's own (features) input."""

    inputs: tuple[SignatureInput, ...]
    outputs: tuple[SignatureOutput, ...]
    onnx_input: str

    @property
    def graph_inputs(self) -> tuple[SignatureInput, ...]:
        """The inputs the graph itself takes (raw ones are preprocessed into features first)."""
        return tuple(i for i in self.inputs if i.kind == "features")

    def check(self, key: str) -> None:
        for part in ("inputs", "outputs"):
            specs: tuple[SignatureInput | SignatureOutput, ...] = getattr(self, part)
            names = [s.name for s in specs]
            if not names or len(set(names)) != len(names):
                raise wrong(f"{key}.{part}", [s.to_dict() for s in specs],
                            f"one {part[:-1]} or more, with distinct names")
        if self.onnx_input not in {i.name for i in self.graph_inputs}:
            raise wrong(f"{key}.onnx_input", self.onnx_input,
                        f"the name of a features input ({', '.join(i.name for i in self.graph_inputs)})")


@dataclass(frozen=True)
class Variant(Record):
    """One measured variant (fp32, int8-dynamic, int8-static, imported)."""

    name: str
    accuracy: float | None
    size_bytes: int
    latency_p50_ms: float
    throughput_per_s: float
    max_abs_diff: float | None = None  # fp32: against PyTorch
    agreement: float | None = None  # int8: argmax agreement with fp32
    chosen: bool = False
    # max |probabilities alone − inside a batch of 2–64| on held-out inputs; None: not measured
    batch_max_diff: float | None = None
    batch_invariant: bool | None = None  # batch_max_diff ≤ 1e-6; None: not measured (not proven)
    mae: float | None = None  # a regression's validation MAE (its `accuracy` is None)


@dataclass(frozen=True)
class Choice(Record):
    objective: str | None
    reason: str
    threads: int
    allow_batch_variance: bool | None = None  # optimize --allow-batch-variance (None: before it existed)


@dataclass(frozen=True)
class Metrics(Record):
    val_accuracy: float | None = None  # the shipped variant on the run's validation split
    test_accuracy: float | None = None
    train_best_val_accuracy: float | None = None
    # retrain: the shipped variant on the recent holdout (the newest labelled production samples,
    # never trained on); apart from val_accuracy, which a shifted world can leave far above it
    holdout_accuracy: float | None = None
    # a regression's, in the target's units (its accuracies stay None)
    val_mae: float | None = None
    test_mae: float | None = None
    train_best_val_mae: float | None = None
    holdout_mae: float | None = None  # retrain: on the recent holdout, as holdout_accuracy


@dataclass(frozen=True)
class Parity(Record):
    exported: float  # max |ONNX − PyTorch| on validation samples
    tolerance: float


@dataclass(frozen=True)
class ProductionWindow(Record):
    """What a retrained version learnt from: the production log between `since` and `until`."""

    since: float | None
    until: float | None
    trained_on: int
    held_out: int
    holdout_since: float | None


@dataclass(frozen=True)
class Lineage(Record):
    """Where the model came from: a run (optimize), another file (import), a parent version
    (retrain). Every key is optional; `to_dict` writes the ones the bundle holds."""

    run_id: str | None = None
    parent_version: int | None = None
    parent_bundle: str | None = None  # retrain: the parent's bundle sha256
    data_source: str | None = None
    data_fingerprint: str | None = None
    original_data: str | None = None  # retrain: the champion's original data source
    production_window: ProductionWindow | None = None
    library_versions: dict[str, str] | None = None
    recipe: dict[str, Any] | None = None
    exporter: str | None = None
    imported_from: str | None = None
    source_sha256: str | None = None
    producer: str | None = None
    softmax_added: bool | None = None
    keras_parity_max_abs_diff: float | None = None


@dataclass(frozen=True)
class DriftThreshold(Record):
    window: int
    alpha: float
    draws: int
    input: float
    prediction: float
    confidence: float
    mean: float | None = None  # bundles since the mean test
    cusum: float | None = None  # the sequential rule's allowance (decades of p)
    softmax: float | None = None  # bundles since the softmax test


@dataclass(frozen=True)
class CalibrationBin(Record):
    confidence: tuple[float, ...]  # [low, high)
    accuracy: float | None
    count: int


@dataclass(frozen=True)
class ReferenceSummary(Record):
    """The readable part of the reference profile (`reference.summary`); its arrays are in
    `reference.npz`, whose own `schema_version` this is."""

    schema_version: int
    file: str
    sample_size: int
    pca_components: int
    pca_explained_variance_ratio: float
    class_frequencies: tuple[float, ...]
    val_accuracy: float | None  # None: a regression's reference
    mean_confidence: float
    calibration: tuple[CalibrationBin, ...]
    val_profile_size: int | None = None  # bundles since the held-out profile
    drift_thresholds: tuple[DriftThreshold, ...] = ()  # bundles since thresholds are precalibrated
    held_out: str | None = None  # what the held-out profile describes
    # retrain: its rows by source (recent_holdout, production_validation, original_validation)
    held_out_rows: dict[str, int] | None = None


@dataclass(frozen=True)
class ExplainGraph(Record):
    """The gradient graph: `input` features and `target` weights over the outputs → `gradient`
    and `output` (`shipyard.attribution.gradient`)."""

    file: str
    gradient_max_abs_diff: float  # |ONNX − torch autograd| on validation rows, at export (relative above 1)
    exporter: str = "make_fx+torch.export"
    # `gradient`: input, target → gradient, output; `integrated`: the whole of Integrated Gradients
    # factored through a first linear layer (input, baseline, target, alphas, weights → attributions, …)
    kind: str = "gradient"


@dataclass(frozen=True)
class BundleMeta(Record):
    """The whole of `bundle.json`."""

    name: str
    signature: Signature
    classes: tuple[str, ...]  # a regression: the names of its targets (one output value each)
    preprocess: PreprocessSpec | None  # None: clients send ready features
    task: Literal["classification", "regression"] = "classification"
    schema_version: int = SCHEMA_VERSION
    created_at: str | None = None
    variant: str | None = None  # the shipped one, among `variants`
    variants: tuple[Variant, ...] = ()
    choice: Choice | None = None
    metrics: Metrics = field(default_factory=Metrics)
    parity: Parity | None = None
    lineage: Lineage = field(default_factory=Lineage)
    retrainable: bool | None = None
    reference: ReferenceSummary | None = None
    explain: ExplainGraph | None = None

    @property
    def batch_invariant(self) -> bool | None:
        """Whether the shipped variant answers an input the same alone and inside a batch: True
        or False as measured when the bundle was made, None when it was not (older bundles)."""
        shipped = next((v for v in self.variants if v.name == self.variant), None)
        return shipped.batch_invariant if shipped is not None else None

    @property
    def batch_max_diff(self) -> float | None:
        """The shipped variant's measured max difference alone vs inside a batch (None: not measured)."""
        shipped = next((v for v in self.variants if v.name == self.variant), None)
        return shipped.batch_max_diff if shipped is not None else None

    @classmethod
    def from_dict(cls, d: Any, *, where: str = META) -> BundleMeta:
        """Upgrade to this schema version, then validate; a BundleError names `where`, the key
        and its value."""
        d = upgrade(d, where)
        try:
            return cls.read(d)
        except RecordError as e:
            raise BundleError(f"{where}: {e}") from None

    @classmethod
    def coerce(cls, meta: BundleMeta | dict[str, Any], *, where: str = META) -> BundleMeta:
        """A BundleMeta, or a dict in this version's layout (`schema_version` may be left out),
        validated key by key (a BundleMeta built in code too: through its dict)."""
        d = meta.to_dict() if isinstance(meta, BundleMeta) else {"schema_version": SCHEMA_VERSION, **meta}
        return cls.from_dict(d, where=where)

    @classmethod
    def load(cls, path: Path) -> BundleMeta:
        """Read and validate a bundle.json file."""
        try:
            d = json.loads(Path(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, where=str(path))

    def save(self, path: Path) -> None:
        """Write as bundle.json (sorted keys, two-space indent)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True, default=_json_default) + "\n")

    def to_dict(self) -> dict[str, Any]:
        return dict(sorted({**super().to_dict(), "schema_version": SCHEMA_VERSION}.items()))

    def check(self, key: str) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise wrong("schema_version", self.schema_version, str(SCHEMA_VERSION))
        if not self.classes:
            raise wrong("classes", [], "a non-empty list of class names")
        raw = [i.name for i in self.signature.inputs if i.kind != "features"]
        if raw and self.preprocess is None:
            raise wrong("preprocess", None, f"a preprocessing spec, which the raw input {raw[0]!r} needs")
        names = [v.name for v in self.variants]
        if self.variant is not None and names and self.variant not in names:
            raise wrong("variant", self.variant, f"one of the variants measured ({', '.join(names)})")


# -- older layouts ---------------------------------------------------------------------------
def _v1_to_v2(d: dict[str, Any]) -> dict[str, Any]:
    """Version 1 left each signature input's `kind` (features when absent) and the graph's input
    (`onnx_input`, else the first input) to whoever read it; version 2 states both."""
    sig = d.get("signature")
    if isinstance(sig, dict) and isinstance(sig.get("inputs"), list):
        inputs = [{"kind": "features", **i} if isinstance(i, dict) else i for i in sig["inputs"]]
        sig = {**sig, "inputs": inputs}
        first = inputs[0] if inputs and isinstance(inputs[0], dict) else {}
        if not sig.get("onnx_input") and "name" in first:
            sig["onnx_input"] = first["name"]
        d = {**d, "signature": sig}
    return {**d, "schema_version": 2}


def _v2_to_v3(d: dict[str, Any]) -> dict[str, Any]:
    """Version 3 adds optional keys only (a variant's `batch_max_diff`, `batch_invariant`; the
    choice's `allow_batch_variance`): absent, they read as not measured."""
    return {**d, "schema_version": 3}


def _v3_to_v4(d: dict[str, Any]) -> dict[str, Any]:
    """Version 4 adds optional keys only (`metrics.holdout_accuracy`, `reference.held_out_rows`):
    absent, a bundle made before them (or not by retrain) has none."""
    return {**d, "schema_version": 4}


def _v4_to_v5(d: dict[str, Any]) -> dict[str, Any]:
    """Version 5 adds tables (column inputs, the spec's columns): absent, a bundle takes arrays."""
    return {**d, "schema_version": 5}


def _v5_to_v6(d: dict[str, Any]) -> dict[str, Any]:
    """Version 6 adds the optional gradient graph (`explain`): absent, forward-pass methods explain."""
    return {**d, "schema_version": 6}


#: schema version → the function that turns that layout into the next one
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4,
                                                                     4: _v4_to_v5, 5: _v5_to_v6}


def upgrade(d: Any, where: str = META) -> dict[str, Any]:
    """`d` in this version's layout. A bundle.json without `schema_version` is read as version 1,
    the first layout (every bundle shipyard wrote says its version)."""
    if not isinstance(d, dict):
        raise BundleError(f"{where}: expected a JSON object, found {short(d)}")
    version = d.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION
        raise BundleError(f"{where}: 'schema_version' has value {short(version)}: unsupported "
                          f"({'written by a newer shipyard; ' if newer else ''}this shipyard reads 1 to "
                          f"{SCHEMA_VERSION})")
    while version < SCHEMA_VERSION:
        d = UPGRADES[version](d)
        version += 1
    return d


def _check_tensor(dtype: str, shape: tuple[int, ...], key: str) -> None:
    try:
        np.dtype(dtype)
    except TypeError:
        raise wrong(f"{key}.dtype", dtype, "a numpy dtype name such as 'float32'") from None
    if not shape or any(d != -1 and d < 1 for d in shape):
        raise wrong(f"{key}.shape", shape, "sizes ≥ 1, or -1 for any size (the batch axis)")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def signature_inputs(onnx_input: str, feature_shape: tuple[int, ...] | list[int],
                     spec: PreprocessSpec) -> list[dict[str, Any]]:
    """The graph's float32 features input, plus the raw form (e.g. `image` uint8 [-1, 28, 28])
    when the preprocessing spec turns something else into those features (standardizing counts:
    a client sending its data as it is must not land on the features input). A table adds one
    input per column, and `raw` [-1, columns] when every column is numeric."""
    inputs: list[dict[str, Any]] = [
        {"name": onnx_input, "dtype": "float32", "shape": [-1, *feature_shape], "kind": "features"}]
    if spec.columns is not None:
        inputs += [{"name": c.name, "dtype": "float32" if c.kind == "numeric" else "object", "shape": [-1],
                    "kind": "column"} for c in spec.columns]
        if all(c.kind == "numeric" for c in spec.columns):
            inputs.append({"name": "raw", "dtype": "float32", "shape": [-1, len(spec.columns)], "kind": "raw"})
        return inputs
    if list(spec.raw_shape) != list(feature_shape) or spec.raw_dtype != "float32" or spec.standardize != "none" \
            or spec.scale != 1.0:
        inputs.append({"name": "image" if len(spec.raw_shape) == 2 else "raw", "dtype": spec.raw_dtype,
                       "shape": [-1, *spec.raw_shape], "kind": "raw"})
    return inputs


__all__ = ["META", "SCHEMA_VERSION", "UPGRADES", "BundleError", "BundleMeta", "CalibrationBin", "Choice",
           "DriftThreshold", "Lineage", "Metrics", "Parity", "ProductionWindow", "ReferenceSummary",
           "Signature", "SignatureInput", "SignatureOutput", "Variant", "dump", "signature_inputs", "upgrade"]
