"""The training stage for real: torch, the SQL store, the artifact store, TensorBoard files."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
import torch

from shipyard.errors import ShipyardError, UsageError
from shipyard.settings import Settings
from shipyard.store.engine import engine_for
from shipyard.store.schema import runs as runs_table
from shipyard.training import Recipe, get_run, train
from shipyard.training.tracking import RunStore

from ..conftest import SHIPYARD
from ..waiting import wait_for

if TYPE_CHECKING:
    from ..conftest import Trained


def test_canonical_run_learns_and_is_tracked(trained: Trained) -> None:
    s, run = trained
    assert run.status == "finished" and run.epochs_run == 2
    assert run.metrics["train_loss"][1] < run.metrics["train_loss"][0]
    assert run.best_val_accuracy is not None and run.best_val_accuracy > 0.85
    assert run.test_accuracy is None  # mnist-sample ships no test split
    assert run.threads == s.threads and run.device == "cpu"
    assert run.library_versions and run.library_versions["torch"].startswith("2.")
    assert run.preprocess and run.preprocess["raw_shape"] == [28, 28]
    assert len(run.data_fingerprint or "") == 64
    state = torch.load(run.checkpoint, weights_only=True)
    assert state["net.0.weight"].shape == (128, 784)
    again = get_run(run.id[:6], settings=s)
    assert again.metrics == run.metrics and again.checkpoint == run.checkpoint


def test_tensorboard_scalars_match_the_store(trained: Trained) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run = trained
    acc = EventAccumulator(run.tensorboard_dir)
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "opt/lr"} <= tags
    for tag, key in (("val/accuracy", "val_accuracy"), ("train/loss", "train_loss")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx(run.metrics[key], rel=1e-6)


def test_same_seed_same_run_other_seed_other_run(settings: Settings) -> None:
    a = train(data="mnist-sample", epochs=1, seed=7, settings=settings, progress=False)
    b = train(data="mnist-sample", epochs=1, seed=7, settings=settings, progress=False)
    c = train(data="mnist-sample", epochs=1, seed=8, settings=settings, progress=False)
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert a.metrics[key] == b.metrics[key]
    assert a.artifacts["checkpoint"]["sha256"] == b.artifacts["checkpoint"]["sha256"]
    assert a.metrics["train_loss"] != c.metrics["train_loss"]


def test_early_stopping_stops(settings: Settings) -> None:
    # a learning rate this small leaves validation accuracy flat, so patience 1 stops at epoch 2
    run = train(data="mnist-sample", epochs=6, lr=1e-12, patience=1, settings=settings, progress=False)
    assert run.status == "finished"
    assert run.epochs_run == 2 and run.best_epoch == 1


def test_schedule_and_optimizers(settings: Settings) -> None:
    run = train(data="mnist-sample", epochs=2, optimizer="sgd", lr=0.1, schedule="step",
                schedule_step=1, schedule_gamma=0.5, label_smoothing=0.1,
                settings=settings, progress=False)
    assert run.metrics["lr"] == pytest.approx([0.1, 0.05])
    assert run.recipe["optimizer"] == "sgd" and run.status == "finished"


def test_cnn_trains(settings: Settings) -> None:
    run = train(data="mnist-sample", model="cnn", epochs=1, model_args={"channels": [4, 8], "hidden": 16},
                settings=settings, progress=False)
    assert run.status == "finished" and run.best_val_accuracy is not None
    assert run.best_val_accuracy > 0.5


def test_fashion_mnist_reports_test_accuracy(settings: Settings) -> None:
    run = train(data="fashion-mnist", epochs=1, batch_size=256, settings=settings, progress=False)
    assert run.test_accuracy is not None and 0.6 < run.test_accuracy < 1.0
    assert run.recipe["data"] == "fashion-mnist" and run.epochs_run == 1


def test_like_replays_the_recipe_with_overrides(trained: Trained) -> None:
    s, parent = trained
    child = train(like=parent.id, epochs=1, seed=3, settings=s, progress=False)
    assert child.parent_run_id == parent.id
    expected = {**parent.recipe, "epochs": 1, "seed": 3}
    assert child.recipe == expected


def test_failed_run_keeps_the_error(settings: Settings, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "brokenmodels.py").write_text(textwrap.dedent("""
        import torch
        class Broken(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(784, 10)
            def forward(self, x):
                if self.training:  # fits the data (the pre-run check passes), then fails in the run
                    raise RuntimeError("boom in forward")
                return self.lin(x)
        def broken():
            return Broken()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match="boom"):
        train(data="mnist-sample", model="brokenmodels:broken", epochs=1, settings=settings,
              progress=False)
    (run,) = RunStore(settings).list()
    assert run.status == "failed" and "boom in forward" in (run.error or "")
    assert run.ended_at is not None


def test_a_vanished_process_shows_as_failed(settings: Settings) -> None:
    store = RunStore(settings)
    run_id = store.create(Recipe().to_dict(), "mnist-sample")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.update(run_id, pid=dead.pid)
    run = store.get(run_id)
    assert run.status == "failed" and f"process {dead.pid}" in (run.error or "")


def test_resume_refuses_what_it_cannot_do(trained: Trained, settings: Settings) -> None:
    s, run = trained
    with pytest.raises(UsageError, match="already finished"):
        train(resume=run.id, settings=s)
    with pytest.raises(UsageError, match="only"):
        train(resume=run.id, lr=0.5, settings=s)
    with pytest.raises(ShipyardError, match="no run"):
        train(resume="feedbeef", settings=settings)


#: more epochs than any machine runs before a Ctrl-C lands: the interrupted runs never race their end
ENDLESS = "100000"


def _wait_for_epoch(settings: Settings, epochs: int, proc: subprocess.Popen[str]) -> str:
    """The run's id, once `proc` has completed `epochs` epochs (as recorded in the database)."""
    engine = engine_for(settings.db_url)

    def reached() -> str | None:
        assert proc.poll() is None, proc.communicate()[1]
        with engine.connect() as conn:
            row = conn.execute(sa.select(runs_table.c.id, runs_table.c.epochs_run)).first()
        return str(row.id) if row is not None and row.epochs_run >= epochs else None

    return wait_for(reached, f"training to complete epoch {epochs}", timeout=120)


@contextmanager
def _training(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """`shipyard train ARGS` in the background; killed if the test leaves it running."""
    proc = subprocess.Popen([*SHIPYARD, "train", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_ctrl_c_interrupts_cleanly_and_resume_matches_an_uninterrupted_run(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    settings = Settings(home=Path(cli_env["SHIPYARD_HOME"]))
    with _training(["--epochs", ENDLESS, "--seed", "5", "--json"], cli_env) as proc:
        run_id = _wait_for_epoch(settings, 2, proc)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["run_id"] == run_id and out["status"] == "interrupted"
    assert f"--resume {run_id}" in stderr
    run = get_run(run_id, settings=settings)
    assert run.status == "interrupted" and run.epochs_run >= 2
    state = torch.load(io.BytesIO(Path(run.checkpoint).read_bytes()), weights_only=True)
    assert "net.0.weight" in state

    # continued two epochs past where it stopped, it is the run that never stopped (no schedule
    # depends on the epoch count)
    epochs = run.epochs_run + 2
    resumed = train(resume=run_id, epochs=epochs, settings=settings, progress=False)
    assert resumed.id == run_id and resumed.status == "finished" and resumed.epochs_run == epochs
    straight = train(epochs=epochs, seed=5, settings=settings, progress=False)
    assert resumed.metrics["val_accuracy"] == straight.metrics["val_accuracy"]
    assert resumed.metrics["train_loss"] == straight.metrics["train_loss"]
    assert resumed.artifacts["checkpoint"]["sha256"] == straight.artifacts["checkpoint"]["sha256"]
    assert os.path.exists(resumed.checkpoint)


def test_device_cuda_without_a_gpu_is_a_usage_error(settings: Settings) -> None:
    if torch.cuda.is_available():  # on a GPU machine the same call must train
        run = train(data="mnist-sample", epochs=1, device="cuda", settings=settings, progress=False)
        assert run.device.startswith("cuda")
    else:
        with pytest.raises(UsageError, match="no CUDA device"):
            train(data="mnist-sample", epochs=1, device="cuda", settings=settings, progress=False)


def test_a_diverging_run_fails_with_a_clear_reason(settings: Settings) -> None:
    with pytest.raises(ShipyardError, match="training diverged"):
        train(data="mnist-sample", epochs=2, optimizer="sgd", lr=1e9, settings=settings, progress=False)
    (run,) = RunStore(settings).list()
    assert run.status == "failed" and "diverged" in (run.error or "")


def test_resume_cannot_shrink_a_run(tmp_path: Path, cli_env: dict[str, str]) -> None:
    settings = Settings(home=Path(cli_env["SHIPYARD_HOME"]))
    with _training(["--epochs", ENDLESS, "-q"], cli_env) as proc:
        run_id = _wait_for_epoch(settings, 2, proc)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    done = get_run(run_id, settings=settings).epochs_run
    with pytest.raises(UsageError, match="would not continue it"):
        train(resume=run_id, epochs=done, settings=settings)
    assert get_run(run_id, settings=settings).status == "interrupted"  # nothing changed


def test_stored_recipe_says_exactly_what_ran(settings: Settings, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 255, (60, 28, 28), dtype=np.uint8),
             y_train=np.arange(60) % 3)
    monkeypatch.chdir(tmp_path)
    run = train(data="npz:d.npz", epochs=1, settings=settings, progress=False)
    assert run.recipe["data"] == f"npz:{tmp_path / 'd.npz'}"
    assert run.recipe["threads"] == settings.threads
