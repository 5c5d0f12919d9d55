"""optimize → bundle for real: torch export, ONNX Runtime variants, the bundle on disk."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

import shipyard
from shipyard import bundle as B
from shipyard.bundle import Bundle, BundleError
from shipyard.errors import ShipyardError, UsageError
from shipyard.optimizing.build import optimize
from shipyard.optimizing.export import check_parity

from ..conftest import run_cli

if TYPE_CHECKING:
    from ..conftest import Optimized, Trained


def test_every_variant_loads_predicts_and_keeps_parity(optimized: Optimized) -> None:
    _, run, bundle, measured, reason = optimized
    by = {m.name: m for m in measured}
    assert set(by) == {"fp32", "int8-dynamic", "int8-static"}
    assert by["fp32"].max_abs_diff is not None and by["fp32"].max_abs_diff <= 1e-4
    assert abs(by["fp32"].accuracy - run.best_val_accuracy) < 1e-9  # same model, same split
    for name in ("int8-dynamic", "int8-static"):
        assert by[name].agreement is not None and by[name].agreement > 0.95
        assert by[name].size_bytes < 0.35 * by["fp32"].size_bytes
    for m in measured:
        assert m.latency_p50_ms > 0 and m.throughput_per_s > 0 and 0.8 < m.accuracy <= 1
    assert sum(m.chosen for m in measured) == 1
    assert bundle.meta.variant == next(m.name for m in measured if m.chosen)
    assert bundle.meta.choice is not None and bundle.meta.choice.reason == reason


def test_each_variant_is_measured_for_batch_invariance_and_only_an_invariant_one_ships(
        optimized: Optimized) -> None:
    """Held-out inputs alone vs inside random batches of 2-64. Measured on this machine: fp32 and
    int8-static 0.0, int8-dynamic up to ~0.009 (its activation scale comes from the whole batch)."""
    _, _, bundle, measured, reason = optimized
    by = {m.name: m for m in measured}
    for name in ("fp32", "int8-static"):
        assert by[name].batch_invariant is True and by[name].batch_max_diff is not None
        assert by[name].batch_max_diff <= 1e-6
    dynamic = by["int8-dynamic"]
    assert dynamic.batch_invariant is False and dynamic.batch_max_diff is not None and dynamic.batch_max_diff > 1e-4
    assert by[bundle.meta.variant or ""].batch_invariant is True and bundle.meta.batch_invariant is True
    assert {v.name: v.batch_invariant for v in bundle.meta.variants} == {m.name: m.batch_invariant for m in measured}
    assert bundle.meta.choice is not None and bundle.meta.choice.allow_batch_variance is False
    assert "that answer the same inside a batch" in reason and "int8-dynamic differs by up to" in reason


def test_allow_batch_variance_is_recorded_in_the_bundle(trained: Trained, tmp_path: Path) -> None:
    settings, run = trained
    b = optimize(run, settings=settings, output=tmp_path / "b", variants=("fp32", "int8-dynamic"),
                 bench_seconds=0.02, allow_batch_variance=True)[0]
    assert b.meta.choice is not None and b.meta.choice.allow_batch_variance is True
    assert "batch-variant ones allowed" in b.meta.choice.reason
    assert b.meta.batch_invariant is (b.meta.variant == "fp32")  # int8-dynamic when it was faster


def test_bundle_contents(optimized: Optimized) -> None:
    _, run, bundle, _, _ = optimized
    assert set(bundle.files()) == {"model.onnx", "bundle.json", "weights.pt", "reference.npz", "explain.onnx",
                                   "MANIFEST.sha256"}
    meta = bundle.meta.to_dict()
    assert meta["schema_version"] == B.SCHEMA_VERSION and meta["name"] == "mlp-mnist-sample"
    inputs = {i["name"]: i for i in meta["signature"]["inputs"]}
    assert inputs["input"]["shape"] == [-1, 784] and inputs["image"]["dtype"] == "uint8"
    assert inputs["image"]["shape"] == [-1, 28, 28]
    assert meta["signature"]["outputs"] == [{"name": "probabilities", "dtype": "float32", "shape": [-1, 10]}]
    assert meta["classes"] == [str(i) for i in range(10)]
    assert meta["preprocess"] == run.preprocess
    lineage = meta["lineage"]
    assert lineage["run_id"] == run.id and lineage["data_fingerprint"] == run.data_fingerprint
    assert lineage["recipe"] == run.recipe and "onnxruntime" in lineage["library_versions"]
    assert meta["retrainable"] is True
    state = torch.load(bundle.path / "weights.pt", weights_only=True)
    assert state["net.0.weight"].shape == (128, 784)

    ref = bundle.reference
    assert ref is not None and ref["sample"].shape == (2000, 784)
    assert ref["pca_components"].shape == (32, 784) and ref["projected"].shape == (2000, 32)
    assert ref["class_frequencies"].sum() == pytest.approx(1.0)
    assert ref["calibration_count"].sum() == len(ref["val_predictions"]) == 1000
    summary = meta["reference"]
    assert summary["sample_size"] == 2000 and 0.5 < summary["pca_explained_variance_ratio"] < 1.0
    # drift thresholds for the usual windows are calibrated at bundle time, not by the server
    assert [t["window"] for t in summary["drift_thresholds"]] == [50, 100, 250, 500]
    assert all(0 < t[k] <= t["alpha"] / 5 for t in summary["drift_thresholds"]
               for k in ("input", "prediction", "confidence", "mean", "softmax"))


def test_tarball_round_trip_is_deterministic(optimized: Optimized, tmp_path: Path) -> None:
    _, _, bundle, _, _ = optimized
    a = bundle.pack(tmp_path / "a.tar.gz")
    b = bundle.pack(tmp_path / "b.tar.gz")
    assert a.read_bytes() == b.read_bytes()
    loaded = Bundle.load(a, unpack_to=tmp_path / "unpacked")
    assert loaded.meta == bundle.meta and loaded.files() == bundle.files()


def _copy(bundle: Bundle, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(bundle.path, dest)
    return dest


def test_tampering_is_refused_naming_the_file(optimized: Optimized, tmp_path: Path) -> None:
    _, _, bundle, _, _ = optimized
    folder = _copy(bundle, tmp_path)
    data = bytearray((folder / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model.onnx: checksum mismatch"):
        Bundle.load(folder)

    folder = _copy(bundle, tmp_path / "2")
    (folder / "weights.pt").unlink()
    with pytest.raises(BundleError, match=r"weights.pt: missing"):
        Bundle.load(folder)

    folder = _copy(bundle, tmp_path / "3")
    (folder / "notes.txt").write_text("hi")
    with pytest.raises(BundleError, match=r"notes.txt: extra file"):
        Bundle.load(folder)

    folder = _copy(bundle, tmp_path / "4")
    (folder / "MANIFEST.sha256").unlink()
    with pytest.raises(BundleError, match=r"MANIFEST.sha256: missing"):
        Bundle.load(folder)


def _evil_archive(path: Path, name: str, *, link: bool = False) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        if link:
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    return path


@pytest.mark.parametrize(("member", "link", "message"), [
    ("../escape.txt", False, "outside the bundle folder"),
    ("/abs.txt", False, "outside the bundle folder"),
    ("sub/dir.txt", False, "outside the bundle folder"),
    ("model.onnx", True, "is a link"),
])
def test_unpacking_refuses_traversal_and_links(tmp_path: Path, member: str, link: bool, message: str) -> None:
    archive = _evil_archive(tmp_path / "evil.tar.gz", member, link=link)
    with pytest.raises(BundleError, match=message):
        Bundle.load(archive, unpack_to=tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
    assert not any((tmp_path / "out").iterdir())


def test_not_an_archive(tmp_path: Path) -> None:
    p = tmp_path / "junk.tar.gz"
    p.write_bytes(os.urandom(100))
    with pytest.raises(BundleError, match="not a readable .tar.gz"):
        Bundle.load(p, unpack_to=tmp_path / "out")


def test_output_never_overwrites_a_users_folder(trained: Trained, tmp_path: Path) -> None:
    settings, run = trained
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists"):
        optimize(run, settings=settings, output=precious, variants=("fp32",), bench_seconds=0.01)
    assert (precious / "thesis.txt").read_text() == "mine"
    with pytest.raises(UsageError, match="--optimize-for 'size'"):
        optimize(run, settings=settings, optimize_for="size")


def _evil_member(path: Path, name: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    return path


def test_unknown_archive_members_are_refused_before_extraction(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a bundle file"):
        Bundle.load(_evil_member(tmp_path / "x.tar.gz", "huge.bin"), unpack_to=tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_parity_failure_reports_the_measured_difference() -> None:
    a = np.zeros((3, 2), np.float32)
    with pytest.raises(ShipyardError, match=r"differs from PyTorch by up to 0.002"):
        check_parity(a, a + 0.002, "exported model")


def test_python_api(trained: Trained) -> None:
    settings, run = trained
    out = Path(run.run_dir) / "api.tar.gz"
    b = shipyard.optimize(run, settings=settings, output=out, variants=("fp32",), bench_seconds=0.02)
    assert isinstance(b, shipyard.Bundle) and b.meta.variant == "fp32"
    assert Bundle.load(out, unpack_to=out.parent / "api-unpacked").meta == b.meta


def test_cli_optimize_and_bundle_contracts(trained: Trained, cli_env: dict[str, str], tmp_path: Path) -> None:
    settings, run = trained
    env = {**cli_env, "SHIPYARD_HOME": str(settings.home)}
    out = tmp_path / "m.tar.gz"
    p = run_cli(["optimize", run.id, "--output", str(out), "--bench-seconds", "0.02", "--json",
                 "--optimize-for", "latency"], env)
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["bundle"] == str(out) and out.is_file() and res["chosen"] in ("fp32", "int8-dynamic", "int8-static")
    assert {"name", "accuracy", "size_bytes", "latency_p50_ms", "throughput_per_s", "batch_invariant",
            "batch_max_diff"} <= set(res["variants"][0])
    assert res["batch_invariant"] is True and res["allow_batch_variance"] is False
    assert Path(res["plot"]).read_bytes().startswith(b"\x89PNG")
    ok = run_cli(["bundle", "verify", str(out), "--json"], env)
    assert json.loads(ok.stdout)["ok"] is True
    shown = json.loads(run_cli(["bundle", "show", str(out), "--json"], env).stdout)
    assert shown["variant"] == res["chosen"] and shown["choice"]["objective"] == "latency"
    assert {v["name"]: v["batch_invariant"] for v in shown["variants"]} == \
        {v["name"]: v["batch_invariant"] for v in res["variants"]}
    table = run_cli(["bundle", "show", str(out)], env).stdout
    assert "in a batch" in table and "invariant" in table and "varies" in table

    folder = tmp_path / "folder"
    Bundle.load(out, unpack_to=folder)
    (folder / "bundle.json").write_text("{}")
    bad = run_cli(["bundle", "verify", str(folder), "--json"], env, check=False)
    assert bad.returncode == 1 and "bundle.json: checksum mismatch" in bad.stderr
    assert "error" in json.loads(bad.stdout.strip().splitlines()[-1])
    missing = run_cli(["optimize", "nosuchrun", "--json"], env, check=False)
    assert missing.returncode == 1 and "no run 'nosuchrun'" in missing.stderr


def test_an_optimized_bundle_registers_and_downloads(optimized: Optimized, tmp_path: Path) -> None:
    settings, run, bundle, _, _ = optimized
    reg = shipyard.Registry(settings=settings)
    mv = reg.register(bundle.path, "digits", alias="production", reason="first")
    assert mv.version >= 1 and reg.get("digits@production").version == mv.version
    got = reg.download("digits@production", tmp_path / "dl")
    assert got.meta == bundle.meta and got.files() == bundle.files()
