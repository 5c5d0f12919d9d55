"""The model registry on both databases we support (SQLite, a real PostgreSQL): versions, aliases,
history, integrity of stored bundles, and what concurrent and killed processes leave behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from harness.bundles import FEATURES, make_bundle, make_mismatched_bundle, make_unloadable_bundle
from shipyard.bundle import Bundle, BundleError, pack, verify
from shipyard.errors import NotFound, UsageError
from shipyard.registry import Registry, RegistryConflict
from shipyard.registry.registry import REGISTER_STEPS
from shipyard.registry.trial import trial_load
from shipyard.settings import Settings
from shipyard.store.engine import dispose_engines, engine_for
from shipyard.store.schema import metadata, model_events, model_versions

from ..conftest import ROOT, SHIPYARD
from ..waiting import wait_for

pytestmark = pytest.mark.usefixtures("close_pools")


@pytest.fixture
def registry(reg_settings: Settings) -> Registry:
    return Registry(settings=reg_settings)


@pytest.fixture
def bundles(tmp_path: Path) -> list[Path]:
    """Three valid bundles named `tiny` with different weights (so different sha256)."""
    return [make_bundle(tmp_path / f"bundle{i}", seed=i) for i in range(3)]


def kinds(reg: Registry, name: str) -> list[str]:
    return [e.kind for e in reg.history(name)]


def test_schema_matches_the_migrations(reg_settings: Settings) -> None:
    engine = engine_for(reg_settings.db_url)
    tables = set(sa.inspect(engine).get_table_names())
    assert {"models", "model_versions", "aliases", "model_events"} <= tables
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_versions_aliases_and_history(registry: Registry, bundles: list[Path]) -> None:
    v1 = registry.register(bundles[0], description="first try", tags={"team": "vision"})
    assert (v1.name, v1.version, v1.aliases) == ("tiny", 1, [])
    assert v1.description == "first try" and v1.tags == {"team": "vision"}
    assert v1.variant == "fp32" and v1.metrics["accuracy"] == 0.9
    assert v1.size_bytes == registry.artifacts.path(v1.bundle_sha256).stat().st_size
    assert list(v1.meta.classes) == [str(i) for i in range(10)]

    v2 = registry.register(bundles[1], alias="production", reason="better on the holdout")
    assert (v2.version, v2.aliases) == (2, ["production"])
    assert v2.bundle_sha256 != v1.bundle_sha256

    back = registry.set_alias("tiny", "production", 1, reason="v2 regressed in canary")
    assert (back.from_version, back.to_version, back.changed) == (2, 1, True)
    same = registry.set_alias("tiny", "production", "1", reason="again")
    assert same.changed is False  # already there: nothing to record
    Registry(settings=registry.settings, actor="ci@builder").set_alias("tiny", "candidate", 2, reason="try v2")
    gone = registry.unalias("tiny", "candidate", reason="canary over")
    assert (gone.from_version, gone.to_version) == (2, None)

    events = registry.history("tiny")
    assert [e.kind for e in events] == ["register", "register", "alias", "alias", "alias", "unalias"]
    assert [(e.alias, e.from_version, e.to_version) for e in events[2:]] == [
        ("production", None, 2), ("production", 2, 1), ("candidate", None, 2), ("candidate", 2, None)]
    assert [e.reason for e in events] == [None, "better on the holdout", "better on the holdout",
                                          "v2 regressed in canary", "try v2", "canary over"]
    assert [e.actor for e in events] == [registry.actor] * 4 + ["ci@builder", registry.actor]
    assert re.fullmatch(r"[^@\s]+@[^@\s]+", registry.actor)
    assert all(e.at.tzinfo is not None for e in events)
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert events[0].details["bundle_sha256"] == v1.bundle_sha256
    assert [e.to_dict()["kind"] for e in registry.history("tiny", limit=2)] == ["alias", "unalias"]

    dispose_engines()  # a fresh process sees the same truth
    again = Registry(settings=registry.settings)
    assert again.get("tiny@production").version == 1
    assert again.get("tiny@1").aliases == ["production"]


def test_refs_resolve_by_version_alias_and_latest(registry: Registry, bundles: list[Path]) -> None:
    registry.register(bundles[0], alias="production")
    registry.register(bundles[1], alias="candidate")
    other = registry.register(bundles[2], name="digits")
    assert other.ref == "digits@1"  # versions count per name
    assert registry.get("tiny").version == 2
    assert registry.get("tiny@latest").version == 2
    assert registry.get("tiny@1").aliases == ["production"]
    assert registry.get("tiny@production").version == 1
    assert registry.get("tiny@candidate").version == 2
    found = {m.name: m for m in registry.list()}
    assert sorted(found) == ["digits", "tiny"]
    assert [v.version for v in found["tiny"].versions] == [1, 2]
    assert found["tiny"].aliases == {"candidate": 2, "production": 1}
    d = found["tiny"].to_dict()
    assert d["latest_version"] == 2 and [v["aliases"] for v in d["versions"]] == [["production"], ["candidate"]]
    # the narrow reads agree with `list`, without loading every version
    assert registry.model("tiny").to_dict() == d
    with pytest.raises(NotFound, match="no model 'nosuch'"):
        registry.model("nosuch")
    assert registry.model_names() == ["digits", "tiny"]
    assert registry.model_names(alias="production") == ["tiny"] and registry.model_names(alias="nosuch") == []
    assert registry.exists("digits") and not registry.exists("nosuch")


def test_unknown_names_versions_and_aliases_are_not_found(registry: Registry, bundles: list[Path],
                                                          tmp_path: Path) -> None:
    registry.register(bundles[0], alias="production")
    with pytest.raises(NotFound, match="no model 'nosuch'"):
        registry.get("nosuch")
    with pytest.raises(NotFound, match=r"'tiny' has no version 9 \(versions: 1\)"):
        registry.get("tiny@9")
    with pytest.raises(NotFound, match=r"'tiny' has no alias 'staging' \(aliases: production→1\)"):
        registry.get("tiny@staging")
    with pytest.raises(NotFound, match="no version 9"):
        registry.set_alias("tiny", "production", 9)
    with pytest.raises(NotFound, match="no model 'nosuch'"):
        registry.set_alias("nosuch", "production", 1)
    with pytest.raises(NotFound, match="no alias 'staging'"):
        registry.unalias("tiny", "staging")
    with pytest.raises(NotFound, match="no model 'nosuch'"):
        registry.history("nosuch")
    with pytest.raises(NotFound, match="no version 9"):
        registry.delete("tiny@9")
    with pytest.raises(NotFound, match="no model 'nosuch'"):
        registry.download("nosuch@1", tmp_path / "dl")
    assert not (tmp_path / "dl").exists()
    assert registry.get("tiny@production").version == 1  # nothing moved


@pytest.mark.parametrize("ref", ["", " ", "@1", "tiny@", "tiny@1@2", "tiny@0", "ti ny", "tiny@Prod",
                                 "tiny/x@1", "../tiny"])
def test_bad_refs_are_usage_errors(registry: Registry, ref: str) -> None:
    with pytest.raises(UsageError):
        registry.get(ref)


@pytest.mark.parametrize(("alias", "why"), [("3", "is a number"), ("latest", "reserved"), ("Prod", "not an alias"),
                                            ("-x", "not an alias"), ("a b", "not an alias"),
                                            ("x" * 65, "at most 64")])
def test_bad_aliases_are_refused_before_anything_is_stored(registry: Registry, bundles: list[Path],
                                                           alias: str, why: str) -> None:
    registry.register(bundles[0])
    with pytest.raises(UsageError, match=why):
        registry.set_alias("tiny", alias, 1)
    with pytest.raises(UsageError, match=why):
        registry.register(bundles[1], alias=alias)
    assert [v.version for v in registry.list()[0].versions] == [1]
    assert kinds(registry, "tiny") == ["register"]


def test_delete_is_refused_while_aliased_and_numbers_are_never_reused(registry: Registry,
                                                                       bundles: list[Path]) -> None:
    v1 = registry.register(bundles[0], alias="production")
    v2 = registry.register(bundles[1])
    shared = registry.register(bundles[0], name="copy")  # the same bytes under another name
    assert shared.bundle_sha256 == v1.bundle_sha256
    with pytest.raises(RegistryConflict, match="refusing to delete tiny@1: alias production points at it"):
        registry.delete("tiny@1")
    with pytest.raises(RegistryConflict, match="production"):
        registry.delete("tiny@production")
    with pytest.raises(UsageError, match="needs one version"):
        registry.delete("tiny")
    assert registry.get("tiny@1").version == 1
    cached = registry.bundle_path("tiny@2")

    assert registry.delete("tiny@2", reason="superseded").version == 2
    with pytest.raises(NotFound, match="no version 2"):
        registry.get("tiny@2")
    assert not registry.artifacts.path(v2.bundle_sha256).exists()  # no longer referenced: removed
    assert not cached.exists()
    assert list((registry.settings.home / "tmp").iterdir()) == []  # nor left in the trash
    assert registry.register(bundles[2]).version == 3  # 2 is never handed out again

    registry.unalias("tiny", "production", reason="retiring v1")
    registry.delete("tiny@1")
    assert registry.artifacts.path(v1.bundle_sha256).is_file()  # still used by copy@1
    verify(registry.bundle_path("copy@1"))
    delete = registry.history("tiny")[-1]
    assert (delete.kind, delete.version, delete.reason) == ("delete", 1, None)
    assert [e.reason for e in registry.history("tiny") if e.kind == "delete"] == ["superseded", None]


def test_download_round_trip_verifies(registry: Registry, bundles: list[Path], tmp_path: Path) -> None:
    registry.register(bundles[0], alias="production")
    b = registry.download("tiny@production", tmp_path / "out" / "dl")
    assert b.path == tmp_path / "out" / "dl"
    assert verify(b.path) == verify(bundles[0])  # every file, byte for byte
    assert b.meta == Bundle.load(bundles[0]).meta
    trial_load(b)
    with pytest.raises(UsageError, match="not empty"):
        registry.download("tiny@1", tmp_path / "out" / "dl")
    (tmp_path / "empty").mkdir()
    assert registry.download("tiny", tmp_path / "empty").path == tmp_path / "empty"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dl"]  # no partial folders beside it


def test_download_into_the_current_or_a_relative_empty_folder(registry: Registry, bundles: list[Path],
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry.register(bundles[0], alias="production")
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    inode = os.stat(".").st_ino
    b = registry.download("tiny@production", ".")
    assert b.path == here.resolve()
    assert verify(here) == verify(bundles[0])
    assert os.stat(".").st_ino == inode and Path.cwd() == here.resolve()  # filled in place, not replaced
    assert sorted(p.name for p in here.iterdir()) == sorted([*verify(bundles[0]), "MANIFEST.sha256"])
    with pytest.raises(UsageError, match="exists and is not empty"):
        registry.download("tiny@1", ".")

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    assert registry.download("tiny", "empty").path == (tmp_path / "empty").resolve()
    assert verify(tmp_path / "empty") == verify(bundles[0])
    assert registry.download("tiny", Path("new") / "dl").path == (tmp_path / "new" / "dl").resolve()
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["dl"]  # no partial folders beside it


def test_register_accepts_a_packed_archive(registry: Registry, bundles: list[Path], tmp_path: Path) -> None:
    archive = pack(bundles[0], tmp_path / "tiny.tar.gz")
    a = registry.register(archive)
    b = registry.register(bundles[0])
    assert (a.version, b.version) == (1, 2)
    assert a.bundle_sha256 == b.bundle_sha256  # packing is deterministic: one blob for both
    c = registry.register(Bundle.load(bundles[0]), "from-api")  # a loaded Bundle works too
    assert (c.ref, c.bundle_sha256) == ("from-api@1", a.bundle_sha256)
    assert list((registry.settings.home / "tmp").iterdir()) == []  # scratch space cleaned up


def test_bundle_path_is_a_verified_cache_rebuilt_when_changed(registry: Registry, bundles: list[Path]) -> None:
    mv = registry.register(bundles[0])
    path = registry.bundle_path("tiny@1")
    assert path == registry.settings.home / "bundles" / mv.bundle_sha256
    assert verify(path) == verify(bundles[0])
    assert registry.bundle_path(mv) == path
    (path / "bundle.json").write_text("{}")  # someone edits the cached copy
    assert registry.bundle_path("tiny@1") == path
    assert verify(path) == verify(bundles[0])  # rebuilt from the stored blob
    assert registry.load("tiny").meta.name == "tiny"
    assert sorted(p.name for p in path.parent.iterdir()) == [mv.bundle_sha256]
    assert list((registry.settings.home / "tmp").iterdir()) == []


def test_cache_folders_are_discarded_through_the_trash(registry: Registry, bundles: list[Path]) -> None:
    mv = registry.register(bundles[0])
    cached = registry.bundle_path(mv)
    registry._discard(cached)
    assert not cached.exists()
    registry._discard(cached)  # already gone: nothing to do, no error
    assert list((registry.settings.home / "tmp").iterdir()) == []
    assert registry.bundle_path(mv) == cached and verify(cached) == verify(bundles[0])  # rebuilt on demand


def test_a_tampered_stored_bundle_is_refused(registry: Registry, bundles: list[Path], tmp_path: Path) -> None:
    registry.register(bundles[0], alias="production")
    v2 = registry.register(bundles[1])
    blob = registry.artifacts.path(v2.bundle_sha256)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"tiny@2: its stored bundle .* does not match its sha256"):
        registry.download("tiny@2", tmp_path / "dl")
    assert not (tmp_path / "dl").exists()
    with pytest.raises(BundleError, match="does not match its sha256"):
        registry.bundle_path("tiny@2")
    with pytest.raises(BundleError, match="does not match its sha256"):
        registry.set_alias("tiny", "production", 2, reason="deploy v2")
    assert registry.get("tiny@production").version == 1  # the alias did not move
    assert kinds(registry, "tiny") == ["register", "alias", "register"]
    blob.unlink()
    with pytest.raises(BundleError, match="missing from the artifact store"):
        registry.set_alias("tiny", "production", 2)
    assert not (registry.settings.home / "bundles" / v2.bundle_sha256).exists()  # never cached


@pytest.mark.parametrize("damage", ["missing", "changed"])
def test_an_alias_never_moves_to_a_version_whose_stored_bundle_is_damaged_even_when_cached(
        registry: Registry, bundles: list[Path], damage: str) -> None:
    registry.register(bundles[0], alias="production")
    v2 = registry.register(bundles[1])
    cached = registry.bundle_path("tiny@2")  # a warm, intact cache in HOME/bundles
    blob = registry.artifacts.path(v2.bundle_sha256)
    if damage == "missing":
        blob.unlink()
    else:
        blob.write_bytes(blob.read_bytes()[:-1])
    why = "is missing from the artifact store" if damage == "missing" else "does not match its sha256"
    with pytest.raises(BundleError, match=rf"tiny@2: its stored bundle .* {why}"):
        registry.set_alias("tiny", "production", 2, reason="deploy v2")
    with pytest.raises(BundleError, match=why):
        registry.set_alias("tiny", "candidate", "2")
    assert cached.is_dir()  # the cache alone would have passed
    assert registry.get("tiny@production").version == 1
    assert registry.get("tiny@2").aliases == []
    assert kinds(registry, "tiny") == ["register", "alias", "register"]


def test_register_repairs_a_changed_stored_copy_of_the_same_bytes(registry: Registry, bundles: list[Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    v1 = registry.register(bundles[0])
    blob = registry.artifacts.path(v1.bundle_sha256)
    good = blob.read_bytes()
    blob.write_bytes(good[:-1])  # the store's copy changed on disk; the store keeps blobs it has
    v2 = registry.register(bundles[0], alias="production")
    assert v2.bundle_sha256 == v1.bundle_sha256
    assert blob.read_bytes() == good  # replaced by the bytes just packed, which match the sha256
    verify(registry.bundle_path("tiny@production"))
    verify(registry.download("tiny@1", registry.settings.home / "dl").path)

    blob.write_bytes(good[:-1])
    monkeypatch.setattr(registry.artifacts, "_atomic_write", lambda dest, data: None)  # a store that cannot write
    with pytest.raises(BundleError, match=r"storing it as .* failed: the stored copy does not match its sha256"):
        registry.register(bundles[0], alias="candidate")
    assert [v.version for v in registry.list()[0].versions] == [1, 2]
    assert kinds(registry, "tiny") == ["register", "register", "alias"]


# (bundle.json changes, tiny_onnx options, what the refusal says)
MISMATCHES = [
    pytest.param({"signature": {"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 783]}],
                                "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, 10]}]}},
                 {}, r"input 'input' is declared in bundle.json as float32 \[-1, 783\], "
                     r"but the model's is float32 \[batch, 784\]", id="input-width"),
    pytest.param({"signature": {"inputs": [{"name": "input", "dtype": "float64", "shape": [-1, FEATURES]}],
                                "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, 10]}]}},
                 {}, r"input 'input' is declared in bundle.json as float64 \[-1, 784\], "
                     r"but the model's is float32 \[batch, 784\]", id="input-dtype"),
    pytest.param({"signature": {"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 28, 28]}],
                                "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, 10]}]}},
                 {}, r"input 'input' is declared in bundle.json as float32 \[-1, 28, 28\], but the model's is float32 "
                     r"\[batch, 784\]", id="input-rank"),
    pytest.param({}, {"batch": 1}, r"input 'input' is declared in bundle.json as float32 \[-1, 784\], "
                                   r"but the model's is float32 \[1, 784\]", id="fixed-batch"),
    pytest.param({"signature": {"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, FEATURES]}],
                                "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, 9]}]}},
                 {}, r"output 'probabilities' is declared in bundle.json as float32 \[-1, 9\], "
                     r"but the model's is float32 \[batch, 10\]", id="output-width"),
    pytest.param({"signature": {"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, FEATURES]}],
                                "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, 9]}]},
                  "classes": [str(i) for i in range(9)]},
                 {"open_classes": True}, r"output 'probabilities' is declared in bundle.json with shape "
                                         r"\[-1, 9\], but a trial batch of 1 gives shape \[1, 10\]",
                 id="output-width-at-run-time"),
    pytest.param({"classes": [str(i) for i in range(9)]}, {},
                 r"output 'probabilities' must be probabilities \[-1, C\] with C = 9, one column per class "
                 r"in bundle.json, but a trial batch of 1 gives shape \[1, 10\]", id="classes"),
    pytest.param({"classes": [str(i) for i in range(11)]}, {"open_classes": True},
                 r"output 'probabilities' must be probabilities \[-1, C\] with C = 11, .* gives shape \[1, 10\]",
                 id="classes-open-graph"),
]


@pytest.mark.parametrize(("meta", "graph", "message"), MISMATCHES)
def test_a_model_that_does_not_match_its_signature_never_gets_an_alias(
        registry: Registry, bundles: list[Path], tmp_path: Path, meta: dict, graph: dict,  # type: ignore[type-arg]
        message: str) -> None:
    registry.register(bundles[0], alias="production")
    bad = make_mismatched_bundle(tmp_path / "bad", graph=graph, **meta)
    verify(bad)
    with pytest.raises(BundleError, match=rf"{re.escape(str(bad / 'model.onnx'))}: {message}"):
        trial_load(Bundle.load(bad))
    with pytest.raises(BundleError, match=message):
        registry.register(bad, alias="production")
    assert [v.version for v in registry.list()[0].versions] == [1]
    assert kinds(registry, "tiny") == ["register", "alias"]

    # a version row written by something that skipped the checks: the alias still does not move
    archive = pack(bad, tmp_path / "bad.tar.gz")
    sha = registry.artifacts.put_file(archive)
    when = registry.get("tiny@1").created_at
    with registry.engine.begin() as conn:
        conn.execute(model_versions.insert().values(
            name="tiny", version=2, bundle_sha256=sha, size_bytes=archive.stat().st_size, tags={},
            meta=Bundle.load(bad).meta.to_dict(), created_at=when))
    with pytest.raises(BundleError, match=message):
        registry.set_alias("tiny", "production", 2)
    assert registry.get("tiny@production").version == 1


def test_the_trial_load_skips_raw_inputs_and_accepts_any_open_batch_axis(registry: Registry,
                                                                         tmp_path: Path) -> None:
    sig = {"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, FEATURES], "kind": "features"},
                      {"name": "image", "dtype": "uint8", "shape": [-1, 28, 28], "kind": "raw"}],
           "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, 10]}], "onnx_input": "input"}
    raw = make_mismatched_bundle(tmp_path / "raw", signature=sig)  # `image` is no graph input: preprocessed
    trial_load(Bundle.load(raw))
    assert registry.register(raw, alias="production").aliases == ["production"]
    open_graph = make_mismatched_bundle(tmp_path / "open", graph={"open_classes": True})  # width known at run time
    trial_load(Bundle.load(open_graph))
    assert registry.register(open_graph, alias="production").version == 2


def test_a_model_that_does_not_load_never_gets_an_alias(registry: Registry, bundles: list[Path],
                                                        tmp_path: Path) -> None:
    registry.register(bundles[0], alias="production")
    bad = make_unloadable_bundle(tmp_path / "bad")
    verify(bad)  # its manifest is fine: only loading it fails
    with pytest.raises(BundleError, match="model.onnx: does not load and run in ONNX Runtime"):
        registry.register(bad, alias="production")
    # a signature bundle.json cannot hold is refused when the bundle is built, naming the key
    with pytest.raises(BundleError, match=r"sig/bundle.json: missing key 'signature.inputs\[0\].dtype'"):
        make_bundle(tmp_path / "sig", signature={"inputs": [{"name": "pixels"}], "outputs": []})
    wrong_sig = make_bundle(tmp_path / "sig", signature={
        "inputs": [{"name": "pixels", "dtype": "float32", "shape": [-1, FEATURES]}],
        "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, 10]}]})
    with pytest.raises(BundleError, match="names input 'pixels', but the model's inputs are \\['input'\\]"):
        registry.register(wrong_sig, alias="production")
    assert [v.version for v in registry.list()[0].versions] == [1]
    assert registry.get("tiny@production").version == 1
    assert kinds(registry, "tiny") == ["register", "alias"]

    # A version row whose bundle does not load (written by something that skipped the checks):
    # moving an alias to it is still refused, because the trial load runs again at alias time.
    archive = pack(bad, tmp_path / "bad.tar.gz")
    sha = registry.artifacts.put_file(archive)
    when = registry.get("tiny@1").created_at
    with registry.engine.begin() as conn:
        conn.execute(model_versions.insert().values(
            name="tiny", version=2, bundle_sha256=sha, size_bytes=archive.stat().st_size, tags={},
            meta=Bundle.load(bad).meta.to_dict(), created_at=when))
    assert registry.bundle_path("tiny@2").is_dir()  # verifies: the manifest is intact
    with pytest.raises(BundleError, match="does not load"):
        registry.set_alias("tiny", "production", 2, reason="deploy")
    with pytest.raises(BundleError, match="does not load"):
        registry.set_alias("tiny", "candidate", 2)
    assert registry.get("tiny@production").version == 1
    assert registry.get("tiny@2").aliases == []


def test_compare_puts_metrics_and_lineage_side_by_side(registry: Registry, bundles: list[Path],
                                                       tmp_path: Path) -> None:
    registry.register(bundles[0])
    int8 = make_bundle(tmp_path / "int8", seed=5, variant="int8", variants=[
        {"name": "fp32", "accuracy": 0.9, "size_bytes": 31000, "latency_p50_ms": 0.1, "throughput_per_s": 1000.0},
        {"name": "int8", "accuracy": 0.895, "size_bytes": 9000, "latency_p50_ms": 0.08, "throughput_per_s": 1500.0},
    ], lineage={"run_id": "abc123", "parent_version": 1, "data_fingerprint": None})
    mv = registry.register(int8, alias="candidate")
    assert mv.run_id == "abc123" and mv.variant == "int8" and mv.metrics["size_bytes"] == 9000
    c = registry.compare("tiny@1", "tiny@candidate").to_dict()
    assert c["refs"] == ["tiny@1", "tiny@2"]
    assert c["chosen"] == ["fp32", "int8"]
    assert c["metrics"]["accuracy"] == [0.9, 0.895]
    assert c["metrics"]["throughput_per_s"] == [1000.0, 1500.0]
    assert c["variants"]["int8"]["size_bytes"] == [None, 9000]
    assert c["variants"]["fp32"]["accuracy"] == [0.9, 0.9]
    assert c["lineage"]["run_id"] == [None, "abc123"]
    assert set(c["differing_lineage"]) == {"run_id", "parent_version", "library_versions"}


def test_the_registry_does_not_import_torch(reg_settings: Settings, bundles: list[Path]) -> None:
    code = textwrap.dedent("""
        import sys
        from pathlib import Path
        import shipyard
        from shipyard.registry import Registry
        from shipyard.settings import Settings
        reg = Registry(sys.argv[3] or None, settings=Settings(home=Path(sys.argv[1])))
        mv = reg.register(sys.argv[2], alias="production")
        reg.load("tiny@production")
        print(mv.version, "torch" in sys.modules, "onnxruntime" in sys.modules)
    """)
    p = subprocess.run([sys.executable, "-c", code, str(reg_settings.home), str(bundles[0]),
                        reg_settings.database_url or ""], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["1", "False", "True"]
    assert Registry(settings=reg_settings).get("tiny@production").version == 1


RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from shipyard.registry import Registry
    from shipyard.settings import Settings
    home, url, bundle, tag, gate = sys.argv[1:6]
    reg = Registry(url or None, settings=Settings(home=Path(home)), actor=f"racer-{tag}@test")
    Path(gate, f"ready-{tag}").touch()
    deadline = time.monotonic() + 120
    while not Path(gate, "go").exists():  # start both racers at the same moment
        assert time.monotonic() < deadline, "never told to go"
        time.sleep(0.01)
    for i in range(10):
        print(reg.register(bundle, "race", reason=f"{tag}-{i}").version, flush=True)
""")


def test_two_processes_registering_at_once_get_distinct_consecutive_versions(
        reg_settings: Settings, bundles: list[Path], tmp_path: Path) -> None:
    Registry(settings=reg_settings)  # migrate first, as any command does
    script, gate = tmp_path / "racer.py", tmp_path / "gate"
    script.write_text(RACER)
    gate.mkdir()
    procs = {tag: subprocess.Popen([sys.executable, str(script), str(reg_settings.home),
                                    reg_settings.database_url or "", str(bundles[i]), tag, str(gate)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, tag in enumerate("ab")}
    wait_for(lambda: len(list(gate.iterdir())) >= 2 or any(p.poll() is not None for p in procs.values()),
             "both racers to be ready", timeout=120, interval=0.01)
    (gate / "go").touch()
    got: dict[str, list[int]] = {}
    for tag, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        got[tag] = [int(line) for line in stdout.split()]
    assert all(len(v) == 10 and v == sorted(v) for v in got.values())
    assert sorted(got["a"] + got["b"]) == list(range(1, 21))
    reg = Registry(settings=reg_settings)
    model = reg.list()[0]
    assert [v.version for v in model.versions] == list(range(1, 21))
    by_actor = {e.version: e.actor for e in reg.history("race")}
    assert all(by_actor[v] == f"racer-{tag}@test" for tag, vs in got.items() for v in vs)
    for v in model.versions:  # each row points at the bundle its process registered
        expected = bundles[0] if v.version in got["a"] else bundles[1]
        assert verify(reg.bundle_path(v)) == verify(expected)


def _check_consistent(reg: Registry, name: str) -> list[int]:
    """Every version row points at a stored bundle that verifies and loads; aliases point at
    versions that exist; nothing half-written is visible. Returns the versions."""
    models = {m.name: m for m in reg.list()}
    if name not in models:
        return []
    m = models[name]
    versions = [v.version for v in m.versions]
    assert versions == list(range(1, len(versions) + 1))
    for v in m.versions:
        trial_load(reg.load(v))  # raises BundleError if the blob is missing, partial or changed
    assert set(m.aliases.values()) <= set(versions)
    with reg.engine.connect() as conn:
        registered = conn.execute(sa.select(model_events.c.version).where(
            model_events.c.name == name, model_events.c.kind == "register")).scalars().all()
    assert sorted(registered) == versions  # the row and its history event commit together
    return versions


def test_register_command_killed_at_each_named_step_leaves_nothing_broken(reg_settings: Settings, tmp_path: Path,
                                                                          cli_env: dict[str, str]) -> None:
    """`shipyard models register` SIGKILLed at each of `register`'s own named steps (the
    registry's crash hook): only a committed transaction leaves a version behind, complete and
    served by its alias; a killed transaction uses no version number; no half-written bundle is
    cached and the dead processes' scratch is swept."""
    env = dict(cli_env, SHIPYARD_HOME=str(reg_settings.home))
    if reg_settings.database_url:
        env["SHIPYARD_DATABASE_URL"] = reg_settings.database_url
    Registry(settings=reg_settings)  # migrate first
    expected = 0
    for i, step in enumerate(REGISTER_STEPS):
        src = make_bundle(tmp_path / f"b{i}", name="crash", seed=i)
        p = subprocess.run([*SHIPYARD, "models", "register", str(src), "--alias", "production", "--json"],
                           env={**env, "SHIPYARD_REGISTER_CRASH_AT": step}, cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == -signal.SIGKILL, f"{step}: exited {p.returncode}\n{p.stderr}"  # killed right there
        dispose_engines()
        reg = Registry(settings=reg_settings)
        expected += step == "committed"
        assert len(_check_consistent(reg, "crash")) == expected, step
        if expected:
            assert reg.get("crash@production").version == expected

    last = reg.register(make_bundle(tmp_path / "final", name="crash", seed=99), alias="production")
    assert last.version == expected + 1 == len(_check_consistent(reg, "crash"))
    assert reg.get("crash@production").version == last.version
    # no partial folders: the cache holds only complete bundles, scratch of dead processes is gone
    for p in (reg.settings.home / "bundles").iterdir():
        assert re.fullmatch(r"[0-9a-f]{64}", p.name)
        verify(p)
    assert list((reg.settings.home / "tmp").iterdir()) == []


PAUSER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from shipyard.registry import registry as M
    from shipyard.store.artifacts import ArtifactStore
    from shipyard.settings import Settings
    home, url, bundle, point, flag = sys.argv[1:6]

    def pause():
        Path(flag).write_text(point)
        time.sleep(3600)  # until the test kills us

    def wrap(owner, attr, when):
        orig = getattr(owner, attr)
        def f(*a, **k):
            if when == "before":
                pause()
            r = orig(*a, **k)
            pause()
            return r
        setattr(owner, attr, f)

    where = {
        "verified": (M, "trial_load", "before"),           # manifest checked, not yet trial-loaded
        "trial-loaded": (M, "trial_load", "after"),
        "packed": (M, "pack", "after"),                     # the .tar.gz is in scratch space
        "storing": (ArtifactStore, "_atomic_write", "before"),
        "stored": (ArtifactStore, "put_file", "after"),   # blob stored, no row yet
        "in-transaction": (M.Registry, "_event", "after"),  # row inserted, not committed
        "committed": (M.Registry, "get", "before"),         # committed, not yet reported
    }
    wrap(*where[point])
    reg = M.Registry(url or None, settings=Settings(home=Path(home)))
    reg.register(bundle, "paused", alias="production")
""")
KILL_POINTS = ["verified", "trial-loaded", "packed", "storing", "stored", "in-transaction", "committed"]


def test_register_killed_at_each_step_leaves_nothing_broken(reg_settings: Settings, tmp_path: Path) -> None:
    script = tmp_path / "pauser.py"
    script.write_text(PAUSER)
    Registry(settings=reg_settings)  # migrate first
    expected = 0
    for i, point in enumerate(KILL_POINTS):
        flag = tmp_path / f"flag-{i}"
        src = make_bundle(tmp_path / f"b{i}", seed=100 + i)
        p = subprocess.Popen([sys.executable, str(script), str(reg_settings.home), reg_settings.database_url or "",
                              str(src), point, str(flag)], stderr=subprocess.PIPE, text=True)
        wait_for(lambda flag=flag, p=p: flag.exists() or p.poll() is not None,
                 f"register to reach {point}", timeout=120, interval=0.01)
        assert flag.exists(), p.communicate()[1]  # it reached the step (and is paused there)
        os.kill(p.pid, signal.SIGKILL)
        p.communicate(timeout=300)
        assert p.returncode == -signal.SIGKILL
        dispose_engines()
        reg = Registry(settings=reg_settings)
        expected += point == "committed"  # only a committed transaction leaves a version behind
        assert len(_check_consistent(reg, "paused")) == expected, point
        if expected:
            assert reg.get("paused@production").version == expected
    last = reg.register(make_bundle(tmp_path / "final", seed=7), "paused", alias="production")
    assert last.version == expected + 1  # a killed transaction consumed no version number
    assert list((reg.settings.home / "tmp").iterdir()) == []  # the dead processes' scratch is swept
    assert [e.kind for e in reg.history("paused")] == ["register", "alias"] * 2
