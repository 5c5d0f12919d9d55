"""`BundleMeta`, the only reader and writer of bundle.json: round trips keep the JSON's shape,
older layouts are upgraded on read, and a wrong key or value is refused, naming it, when a
bundle is written and when it is read."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from harness.bundles import make_bundle, tiny_meta, tiny_onnx
from shipyard import bundle
from shipyard.bundle import Bundle, BundleError, BundleMeta
from shipyard.bundle.meta import SCHEMA_VERSION, UPGRADES, upgrade

#: bundle.json files as shipyard wrote them before the schema was typed (schema_version 1): a
#: retrained version (optimize + retrain lineage) and a Keras import with a raw input
V1 = Path(__file__).parent / "bundle_json_v1"

#: the tiny test bundle's bundle.json as tests/bundles.py wrote it with schema_version 1: its
#: signature leaves each input's kind and the graph's input to the reader
TINY_V1 = {
    "classes": [str(i) for i in range(10)],
    "lineage": {"data_fingerprint": None, "library_versions": {"onnx": "1.23.2"}, "parent_version": None,
                "run_id": None},
    "name": "tiny",
    "preprocess": {"flatten": True, "mean": None, "raw_dtype": "uint8", "raw_shape": [28, 28],
                   "scale": 0.00392156862745098, "standardize": "none", "std": None},
    "schema_version": 1,
    "signature": {"inputs": [{"dtype": "float32", "name": "input", "shape": [-1, 784]}],
                  "outputs": [{"dtype": "float32", "name": "probabilities", "shape": [-1, 10]}]},
    "variant": "fp32",
    "variants": [{"accuracy": 0.9, "latency_p50_ms": 0.1, "name": "fp32", "size_bytes": 1234,
                  "throughput_per_s": 1000.0}],
}


def as_v2(d: dict[str, Any]) -> dict[str, Any]:
    """What version 2 holds for a version-1 dict: the same, with the signature's implicit parts
    stated."""
    out = json.loads(json.dumps(d))
    out["schema_version"] = SCHEMA_VERSION  # versions 3 to 6 only add optional keys
    sig = out["signature"]
    for i in sig["inputs"]:
        i.setdefault("kind", "features")
    sig.setdefault("onnx_input", sig["inputs"][0]["name"])
    return out


def rewrite_meta(folder: Path, change: Any) -> None:
    """Edit a bundle's bundle.json and re-seal its manifest, as someone who means it would."""
    d = json.loads((folder / bundle.META).read_text())
    change(d)
    (folder / bundle.META).write_text(json.dumps(d))
    bundle.write_manifest(folder)


@pytest.mark.parametrize("name", ["retrained.json", "imported.json"])
def test_a_bundle_json_written_before_the_typed_schema_is_upgraded_and_keeps_its_shape(name: str) -> None:
    d = json.loads((V1 / name).read_text())
    assert d["schema_version"] == 1
    meta = BundleMeta.from_dict(d)
    assert meta.schema_version == SCHEMA_VERSION == 6
    assert meta.to_dict() == as_v2(d)  # every key and value kept; nothing added but the version
    assert BundleMeta.from_dict(meta.to_dict()) == meta
    assert meta.signature.onnx_input == meta.signature.graph_inputs[0].name
    assert meta.lineage.to_dict() == d["lineage"]
    assert meta.reference is None or meta.reference.to_dict() == d["reference"]


def test_typed_access_reads_what_the_json_says() -> None:
    meta = BundleMeta.from_dict(json.loads((V1 / "retrained.json").read_text()))
    assert meta.variant in {v.name for v in meta.variants} and meta.choice is not None
    assert meta.lineage.parent_version == 1 and meta.lineage.production_window is not None
    assert meta.lineage.production_window.trained_on > 0
    assert meta.reference is not None and [t.window for t in meta.reference.drift_thresholds] == [100, 250]
    assert meta.preprocess is not None and meta.preprocess.raw_shape == (28, 28)
    imported = BundleMeta.from_dict(json.loads((V1 / "imported.json").read_text()))
    assert [(i.name, i.kind) for i in imported.signature.inputs] == [("input_layer", "features"), ("image", "raw")]
    assert imported.lineage.softmax_added is False and imported.lineage.run_id is None


def test_the_implicit_signature_of_version_1_is_stated_by_the_upgrade(tmp_path: Path) -> None:
    assert set(UPGRADES) == set(range(1, SCHEMA_VERSION))
    meta = BundleMeta.from_dict(TINY_V1)
    assert meta.signature.inputs[0].kind == "features" and meta.signature.onnx_input == "input"
    assert meta.to_dict() == as_v2(TINY_V1)
    unversioned = {k: v for k, v in TINY_V1.items() if k != "schema_version"}  # read as version 1
    assert BundleMeta.from_dict(unversioned) == meta

    # a folder holding such a bundle.json loads, upgraded
    def to_v1(d: dict[str, Any]) -> None:
        d.clear()
        d.update(TINY_V1)

    folder = make_bundle(tmp_path / "b")
    rewrite_meta(folder, to_v1)
    b = Bundle.load(folder)
    assert b.meta == meta and b.meta.schema_version == SCHEMA_VERSION


def test_round_trip_of_what_the_test_bundles_write(tmp_path: Path) -> None:
    b = Bundle.load(make_bundle(tmp_path / "b", reference=True))
    on_disk = json.loads((b.path / bundle.META).read_text())
    assert on_disk["schema_version"] == SCHEMA_VERSION
    assert b.meta.to_dict() == on_disk
    assert BundleMeta.from_dict(on_disk) == b.meta
    assert b.meta.reference is not None and b.meta.reference.sample_size == 2000
    # a BundleMeta (not only a dict) can be written too
    again = bundle.write(tmp_path / "again", b.meta, {bundle.MODEL: b.model_path})
    assert again.meta == b.meta


def test_batch_invariance_is_read_from_version_3_and_unknown_in_older_bundles(tmp_path: Path) -> None:
    older = {**tiny_meta("tiny", 10, 100), "schema_version": 2}
    meta = BundleMeta.from_dict(older)
    assert meta.batch_invariant is None and meta.batch_max_diff is None  # not measured: not proven
    assert meta.to_dict() == {**older, "schema_version": SCHEMA_VERSION}  # nothing added but the version
    variants = [{"name": "fp32", "accuracy": 0.9, "size_bytes": 100, "latency_p50_ms": 0.1,
                 "throughput_per_s": 1000.0, "batch_max_diff": 0.0, "batch_invariant": True},
                {"name": "int8-dynamic", "accuracy": 0.9, "size_bytes": 30, "latency_p50_ms": 0.1,
                 "throughput_per_s": 3000.0, "batch_max_diff": 0.009, "batch_invariant": False}]
    choice = {"objective": "throughput", "reason": "fastest", "threads": 1, "allow_batch_variance": True}
    written = bundle.write(tmp_path / "b", tiny_meta("tiny", 10, 100, variants=variants, variant="int8-dynamic",
                                                     choice=choice), {bundle.MODEL: tiny_onnx()})
    assert written.meta.batch_invariant is False and written.meta.batch_max_diff == 0.009
    assert written.meta.choice is not None and written.meta.choice.allow_batch_variance is True
    assert Bundle.load(written.path).meta == written.meta
    on_disk = json.loads((written.path / bundle.META).read_text())
    assert on_disk["variants"] == variants and on_disk["schema_version"] == SCHEMA_VERSION
    with pytest.raises(BundleError, match=r"'variants\[0\]\.batch_invariant' has value 'yes'"):
        BundleMeta.from_dict({**older, "variants": [{**variants[0], "batch_invariant": "yes"}]})


@pytest.mark.parametrize(("extra", "message"), [
    ({"lineage": {"run_idd": "abc"}}, r"unknown key 'lineage\.run_idd' \(value 'abc'\)"),
    ({"retrainable": "yes"}, r"'retrainable' has value 'yes', expected true or false or null"),
    ({"classes": []}, r"'classes' has value \[\], expected a non-empty list"),
    ({"variants": [{"name": "fp32", "accuracy": 0.9, "size_bytes": "1 KB", "latency_p50_ms": 0.1,
                    "throughput_per_s": 1.0}]}, r"'variants\[0\]\.size_bytes' has value '1 KB', expected an integer"),
    ({"signature": {"inputs": [{"name": "input", "dtype": "float99", "shape": [-1, 784], "kind": "features"}],
                    "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, 10]}],
                    "onnx_input": "input"}},
     r"'signature\.inputs\[0\]\.dtype' has value 'float99', expected a numpy dtype name"),
    ({"signature": {"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 784], "kind": "features"}],
                    "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, 10]}],
                    "onnx_input": "pixels"}},
     r"'signature\.onnx_input' has value 'pixels', expected the name of a features input \(input\)"),
    ({"variant": "int8"}, r"'variant' has value 'int8', expected one of the variants measured \(fp32\)"),
    ({"colour": "blue"}, r"unknown key 'colour' \(value 'blue'\)"),
])
def test_a_wrong_key_is_refused_when_the_bundle_is_written(tmp_path: Path, extra: dict[str, Any],
                                                           message: str) -> None:
    with pytest.raises(BundleError, match=re.escape(str(tmp_path / "b" / "bundle.json")) + ": " + message):
        bundle.write(tmp_path / "b", {**tiny_meta("tiny", 10, 100), **extra}, {bundle.MODEL: tiny_onnx()})
    assert not (tmp_path / "b").exists()  # refused before anything was written


def test_a_missing_key_is_refused_naming_it(tmp_path: Path) -> None:
    meta = tiny_meta("tiny", 10, 100)
    del meta["signature"]["outputs"][0]["dtype"]
    with pytest.raises(BundleError, match=r"missing key 'signature\.outputs\[0\]\.dtype'"):
        bundle.write(tmp_path / "b", meta, {bundle.MODEL: tiny_onnx()})
    with pytest.raises(BundleError, match=r"missing key 'classes'"):
        BundleMeta.from_dict({k: v for k, v in TINY_V1.items() if k != "classes"})


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["signature"]["inputs"][0].update(shape=[-1, "784"]),
     r"'signature\.inputs\[0\]\.shape\[1\]' has value '784', expected an integer"),
    (lambda d: d["lineage"].update(parent_version="one"),
     r"'lineage\.parent_version' has value 'one', expected an integer or null"),
    (lambda d: d["preprocess"].update(standardize="sometimes"),
     r"'preprocess\.standardize' has value 'sometimes', expected one of 'none', 'global', 'feature'"),
    (lambda d: d.update(schema_version=7), r"'schema_version' has value 7: unsupported \(written by a newer"),
])
def test_a_tampered_bundle_json_is_refused_at_load_naming_key_and_value(tmp_path: Path, change: Any,
                                                                         message: str) -> None:
    folder = make_bundle(tmp_path / "b")
    rewrite_meta(folder, change)
    bundle.verify(folder)  # the manifest was re-sealed: only the value is wrong
    with pytest.raises(BundleError, match=re.escape(str(folder / "bundle.json")) + ": " + message):
        Bundle.load(folder)


def test_not_an_object_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="expected a JSON object, found"):
        upgrade([1, 2])
    folder = make_bundle(tmp_path / "b")
    (folder / bundle.META).write_text("{not json")
    bundle.write_manifest(folder)
    with pytest.raises(BundleError, match="bundle.json: not valid JSON"):
        Bundle.load(folder)
