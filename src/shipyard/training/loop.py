"""The training loop. Kept as lean as a hand-written loop (tensor-indexed batches from a fresh
`randperm`, metrics accumulated on the device, one `.item()` per epoch) so tracking costs next
to nothing; see benchmarks/train_bench.py."""

from __future__ import annotations

import contextlib
import io
import math
import pickle
import platform
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from torch import nn

from shipyard.data import canonical
from shipyard.errors import RunInterrupted, ShipyardError, UsageError
from shipyard.settings import Settings
from shipyard.training.objective import Objective, make_objective
from shipyard.training.recipe import Recipe
from shipyard.training.snapshot import State, checkpoint_bytes, restore, resume_path, snapshot, to_bytes, write_atomic
from shipyard.training.tracking import Run, RunStore, utcnow
from shipyard.training.world import World
from shipyard.training.zoo import build_model, canonical_model, check_fits

PROGRESS_EVERY = 25  # batches between progress-bar updates


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("shipyard", "torch", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def make_optimizer(recipe: Recipe, params: Any) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay)
    return torch.optim.RMSprop(params, lr=recipe.lr, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay)


def make_schedule(recipe: Recipe, opt: torch.optim.Optimizer) -> Any:
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs)
    if recipe.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=recipe.schedule_step,
                                               gamma=recipe.schedule_gamma)
    return None


@dataclass
class EpochStart:
    """What an observer sees as an epoch begins: the model and optimizer about to take the epoch's
    first step, this process's shard of the epoch's permutation and its first batch."""

    epoch: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    shard: torch.Tensor
    xb: torch.Tensor
    yb: torch.Tensor


class Observer(Protocol):
    """Watches a `fit` from outside its batch loop (called once per epoch and at the end); the
    distributed tests' `distributed._Probe` is one."""

    def epoch_start(self, start: EpochStart) -> None: ...

    def end(self, model: nn.Module) -> None: ...


@dataclass
class _Job:
    """One `fit` call's working set: built once by `_prepare` and `_start_run`, then read by the
    epoch steps."""

    recipe: Recipe
    world: World
    console: Console
    progress: bool
    store: RunStore | None  # the tracker's; None on the other processes
    threads: int
    device: torch.device
    source: str
    fingerprint: str
    preprocess: dict[str, Any]
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    val_shard: tuple[torch.Tensor, torch.Tensor]  # this process's part of the validation split
    test: tuple[torch.Tensor, torch.Tensor] | None
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    gen: torch.Generator
    loss_fn: nn.Module
    objective: Objective
    state: State
    bar: Progress
    n_used: int  # training samples used per epoch: every process gets an equal shard
    bs: int  # batch size per process; the global batch is recipe.batch_size
    batches: int  # per process and epoch
    net: nn.Module | None = None  # the model, or its DistributedDataParallel wrapper
    run_id: str = ""
    run_dir: Path = Path(".")
    writer: Any = None  # the tracker's TensorBoard writer
    task: TaskID | None = None  # the progress bar's

    @property
    def stop(self) -> threading.Event | None:
        return self.world.stop if self.world.distributed else None


def fit(recipe: Recipe | None, settings: Settings, *, resume: str | None = None,
        parent_run_id: str | None = None, expect_fingerprint: str | None = None,
        console: Console | None = None, progress: bool = True, init_weights: str | Path | None = None,
        world: World | None = None, observer: Observer | None = None, name: str | None = None,
        tags: dict[str, str] | None = None) -> Run:
    """Train per `recipe`, tracking everything; return the stored run. With `resume`, continue
    that interrupted run from its last completed epoch with the same recipe. `init_weights`: a
    state dict to start from instead of random weights (warm-start retraining). `name`, `tags`: a new run's.

    In a data-parallel job (`world`, set up by `shipyard.training.distributed`) every process runs
    this: the tracker's recipe, run and starting state are broadcast to the others (which may pass
    `recipe=None`), each process trains on its own shard of every epoch's permutation with
    gradients all-reduced by DistributedDataParallel, so `batch_size` stays the global batch,
    and only the tracker writes anything. `observer`: called at each epoch's start and at the end.

    The steps: `_prepare` (recipe, device, data, model), `_start_run` (the run and the starting
    state), then per epoch `_epoch` (train, validate) and `_end_epoch` (best checkpoint, resume
    snapshot, early stop), and `_finish` (test accuracy, status); `_ended_badly` records a failure
    or an interrupt."""
    world = world or World()
    job = _prepare(recipe, settings, world, console=console, progress=progress,
                   expect_fingerprint=expect_fingerprint)
    _start_run(job, resume=resume, parent_run_id=parent_run_id, init_weights=init_weights, name=name, tags=tags)
    try:
        _open_run(job)
        with job.bar:
            job.task = job.bar.add_task("train", total=job.batches, epoch="", loss="…", acc="…")
            while job.state.epoch < job.recipe.epochs:
                epoch = job.state.epoch + 1
                if _end_epoch(job, epoch, _epoch(job, epoch, observer)):
                    break
        if observer is not None:
            observer.end(job.model)
        _finish(job)
    except BaseException as e:
        if (instead := _ended_badly(job, e)) is not None:
            raise instead from None
        raise
    finally:
        _close_run(job)
    return world.share(job.store.get(job.run_id) if job.store is not None else None)


def _prepare(recipe: Recipe | None, settings: Settings, world: World, *, console: Console | None,
             progress: bool, expect_fingerprint: str | None) -> _Job:
    """The recipe every process agrees on, its device and threads, the data as tensors on the
    device, and a fresh model, optimizer and schedule seeded from the recipe."""
    tracks = world.tracks
    console = console or Console(stderr=True, highlight=False, soft_wrap=True)
    if not tracks:
        console, progress = Console(quiet=True), False
    store = RunStore(settings) if tracks else None
    if tracks:
        if recipe is None:
            raise UsageError("fit() needs a recipe")
        # the stored recipe says exactly what ran: resolved threads, absolute data and model-file paths
        recipe = recipe.with_overrides(threads=recipe.threads or settings.threads, data=canonical(recipe.data),
                                       model=canonical_model(recipe.model))
    recipe = world.share(recipe)
    assert recipe is not None and recipe.threads is not None
    if recipe.nproc * recipe.nnodes != world.size:
        raise UsageError(f"the recipe asks for {recipe.nproc} process(es) on each of {recipe.nnodes} "
                         f"node(s), but this job has {world.size} processes")
    threads = max(1, recipe.threads // recipe.nproc)  # the node's threads, shared by its processes
    torch.set_num_threads(threads)
    device = resolve_device(recipe.device)
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    if world.distributed and (device.type == "cuda") != (world.backend == "nccl"):
        raise UsageError(f"this process group uses {world.backend} but the recipe trains on {device}: "
                         "pass the same --device on every node")

    ds = recipe.load_data()
    splits = ds.split(recipe.val_fraction, recipe.split_seed)
    spec = ds.preprocess.fitted(splits.x_train)
    if expect_fingerprint is not None and expect_fingerprint != ds.fingerprint:
        console.print(f"[yellow]warning:[/] the data behind {ds.source} changed since the run "
                      f"being replayed (fingerprint {expect_fingerprint[:12]} → {ds.fingerprint[:12]})")

    if tracks:
        what = (f"regression of {ds.classes[0]!r}, {recipe.loss or 'mse'} loss on standardized targets, MAE and "
                "RMSE reported" if ds.regression else f"classification, {len(ds.classes)} classes")
        guessed = ds.preprocess.columns is not None and not recipe.task
        if ds.preprocess.columns is not None or ds.regression:  # a table's task is a choice: say which
            console.print(f"task: {what}" + (" (guessed from the labels; --task to choose)" if guessed else ""))

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(spec.apply(x)).to(device), torch.from_numpy(y).to(device)

    xtr, ytr = tensors(splits.x_train, splits.y_train)
    xva, yva = tensors(splits.x_val, splits.y_val)
    test = (tensors(splits.x_test, splits.y_test)
            if splits.x_test is not None and splits.y_test is not None else None)

    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, input_shape=spec.raw_shape, num_features=spec.num_features,
                        num_classes=len(ds.classes), args=recipe.model_args, regression=ds.regression)
    if ds.regression:
        model.fit(splits.y_train)  # type: ignore[operator]  # TargetScale: the targets' mean and std
    model = model.to(device)
    objective = make_objective(model, regression=ds.regression, loss=recipe.loss,
                               label_smoothing=recipe.label_smoothing)
    # one small batch through it now, before any run exists: a misfit is one line, not a failed run
    check_fits(model, (xva if len(xva) else xtr)[:2], len(ds.classes), recipe.model, input_shape=spec.raw_shape)
    opt = make_optimizer(recipe, model.parameters())
    size = world.size
    n_used = len(ytr) - len(ytr) % size  # the few left over sit this epoch out
    bs = recipe.batch_size // size
    bar = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn(f"loss {{task.fields[loss]}}  {objective.metric[:3]} {{task.fields[acc]}}"),
                   TimeRemainingColumn(),
                   console=console, transient=True, disable=not progress)
    return _Job(recipe=recipe, world=world, console=console, progress=progress, store=store, threads=threads,
                device=device, source=ds.source, fingerprint=ds.fingerprint, preprocess=spec.to_dict(),
                train=(xtr, ytr), val=(xva, yva), test=test,
                val_shard=(xva, yva) if not world.distributed else (xva[world.rank :: size], yva[world.rank :: size]),
                model=model, opt=opt, sched=make_schedule(recipe, opt),
                gen=torch.Generator().manual_seed(recipe.seed),
                loss_fn=objective.loss_fn, objective=objective,
                state=State(best_val_accuracy=-math.inf) if ds.regression else State(), bar=bar,
                n_used=n_used, bs=bs, batches=(n_used // size + bs - 1) // bs)


def _start_run(job: _Job, *, resume: str | None, parent_run_id: str | None,
               init_weights: str | Path | None, name: str | None = None, tags: dict[str, str] | None = None) -> None:
    """The tracker creates the run (or reopens `resume`) and sets up the starting state (a resume
    snapshot, warm-start weights); the others receive both (the "plan") and stop with the
    tracker's message if it failed. Then the model is wrapped for data-parallel training."""
    recipe, world, model, device, store = job.recipe, job.world, job.model, job.device, job.store
    plan: Any = None
    failure: BaseException | None = None
    if store is not None:
        try:
            init_bytes = snap_bytes = None
            if init_weights is not None and resume is None:
                try:
                    init_bytes = Path(init_weights).read_bytes()
                    model.load_state_dict(torch.load(io.BytesIO(init_bytes), map_location=device,
                                                     weights_only=True))
                except (RuntimeError, OSError, KeyError, pickle.UnpicklingError) as e:
                    raise UsageError(f"cannot start from the weights in {init_weights}: they do not fit a "
                                     f"{recipe.model} with these arguments ({str(e).splitlines()[0]})") from None
                job.console.print(f"warm start from {init_weights}")
            if resume is not None:
                run_id = resume
                snap_bytes = resume_path(store.get(run_id)).read_bytes()
                restore(io.BytesIO(snap_bytes), model, job.opt, job.sched, job.gen, job.state)
                store.reopen(run_id, recipe.to_dict())
                job.console.print(f"[bold]resuming run {run_id}[/] after epoch {job.state.epoch}")
            else:
                run_id = store.create(recipe.to_dict(), job.source, parent_run_id=parent_run_id, name=name, tags=tags)
            plan = {"run_id": run_id, "fingerprint": job.fingerprint,
                    "snapshot": snap_bytes if world.distributed else None,
                    "init": init_bytes if world.distributed else None}
        except BaseException as e:
            failure = e
            plan = {"error": str(e), "exit_code": getattr(e, "exit_code", 1),
                    "interrupted": isinstance(e, KeyboardInterrupt)}
    plan = world.share(plan)
    if failure is not None:
        raise failure
    if "error" in plan:  # the others stop with the tracker's message (exceptions do not all pickle)
        if plan["interrupted"]:
            raise KeyboardInterrupt
        raise (UsageError if plan["exit_code"] == 2 else ShipyardError)(plan["error"])
    job.run_id = plan["run_id"]
    if store is None:
        if plan["fingerprint"] != job.fingerprint:
            raise ShipyardError(f"the data behind {job.source} differs between the nodes (fingerprint "
                                f"{job.fingerprint[:12]} here, {plan['fingerprint'][:12]} on node 0)")
        if plan["snapshot"] is not None:
            restore(io.BytesIO(plan["snapshot"]), model, job.opt, job.sched, job.gen, job.state)
        elif plan["init"] is not None:
            model.load_state_dict(torch.load(io.BytesIO(plan["init"]), map_location=device, weights_only=True))
    job.net = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        job.net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _open_run(job: _Job) -> None:
    """Record where and how the run trains, say so, and open the tracker's TensorBoard writer."""
    recipe, world, device, threads, store = job.recipe, job.world, job.device, job.threads, job.store
    if store is not None:
        store.update(job.run_id, data_fingerprint=job.fingerprint, preprocess=job.preprocess,
                     library_versions=library_versions(), threads=threads,
                     device=str(device) if not world.distributed
                     else f"{device.type} ×{world.size} ({world.backend})")
        job.run_dir = Path(store.get(job.run_id).run_dir or "")
    where = (f"{threads} thread{'s' if threads > 1 else ''} on {device}" if not world.distributed else
             f"{world.size} processes ({recipe.nproc} × {recipe.nnodes} node{'s' if recipe.nnodes > 1 else ''}, "
             f"{world.backend}), {threads} thread{'s' if threads > 1 else ''} each on {device.type}")
    job.console.print(
        f"run [bold]{job.run_id}[/]: {recipe.model} on {job.source} "
        f"({len(job.train[1])} train / {len(job.val[1])} val"
        + (f" / {len(job.test[1])} test" if job.test else "")
        + f"), {recipe.epochs} epochs, batch {recipe.batch_size}, {recipe.optimizer} lr {recipe.lr}, "
        + where
    )
    if store is not None:
        from torch.utils.tensorboard import SummaryWriter

        job.writer = SummaryWriter(log_dir=str(job.run_dir / "tensorboard"))


def _epoch(job: _Job, epoch: int, observer: Observer | None) -> dict[str, float]:
    """Train one epoch and validate: the epoch's metrics, the same on every process."""
    recipe, task = job.recipe, job.task
    assert task is not None
    job.bar.reset(task, total=job.batches, epoch=f"{epoch}/{recipe.epochs}", loss="…", acc="…")
    t0 = time.perf_counter()
    loss_sum, correct = _train_pass(job, epoch, observer)
    lr = job.opt.param_groups[0]["lr"]
    if job.sched is not None:
        job.sched.step()
    n_used, (xva, yva), model, objective = job.n_used, job.val, job.model, job.objective
    if job.world.size == 1:
        train_loss, train_score = loss_sum.item() / n_used, correct.item() / n_used
        val = objective.named(objective.sums(model, xva, yva), len(yva))
    else:  # every process ends up with the same numbers, so they all decide alike
        sums = job.world.all_sum(torch.cat([torch.stack([loss_sum.double(), correct.double()]),
                                            objective.sums(model, *job.val_shard)]))
        train_loss, train_score = sums[0].item() / n_used, sums[1].item() / n_used
        val = objective.named(sums[2:], len(yva))
    dt = time.perf_counter() - t0
    if not (math.isfinite(train_loss) and math.isfinite(val["loss"])):
        raise ShipyardError(f"the loss became {train_loss if not math.isfinite(train_loss) else val['loss']} "
                            f"in epoch {epoch}; training diverged (try a lower --lr)")
    return {"train_loss": train_loss, f"train_{objective.metric}": train_score,
            **{f"val_{k}": v for k, v in val.items()}, "lr": lr, "epoch_time_s": dt, "samples_per_s": n_used / dt}


def _train_pass(job: _Job, epoch: int, observer: Observer | None) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's shard of a fresh permutation, batch by batch: (summed loss, correct count),
    kept on the device. The loop reads locals only, like a hand-written one."""
    world, recipe, device = job.world, job.recipe, job.device
    net, model, opt, loss_fn, score = job.net, job.model, job.opt, job.loss_fn, job.objective.batch_score
    assert net is not None
    xtr, ytr = job.train
    size, bs, batches, stop = world.size, job.bs, job.batches, job.stop
    progress, bar, task, shard_n = job.progress, job.bar, job.task, job.n_used // world.size
    assert task is not None
    net.train()
    perm = torch.randperm(len(ytr), generator=job.gen).to(device)  # the same on every process
    shard = perm if size == 1 else perm[world.rank : job.n_used : size]
    if size > 1:  # dropout differs between processes, and a resume replays it exactly
        torch.manual_seed(recipe.seed + 1_000_003 * epoch + world.rank)
    if observer is not None:
        observer.epoch_start(EpochStart(epoch, model, opt, loss_fn, shard, xtr[shard[:bs]], ytr[shard[:bs]]))
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.float64 if job.objective.regression else torch.long, device=device)
    for b in range(batches):
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        idx = shard[b * bs : (b + 1) * bs]
        xb, yb = xtr[idx], ytr[idx]
        out = net(xb)
        loss = loss_fn(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum.add_(loss.detach(), alpha=len(idx))
        correct += score(out.detach(), yb)
        if progress and b % PROGRESS_EVERY == PROGRESS_EVERY - 1:
            bar.update(task, advance=PROGRESS_EVERY, loss=f"{loss.item():.4f}",
                       acc=job.objective.shown(correct.item() / min(shard_n, (b + 1) * bs)))
    return loss_sum, correct


def _end_epoch(job: _Job, epoch: int, metrics: dict[str, float]) -> bool:
    """Keep the epoch: the best validation accuracy so far, and on the tracker the metrics, the
    best checkpoint, the resume snapshot and TensorBoard. True when early stopping ends the run."""
    state, recipe, store, objective = job.state, job.recipe, job.store, job.objective
    metric = objective.metric
    score = metrics[f"val_{metric}"] if not objective.regression else -metrics["val_mae"]  # higher is better
    improved = score > state.best_val_accuracy
    if improved:
        state.best_val_accuracy, state.best_epoch, state.bad_epochs = score, epoch, 0
    else:
        state.bad_epochs += 1
    state.epoch = epoch
    if store is not None:
        assert job.writer is not None
        # metrics, best checkpoint and progress commit together; the resume snapshot
        # follows, so an interrupt in between only makes a resume redo this epoch
        store.log_epoch(job.run_id, epoch, metrics,
                        {"checkpoint": to_bytes(job.model.state_dict())} if improved else None,
                        epochs_run=epoch, best_epoch=state.best_epoch,
                        best_val_accuracy=state.best_val_accuracy if not objective.regression else None)
        write_atomic(resume_path(job.run_dir), to_bytes(snapshot(job.model, job.opt, job.sched, job.gen, state)))
        for k, v in metrics.items():
            job.writer.add_scalar(_tb_tag(k), v, epoch)
        job.writer.flush()
    dt = metrics["epoch_time_s"]
    job.console.print(
        f"epoch {epoch:>3}/{recipe.epochs}  loss {metrics['train_loss']:.4f}  {metric[:3]} "
        f"{objective.shown(metrics[f'train_{metric}'])}  val_loss {metrics['val_loss']:.4f}  val_{metric[:3]} "
        f"{objective.shown(metrics[f'val_{metric}'])}{' *' if improved else '  '}  "
        f"{dt:.1f}s  {job.n_used / dt:,.0f} samples/s", highlight=False)
    if recipe.patience is not None and state.bad_epochs >= recipe.patience:
        job.console.print(f"early stop: no val_{metric} gain in {recipe.patience} epochs")
        return True
    return False


def _finish(job: _Job) -> None:
    """The best checkpoint's test accuracy (when the data has a test split); the run is finished."""
    store = job.store
    if store is None:
        return
    test_acc = None
    if job.test is not None:
        assert job.writer is not None
        job.model.load_state_dict(torch.load(io.BytesIO(checkpoint_bytes(store, job.run_id)), weights_only=True))
        test = job.objective.evaluate(job.model, job.test[0], job.test[1])
        metric, step = job.objective.metric, job.state.best_epoch or 0
        job.writer.add_scalar(f"test/{metric}", test[metric], step)
        if job.objective.regression:  # kept with the run's metrics (no column of its own)
            store.log_metrics(job.run_id, step, {"test_mae": test["mae"], "test_rmse": test["rmse"]})
        else:
            test_acc = test[metric]
    store.update(job.run_id, status="finished", ended_at=utcnow(), test_accuracy=test_acc)


def _ended_badly(job: _Job, e: BaseException) -> RunInterrupted | None:
    """Record why the run stopped: `interrupted` (returned: the RunInterrupted to raise instead,
    which says how to resume) or `failed` (None: `e` goes on)."""
    store, state, run_id, stop = job.store, job.state, job.run_id, job.stop
    if store is None:
        return None
    if isinstance(e, KeyboardInterrupt) or (stop is not None and stop.is_set()):
        # (a peer stopping first can fail a collective here before the flag is checked)
        store.update(run_id, status="interrupted", ended_at=utcnow(),
                     error=f"interrupted by the user after epoch {state.epoch}")
        if state.epoch == 0:
            return RunInterrupted(run_id, f"run {run_id} interrupted before its first epoch ended; "
                                          "nothing to keep or resume")
        return RunInterrupted(
            run_id,
            f"run {run_id} interrupted after epoch {state.epoch}; its best checkpoint is kept. "
            f"Continue it with: shipyard train --resume {run_id}"
        )
    store.update(run_id, status="failed", ended_at=utcnow(), error=f"{type(e).__name__}: {e}")
    return None


def _close_run(job: _Job) -> None:
    if job.writer is not None:
        job.writer.close()
        if job.store is not None:
            job.store.put_tree(job.run_id, "tensorboard", Path(job.writer.log_dir))


def _tb_tag(key: str) -> str:
    for prefix in ("train_", "val_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix):]}"
    return f"perf/{key}" if key in ("epoch_time_s", "samples_per_s") else f"opt/{key}"
