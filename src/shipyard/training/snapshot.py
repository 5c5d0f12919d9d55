"""The resume snapshot and the run's checkpoint bytes: what a resumed run needs to continue
exactly where an interrupted one stopped (model, optimizer, schedule, random generators, early
stopping state), kept in the run folder rather than the immutable artifact store."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shipyard.errors import ShipyardError
from shipyard.training.tracking import Run, RunStore


@dataclass
class State:
    """Where training stands after the last completed epoch (restored on resume)."""

    epoch: int = 0  # epochs completed
    best_val_accuracy: float = -1.0
    best_epoch: int | None = None
    bad_epochs: int = 0


def to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def checkpoint_bytes(store: RunStore, run_id: str) -> bytes:
    run = store.get(run_id)
    if "checkpoint" not in run.artifacts:
        raise ShipyardError(f"run {run_id} has no checkpoint")
    return store.artifacts.get_bytes(run.artifacts["checkpoint"]["sha256"])


def resume_path(run_or_dir: Run | Path) -> Path:
    """The resume snapshot: mutable state of the last completed epoch, kept in the run folder
    (not the immutable artifact store)."""
    folder = run_or_dir if isinstance(run_or_dir, Path) else Path(run_or_dir.run_dir or ".")
    return folder / "resume.pt"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def snapshot(model: nn.Module, opt: Any, sched: Any, gen: torch.Generator, state: State) -> dict[str, Any]:
    """Everything a resumed run needs to continue exactly where this one stopped."""
    return {
        "model": model.state_dict(), "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict() if sched is not None else None,
        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "epoch": state.epoch, "best_val_accuracy": state.best_val_accuracy,
        "best_epoch": state.best_epoch if state.best_epoch is not None else -1,
        "bad_epochs": state.bad_epochs,
    }


def restore(path: Path | io.BytesIO, model: nn.Module, opt: Any, sched: Any, gen: torch.Generator,
             state: State) -> None:
    snap = torch.load(path, weights_only=True, map_location="cpu")
    model.load_state_dict(snap["model"])
    opt.load_state_dict(snap["optimizer"])
    if sched is not None and snap["scheduler"] is not None:
        sched.load_state_dict(snap["scheduler"])
    gen.set_state(snap["generator"])
    torch.set_rng_state(snap["torch_rng"])
    if snap.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snap["cuda_rng"])
    state.epoch = int(snap["epoch"])
    state.best_val_accuracy = float(snap["best_val_accuracy"])
    state.best_epoch = int(snap["best_epoch"]) if snap["best_epoch"] >= 0 else None
    state.bad_epochs = int(snap["bad_epochs"])
