"""The artifact store on S3-compatible object storage (moto's standalone server, a real process,
behind a TCP proxy that can cut downloads): two hosts share one registry and one bucket, blobs
are verified after download and cached by sha256, a cut or tampered download is never served."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest

from harness.bundles import make_bundle
from shipyard.bundle import BundleError
from shipyard.registry import Registry
from shipyard.settings import Settings
from shipyard.store.artifacts import S3ArtifactStore, open_store

from ..conftest import run_cli
from ..s3 import CREDENTIALS, CutProxy, moto_server
from ..serving import serve, server_env

pytestmark = pytest.mark.slow
BUCKET = "models"


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def proxy(moto: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CutProxy]:
    import boto3

    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    s3 = boto3.client("s3", endpoint_url=moto)
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    u = urlparse(moto)
    p = CutProxy((u.hostname or "127.0.0.1", u.port or 80)).start()
    yield p
    p.close()


def host(tmp_path: Path, name: str, proxy: CutProxy, prefix: str) -> Settings:
    """One 'host': its own home (caches), the shared database and the shared bucket."""
    return Settings(home=tmp_path / name, database_url=f"sqlite:///{tmp_path / 'shared.db'}",
                    artifacts=f"s3://{BUCKET}/{prefix}", s3_endpoint_url=proxy.url)


def cache_files(settings: Settings) -> list[Path]:
    cache = settings.home / "cache"
    return [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []


def test_two_hosts_share_bundles_through_the_bucket(tmp_path: Path, proxy: CutProxy, moto: str) -> None:
    import boto3

    a = host(tmp_path, "a", proxy, "two-hosts")
    mv = Registry(settings=a).register(make_bundle(tmp_path / "b1", seed=1), "tiny", alias="production")
    head = boto3.client("s3", endpoint_url=moto).head_object(
        Bucket=BUCKET, Key=f"two-hosts/sha256/{mv.bundle_sha256[:2]}/{mv.bundle_sha256}")
    assert head["Metadata"]["sha256"] == mv.bundle_sha256 and head["ContentLength"] == mv.size_bytes

    b = host(tmp_path, "b", proxy, "two-hosts")
    gets = proxy.gets
    loaded = Registry(settings=b).load("tiny@production")
    assert proxy.gets == gets + 1  # downloaded once …
    assert (loaded.path / "model.onnx").read_bytes() == (tmp_path / "b1" / "model.onnx").read_bytes()
    again = Registry(settings=b)
    again.load("tiny@production")
    again.set_alias("tiny", "staging", 1)  # verifies the blob: from the local cache
    assert proxy.gets == gets + 1  # … and then read from the cache by sha256


def test_a_tampered_object_is_refused_and_nothing_is_cached(tmp_path: Path, proxy: CutProxy, moto: str) -> None:
    import boto3

    a = host(tmp_path, "a", proxy, "tampered")
    mv = Registry(settings=a).register(make_bundle(tmp_path / "b1", seed=2), "tiny", alias="production")
    boto3.client("s3", endpoint_url=moto).put_object(
        Bucket=BUCKET, Key=f"tampered/sha256/{mv.bundle_sha256[:2]}/{mv.bundle_sha256}", Body=b"not the bundle")
    c = host(tmp_path, "c", proxy, "tampered")
    with pytest.raises(BundleError, match="does not match its sha256"):
        Registry(settings=c).load("tiny@production")
    assert cache_files(c) == []
    assert not (c.home / "bundles").exists() or not any((c.home / "bundles").iterdir())


def test_a_download_cut_half_way_is_retried_and_never_served_half_written(tmp_path: Path, proxy: CutProxy) -> None:
    a = host(tmp_path, "a", proxy, "cut")
    mv = Registry(settings=a).register(make_bundle(tmp_path / "b1", seed=3), "tiny", alias="production")
    assert mv.size_bytes > 8000  # large enough to cut half-way

    proxy.cut_after, proxy.cuts, proxy.cut_count = mv.size_bytes // 2, 1, 0
    d = host(tmp_path, "d", proxy, "cut")
    bundle = Registry(settings=d).load("tiny@production")  # first GET cut, second whole
    assert proxy.cut_count == 1
    assert bundle.path.name == mv.bundle_sha256
    assert [p.name for p in cache_files(d)] == [mv.bundle_sha256]

    proxy.cuts, proxy.cut_count = 1 << 30, 0  # every download cut: refused after the retries
    e = host(tmp_path, "e", proxy, "cut")
    with pytest.raises(BundleError, match=r"failed 3 times.*cut"):
        Registry(settings=e).load("tiny@production")
    assert proxy.cut_count == S3ArtifactStore.attempts
    assert cache_files(e) == []  # no partial file left, nothing cached under the sha256


def test_a_restarted_replica_serves_from_its_cache_without_the_bucket(tmp_path: Path, proxy: CutProxy) -> None:
    a = host(tmp_path, "a", proxy, "restart")
    Registry(settings=a).register(make_bundle(tmp_path / "b1", seed=4), "tiny", alias="production")
    env = server_env(a.home, SHIPYARD_DATABASE_URL=a.db_url, SHIPYARD_ARTIFACTS=a.artifacts or "",
                     SHIPYARD_S3_ENDPOINT_URL=proxy.url, **CREDENTIALS)
    x = np.random.default_rng(0).random((1, 784), dtype=np.float32).tolist()
    body = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": x}]}
    with serve(a.home, "tiny", env=env) as srv:
        first = httpx.post(f"{srv.base}/v2/models/tiny/infer", json=body, timeout=10).json()
    proxy.close()  # the bucket is gone: a restart must not need it
    with serve(a.home, "tiny", env=env) as srv:
        r = httpx.post(f"{srv.base}/v2/models/tiny/infer", json=body, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == first["outputs"][0]["data"]


def test_optimize_a_run_trained_on_another_host(tmp_path: Path, proxy: CutProxy, cli_env: dict[str, str]) -> None:
    a = host(tmp_path, "a", proxy, "runs")
    env = {**cli_env, **CREDENTIALS, "SHIPYARD_DATABASE_URL": a.db_url, "SHIPYARD_ARTIFACTS": a.artifacts or "",
           "SHIPYARD_S3_ENDPOINT_URL": proxy.url}
    run = json.loads(run_cli(["train", "--epochs", "1", "--quiet", "--json"], {**env, "SHIPYARD_HOME": str(a.home)}
                             ).stdout)
    assert run["checkpoint"].startswith(f"s3://{BUCKET}/runs/sha256/")
    tb = [k for k in run["artifacts"] if k.startswith("tensorboard/events.out.tfevents.")]
    assert len(tb) == 1  # the TensorBoard file is in the bucket too
    events = open_store(a).get_bytes(run["artifacts"][tb[0]]["sha256"])
    assert len(events) == run["artifacts"][tb[0]]["size_bytes"] > 0
    assert list(open_store(a).client.list_objects_v2(Bucket=BUCKET, Prefix="runs/")["Contents"])
    shutil.rmtree(a.home)  # nothing of host a's disk is needed: the checkpoint is in the bucket
    b_home = tmp_path / "b"
    out = json.loads(run_cli(["optimize", run["run_id"], "--json", "--bench-seconds", "0.05", "--variants", "fp32"],
                             {**env, "SHIPYARD_HOME": str(b_home)}).stdout)
    assert Path(out["bundle"]).is_relative_to(b_home)  # written on this host, from the bucket's checkpoint


def test_gc_removes_orphan_objects_and_their_local_copies(tmp_path: Path, proxy: CutProxy) -> None:
    from shipyard.store.gc import collect

    a = host(tmp_path, "a", proxy, "gc")
    reg = Registry(settings=a)
    mv = reg.register(make_bundle(tmp_path / "b1", seed=5), "tiny", alias="production")
    orphan = reg.artifacts.put_bytes(b"an orphan")
    assert reg.artifacts.put_bytes(b"an orphan") == orphan  # stored again: renewed in place (a copy)
    reg.artifacts.local(orphan)  # and downloaded to this host's cache
    assert collect(reg).kept_young == 1  # within the default grace period: kept
    report = collect(reg, grace_s=0)
    assert [b["sha256"] for b in report.removed] == [orphan]
    assert report.removed[0]["where"] == f"s3://{BUCKET}/gc/sha256/{orphan[:2]}/{orphan}"
    assert not reg.artifacts.exists(orphan) and not reg.artifacts.path(orphan).exists()
    assert reg.artifacts.exists(mv.bundle_sha256)
    assert Registry(settings=host(tmp_path, "b", proxy, "gc")).load("tiny@production").path.name == mv.bundle_sha256
