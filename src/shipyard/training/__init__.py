"""The `train` stage: `train(...) -> Run` and run tracking. Importing this package does not
import torch; training does."""

from __future__ import annotations

from typing import Any

from shipyard.errors import UsageError
from shipyard.settings import Settings
from shipyard.training.recipe import Recipe
from shipyard.training.tracking import Run, RunStore, check_name_tags

__all__ = ["Recipe", "Run", "RunStore", "get_run", "runs", "train"]

#: recipe fields a resumed run may change (more epochs, patience); the rest must stay as trained
RESUMABLE_OVERRIDES = {"epochs", "patience"}
#: recipe fields a resumed run may repeat but not change (a resume continues exactly)
RESUMABLE_IF_SAME = {"nproc", "nnodes"}


def train(recipe: Recipe | None = None, *, like: str | None = None, resume: str | None = None,
          settings: Settings | None = None, progress: bool = True, init_weights: Any = None,
          node_rank: int = 0, rdzv_endpoint: str | None = None, name: str | None = None,
          tags: dict[str, str] | None = None, **overrides: Any) -> Run:
    """Train a model and return its tracked run.

    `shipyard.train(data="fashion-mnist", epochs=5)` trains the canonical MLP; `like=RUN` replays
    that run's recipe with `overrides` applied; `resume=RUN` continues an interrupted run;
    `init_weights` (a state dict file) warm-starts instead of initialising at random. `name` and
    `tags` (`{key: value}`) label the new run (a resumed run: renamed, the tags merged into its own).

    Data-parallel: `nproc=N` trains with N processes on this host (`batch_size` stays the global
    batch); `nnodes=M, node_rank=R, rdzv_endpoint="host:port"` joins a job across M hosts, where
    node 0 holds the recipe and tracks the run, and the other nodes only lend processes."""
    settings = settings or Settings.from_env()
    if node_rank:  # another node's helper: node 0 decides the recipe, the run and where it resumes
        from shipyard.training.distributed import launch

        return launch(recipe, settings, nproc=overrides.get("nproc") or (recipe.nproc if recipe else 1),
                      nnodes=overrides.get("nnodes") or (recipe.nnodes if recipe else 1),
                      node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, progress=False,
                      device_name=overrides.get("device") or (recipe.device if recipe else None))
    check_name_tags(name, tags)  # before any data is loaded: a bad tag is one line, not a failed run
    store = RunStore(settings)
    if resume is not None:
        if recipe is not None or like is not None:
            raise UsageError("resume takes the run's own recipe; do not pass a recipe or like")
        run = store.get(resume)
        if bad := sorted(k for k, v in overrides.items() if v is not None and k not in RESUMABLE_OVERRIDES
                         and not (k in RESUMABLE_IF_SAME and v == run.recipe.get(k, 1))):
            raise UsageError(f"a resumed run keeps its recipe; only {sorted(RESUMABLE_OVERRIDES)} "
                             f"may change, not {bad}")
        if run.status == "running":
            raise UsageError(f"run {run.id} is still running (pid {run.pid} on {run.host})")
        epochs = overrides.get("epochs")
        if run.status == "finished" and epochs in (None, run.recipe["epochs"]):
            raise UsageError(f"run {run.id} already finished; pass more epochs to extend it")
        if epochs is not None and epochs <= run.epochs_run:
            raise UsageError(f"run {run.id} already ran {run.epochs_run} epochs; --epochs {epochs} "
                             "would not continue it")
        from shipyard.training.snapshot import resume_path

        if not resume_path(run).exists():
            raise UsageError(f"run {run.id} has no completed epoch to resume from")
        if name is not None or tags:
            store.set_name_tags(run.id, name=name, tags=tags)
        base = Recipe.from_dict(run.recipe).with_overrides(
            **{k: v for k, v in overrides.items() if k not in RESUMABLE_IF_SAME})
        if base.nnodes > 1 and rdzv_endpoint is None:
            raise UsageError(f"run {run.id} trained on {base.nnodes} nodes; resume it the same way: "
                             f"--nnodes {base.nnodes} --nproc {base.nproc} --rdzv-endpoint HOST:PORT on "
                             "every node, with --node-rank 0 here")
        return _fit(base, settings, rdzv_endpoint=rdzv_endpoint, resume=run.id,
                    expect_fingerprint=run.data_fingerprint, progress=progress)
    if like is not None:
        if recipe is not None:
            raise UsageError("pass either a recipe or like=RUN, not both")
        parent = store.get(like)
        base = Recipe.from_dict(parent.recipe).with_overrides(**overrides)
        if base.nnodes > 1 and rdzv_endpoint is None and overrides.get("nnodes") is None:
            # the other hosts cannot be summoned from here; the global batch keeps the recipe's meaning
            base = base.with_overrides(nnodes=1)
        same_data = base.data == parent.recipe.get("data")
        return _fit(base, settings, rdzv_endpoint=rdzv_endpoint, parent_run_id=parent.id,
                    expect_fingerprint=parent.data_fingerprint if same_data else None, progress=progress,
                    init_weights=init_weights, name=name, tags=tags)
    base = (recipe or Recipe()).with_overrides(**overrides)
    return _fit(base, settings, rdzv_endpoint=rdzv_endpoint, progress=progress, init_weights=init_weights,
                name=name, tags=tags)


def _fit(recipe: Recipe, settings: Settings, *, rdzv_endpoint: str | None, **kwargs: Any) -> Run:
    """Train in this process, or through the launcher when the recipe asks for several."""
    if recipe.nproc * recipe.nnodes == 1 and rdzv_endpoint is None:
        from shipyard.training.loop import fit

        return fit(recipe, settings, **kwargs)
    from shipyard.training.distributed import launch

    return launch(recipe, settings, nproc=recipe.nproc, nnodes=recipe.nnodes, rdzv_endpoint=rdzv_endpoint,
                  **kwargs)


def runs(*, status: str | None = None, limit: int = 50, settings: Settings | None = None, name: str | None = None,
         tag: str | None = None) -> list[Run]:
    """Recent runs, newest first (`name`: of this name; `tag`: with tag `KEY` or `KEY=VALUE`)."""
    return RunStore(settings or Settings.from_env()).list(status=status, limit=limit, name=name, tag=tag)


def get_run(ref: str, *, settings: Settings | None = None) -> Run:
    """One run by id or unique id prefix, with its per-epoch metrics and artifacts."""
    return RunStore(settings or Settings.from_env()).get(ref)
