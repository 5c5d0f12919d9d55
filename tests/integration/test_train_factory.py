"""The real `shipyard train --model ./file.py:factory` from a project folder without PYTHONPATH:
it trains and stores the absolute factory path; a factory that does not fit the data exits 2 with
one line, no traceback, and leaves no run behind."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from ..conftest import run_cli

FAST = ["--data", "mnist-sample", "--epochs", "1", "--batch-size", "256", "--threads", "1", "--quiet"]

MYMODEL = """
import torch

def make(num_features, num_classes, hidden=32):
    return torch.nn.Sequential(torch.nn.Linear(num_features, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, num_classes))

def wrong(num_classes):
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, num_classes))
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "mymodel.py").write_text(textwrap.dedent(MYMODEL))
    monkeypatch.chdir(folder)
    return folder


def _runs(env: dict[str, str]) -> list[dict[str, object]]:
    runs: list[dict[str, object]] = json.loads(run_cli(["runs", "list", "--json"], env).stdout)["runs"]
    return runs


def test_a_factory_file_trains_and_replays(project: Path, cli_env: dict[str, str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cli_env.pop("PYTHONPATH", None)
    p = run_cli(["train", "--model", "./mymodel.py:make", "--model-arg", "hidden=16", *FAST, "--json"], cli_env)
    run = json.loads(p.stdout.strip().splitlines()[-1])
    assert run["status"] == "finished" and run["recipe"]["model"] == f"{project / 'mymodel.py'}:make"
    assert run["recipe"]["model_args"] == {"hidden": 16}

    # the stored absolute path replays from anywhere
    elsewhere = project.parent / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    p = run_cli(["train", "--like", run["run_id"], "--json"], cli_env)
    child = json.loads(p.stdout.strip().splitlines()[-1])
    assert child["status"] == "finished" and child["recipe"]["model"] == run["recipe"]["model"]


def test_a_misfit_factory_is_one_line_and_leaves_no_run(project: Path, cli_env: dict[str, str]) -> None:
    p = run_cli(["train", "--model", "mymodel.py:wrong", *FAST], cli_env, check=False)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert f"model '{project / 'mymodel.py'}:wrong' does not fit the data" in lines[0]
    assert ("it got features [N, 784] (from input shape [28, 28]) and failed: mat1 and mat2 shapes "
            "cannot be multiplied (2x784 and 64x128)") in lines[0]
    assert _runs(cli_env) == []

    p = run_cli(["train", "--model", "mymodel.py:absent", *FAST], cli_env, check=False)
    assert p.returncode == 2 and f"model file '{project / 'mymodel.py'}' has no callable 'absent'" in p.stderr
    assert "Traceback" not in p.stderr and _runs(cli_env) == []
