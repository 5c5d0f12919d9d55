"""Nothing the tool unpacks outlives the command or server that needed it (issue 14 §5): the real
CLI commands that open a `.tar.gz` bundle, `optimize --output X.tar.gz`, and a server, each run
with TMPDIR pointed at a fresh folder, leave no `shipyard-bundle-*` folder (nor anything else of
ours) behind, also when the archive fails verification."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

import shipyard
from harness.bundles import make_bundle
from shipyard.bundle import pack

from ..conftest import run_cli
from ..serving import serve, server_env

if TYPE_CHECKING:
    from ..conftest import Trained

pytestmark = pytest.mark.slow
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784], "data": [0.0] * 784}]}


def _fresh(tmp_path: Path) -> Path:
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    return tmp


def _left(tmp: Path) -> list[str]:
    # ONNX Runtime (1.32) keeps one id file there, `.ses`, that every process reads and reuses
    return sorted(p.name for p in tmp.iterdir() if p.name != ".ses")


def test_cli_commands_and_a_server_on_a_tarball_leave_nothing(tmp_path: Path, cli_env: dict[str, str]) -> None:
    tmp = _fresh(tmp_path)
    folder = make_bundle(tmp_path / "b")
    archive = pack(folder, tmp_path / "tiny.tar.gz")
    bad = tmp_path / "bad.tar.gz"  # a changed file under an unchanged manifest
    with tarfile.open(bad, "w:gz") as tar:
        for p in sorted(folder.iterdir()):
            if p.name == "model.onnx":
                p.write_bytes(p.read_bytes() + b"\0")
            tar.add(p, arcname=p.name)
    env = {**cli_env, "TMPDIR": str(tmp)}
    run_cli(["bundle", "verify", str(archive)], env)
    run_cli(["bundle", "show", str(archive)], env)
    run_cli(["bundle", "show", str(archive), "--json"], env)
    failed = run_cli(["bundle", "verify", str(bad)], env, check=False)
    assert failed.returncode == 1 and "checksum mismatch" in failed.stderr
    assert run_cli(["models", "register", str(bad), "--name", "tiny"], env, check=False).returncode == 1
    run_cli(["models", "register", str(archive), "--name", "tiny", "--alias", "production"], env)
    assert _left(tmp) == []

    home = Path(cli_env["SHIPYARD_HOME"])
    with serve(home, "tiny", "--no-evaluate", env=server_env(home, TMPDIR=str(tmp))) as srv:
        assert httpx.post(f"{srv.base}/v2/models/tiny/infer", json=BODY).status_code == 200
    assert _left(tmp) == []


def test_optimize_to_a_tarball_leaves_nothing(trained: Trained, cli_env: dict[str, str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    settings, run = trained
    tmp = _fresh(tmp_path)
    env = {**cli_env, "SHIPYARD_HOME": str(settings.home), "TMPDIR": str(tmp)}
    run_cli(["optimize", run.id, "--output", str(tmp_path / "cli.tar.gz"), "--variants", "fp32",
             "--bench-seconds", "0.02"], env)
    assert (tmp_path / "cli.tar.gz").is_file() and _left(tmp) == []

    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # the API: the Bundle returned owns its copy
    b = shipyard.optimize(run, settings=settings, output=tmp_path / "api.tar.gz", variants=("fp32",),
                          bench_seconds=0.02)
    assert b.model_path.is_file() and b.path.parent == tmp
    b.close()
    assert _left(tmp) == []
