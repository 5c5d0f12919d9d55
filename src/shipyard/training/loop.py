"""The training loop. Kept as lean as a hand-written loop (tensor-indexed batches from a fresh
`randperm`, metrics accumulated on the device, one `.item()` per epoch) so tracking costs next
to nothing; see benchmarks/train_bench.py."""

from __future__ import annotations

import contextlib
import io
import math
import os
import pickle
import platform
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from shipyard.data import canonical, load
from shipyard.errors import RunInterrupted, ShipyardError, UsageError
from shipyard.settings import Settings
from shipyard.training.recipe import Recipe
from shipyard.training.tracking import Run, RunStore, utcnow
from shipyard.training.zoo import build_model

EVAL_BATCH = 4096
PROGRESS_EVERY = 25  # batches between progress-bar updates


@dataclass
class _State:
    epoch: int = 0  # epochs completed
    best_val_accuracy: float = -1.0
    best_epoch: int | None = None
    bad_epochs: int = 0


@dataclass
class World:
    """Where this process stands in a data-parallel job. The default is a lone process, which
    trains exactly as before; `shipyard.training.distributed` builds the others after
    `init_process_group`. `rank` is the logical rank (`node_rank * nproc + local_rank`), so rank 0
    is local rank 0 of node 0 whatever order the rendezvous admitted the nodes in; collectives
    address processes by their process-group rank, hence `tracker_rank`."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    tracker_rank: int = 0  # process-group rank of logical rank 0: it alone tracks
    backend: str = ""
    #: set by the worker's SIGINT handler; the loop turns it into KeyboardInterrupt between batches,
    #: so an interrupt never lands in the middle of a collective or of the tracker's bookkeeping
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def tracks(self) -> bool:
        """Only this process writes the run record, metrics, checkpoints and TensorBoard files."""
        return self.rank == 0

    def share(self, obj: Any) -> Any:
        """The tracker's `obj`, on every process (what the others pass is ignored)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=self.tracker_rank)
        return box[0]

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over every process (float64, so counts and sums stay exact)."""
        if not self.distributed:
            return t
        import torch.distributed as dist

        dist.all_reduce(t)
        return t


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


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module) -> tuple[float, float]:
    """(mean loss, accuracy) over a whole split, in large batches."""
    sums = _eval_sums(model, x, y, loss_fn)
    return sums[0].item() / len(x), sums[1].item() / len(x)


@torch.inference_mode()
def _eval_sums(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module) -> torch.Tensor:
    """[summed loss, correct count] as float64, so shards' sums add up exactly."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for i in range(0, len(x), EVAL_BATCH):
        out = model(x[i : i + EVAL_BATCH])
        yb = y[i : i + EVAL_BATCH]
        loss_sum += loss_fn(out, yb) * len(yb)
        correct += (out.argmax(1) == yb).sum()
    return torch.stack([loss_sum.double(), correct.double()])


def fit(recipe: Recipe | None, settings: Settings, *, resume: str | None = None,
        parent_run_id: str | None = None, expect_fingerprint: str | None = None,
        console: Console | None = None, progress: bool = True, init_weights: str | Path | None = None,
        world: World | None = None, probe: Any = None) -> Run:
    """Train per `recipe`, tracking everything; return the stored run. With `resume`, continue
    that interrupted run from its last completed epoch with the same recipe. `init_weights`: a
    state dict to start from instead of random weights (warm-start retraining).

    In a data-parallel job (`world`, set up by `shipyard.training.distributed`) every process runs
    this: the tracker's recipe, run and starting state are broadcast to the others (which may pass
    `recipe=None`), each process trains on its own shard of every epoch's permutation with
    gradients all-reduced by DistributedDataParallel, so `batch_size` stays the global batch,
    and only the tracker writes anything. `probe`: test hooks (see `distributed._Probe`)."""
    world = world or World()
    tracks = world.tracks
    console = console or Console(stderr=True, highlight=False, soft_wrap=True)
    if not tracks:
        console, progress = Console(quiet=True), False
    store = RunStore(settings) if tracks else None
    if tracks:
        if recipe is None:
            raise UsageError("fit() needs a recipe")
        # the stored recipe says exactly what ran: resolved threads, absolute data paths
        recipe = recipe.with_overrides(threads=recipe.threads or settings.threads, data=canonical(recipe.data))
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

    ds = load(recipe.data, label_column=recipe.label_column, standardize=recipe.standardize)  # type: ignore[arg-type]
    splits = ds.split(recipe.val_fraction, recipe.split_seed)
    spec = ds.preprocess.fitted(splits.x_train)
    if expect_fingerprint is not None and expect_fingerprint != ds.fingerprint:
        console.print(f"[yellow]warning:[/] the data behind {ds.source} changed since the run "
                      f"being replayed (fingerprint {expect_fingerprint[:12]} → {ds.fingerprint[:12]})")

    def tensors(x: np.ndarray | None, y: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        if x is None or y is None:
            return None
        return torch.from_numpy(spec.apply(x)).to(device), torch.from_numpy(y).to(device)

    xtr, ytr = tensors(splits.x_train, splits.y_train)  # type: ignore[misc]
    xva, yva = tensors(splits.x_val, splits.y_val)  # type: ignore[misc]
    test = tensors(splits.x_test, splits.y_test)

    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, input_shape=spec.raw_shape, num_classes=len(ds.classes),
                        args=recipe.model_args).to(device)
    opt = make_optimizer(recipe, model.parameters())
    sched = make_schedule(recipe, opt)
    gen = torch.Generator().manual_seed(recipe.seed)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    state = _State()

    # the tracker sets up the starting state and the run; the others receive both (the "plan")
    plan: Any = None
    failure: BaseException | None = None
    if tracks:
        assert store is not None
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
                console.print(f"warm start from {init_weights}")
            if resume is not None:
                run_id = resume
                snap_bytes = resume_path(store.get(run_id)).read_bytes()
                _restore(io.BytesIO(snap_bytes), model, opt, sched, gen, state)
                store.reopen(run_id, recipe.to_dict())
                console.print(f"[bold]resuming run {run_id}[/] after epoch {state.epoch}")
            else:
                run_id = store.create(recipe.to_dict(), ds.source, parent_run_id=parent_run_id)
            plan = {"run_id": run_id, "fingerprint": ds.fingerprint,
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
    run_id = plan["run_id"]
    if not tracks:
        if plan["fingerprint"] != ds.fingerprint:
            raise ShipyardError(f"the data behind {ds.source} differs between the nodes (fingerprint "
                                f"{ds.fingerprint[:12]} here, {plan['fingerprint'][:12]} on node 0)")
        if plan["snapshot"] is not None:
            _restore(io.BytesIO(plan["snapshot"]), model, opt, sched, gen, state)
        elif plan["init"] is not None:
            model.load_state_dict(torch.load(io.BytesIO(plan["init"]), map_location=device, weights_only=True))
    net: nn.Module = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    stop = world.stop if world.distributed else None
    val_shard = (xva, yva) if not world.distributed else (xva[world.rank :: world.size], yva[world.rank :: world.size])

    n = len(ytr)
    size = world.size
    n_used = n - n % size  # every process gets an equal shard; the few left over sit this epoch out
    bs = recipe.batch_size // size  # per process; the global batch is recipe.batch_size
    shard_n = n_used // size
    batches = (shard_n + bs - 1) // bs
    bar = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}"), TimeRemainingColumn(),
                   console=console, transient=True, disable=not progress)
    writer = None
    try:
        run_dir = Path(".")
        if tracks:
            assert store is not None
            store.update(run_id, data_fingerprint=ds.fingerprint, preprocess=spec.to_dict(),
                         library_versions=library_versions(), threads=threads,
                         device=str(device) if not world.distributed
                         else f"{device.type} ×{size} ({world.backend})")
            run_dir = Path(store.get(run_id).run_dir or "")
        where = (f"{threads} thread{'s' if threads > 1 else ''} on {device}" if not world.distributed else
                 f"{size} processes ({recipe.nproc} × {recipe.nnodes} node{'s' if recipe.nnodes > 1 else ''}, "
                 f"{world.backend}), {threads} thread{'s' if threads > 1 else ''} each on {device.type}")
        console.print(
            f"run [bold]{run_id}[/]: {recipe.model} on {ds.source} "
            f"({len(ytr)} train / {len(yva)} val"
            + (f" / {len(test[1])} test" if test else "")
            + f"), {recipe.epochs} epochs, batch {recipe.batch_size}, {recipe.optimizer} lr {recipe.lr}, "
            + where
        )

        if tracks:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        with bar:
            task = bar.add_task("train", total=batches, epoch="", loss="…", acc="…")
            while state.epoch < recipe.epochs:
                epoch = state.epoch + 1
                bar.reset(task, total=batches, epoch=f"{epoch}/{recipe.epochs}", loss="…", acc="…")
                t0 = time.perf_counter()
                net.train()
                perm = torch.randperm(n, generator=gen).to(device)  # the same on every process
                shard = perm if size == 1 else perm[world.rank : n_used : size]
                if size > 1:  # dropout differs between processes, and a resume replays it exactly
                    torch.manual_seed(recipe.seed + 1_000_003 * epoch + world.rank)
                loss_sum = torch.zeros((), device=device)
                correct = torch.zeros((), dtype=torch.long, device=device)
                for b in range(batches):
                    if stop is not None and stop.is_set():
                        raise KeyboardInterrupt
                    idx = shard[b * bs : (b + 1) * bs]
                    xb, yb = xtr[idx], ytr[idx]
                    if probe is not None and b == 0:
                        probe.before_step(model, xb, yb, loss_fn, shard)
                    out = net(xb)
                    loss = loss_fn(out, yb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if probe is not None and b == 0:
                        probe.after_step(model)
                    loss_sum.add_(loss.detach(), alpha=len(idx))
                    correct += (out.argmax(1) == yb).sum()
                    if progress and b % PROGRESS_EVERY == PROGRESS_EVERY - 1:
                        bar.update(task, advance=PROGRESS_EVERY, loss=f"{loss.item():.4f}",
                                   acc=f"{correct.item() / min(shard_n, (b + 1) * bs):.2%}")
                lr = opt.param_groups[0]["lr"]
                if sched is not None:
                    sched.step()
                if size == 1:
                    train_loss, train_acc = loss_sum.item() / n, correct.item() / n
                    val_loss, val_acc = evaluate(model, xva, yva, loss_fn)
                else:  # every process ends up with the same numbers, so they all decide alike
                    sums = world.all_sum(torch.cat([torch.stack([loss_sum.double(), correct.double()]),
                                                    _eval_sums(model, *val_shard, loss_fn)]))
                    train_loss, train_acc = sums[0].item() / n_used, sums[1].item() / n_used
                    val_loss, val_acc = sums[2].item() / len(yva), sums[3].item() / len(yva)
                dt = time.perf_counter() - t0
                metrics = {"train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val_loss,
                           "val_accuracy": val_acc, "lr": lr, "epoch_time_s": dt, "samples_per_s": n_used / dt}
                if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                    raise ShipyardError(f"the loss became {train_loss if not math.isfinite(train_loss) else val_loss} "
                                        f"in epoch {epoch}; training diverged (try a lower --lr)")
                improved = val_acc > state.best_val_accuracy
                if improved:
                    state.best_val_accuracy, state.best_epoch, state.bad_epochs = val_acc, epoch, 0
                else:
                    state.bad_epochs += 1
                state.epoch = epoch
                if tracks:
                    assert store is not None and writer is not None
                    # metrics, best checkpoint and progress commit together; the resume snapshot
                    # follows, so an interrupt in between only makes a resume redo this epoch
                    store.log_epoch(run_id, epoch, metrics,
                                    {"checkpoint": _to_bytes(model.state_dict())} if improved else None,
                                    epochs_run=epoch, best_epoch=state.best_epoch,
                                    best_val_accuracy=state.best_val_accuracy)
                    _atomic_write(resume_path(run_dir), _to_bytes(_snapshot(model, opt, sched, gen, state)))
                    for k, v in metrics.items():
                        writer.add_scalar(_tb_tag(k), v, epoch)
                    writer.flush()
                console.print(
                    f"epoch {epoch:>3}/{recipe.epochs}  loss {train_loss:.4f}  acc {train_acc:.2%}  "
                    f"val_loss {val_loss:.4f}  val_acc {val_acc:.2%}{' *' if improved else '  '}  "
                    f"{dt:.1f}s  {n_used / dt:,.0f} samples/s", highlight=False)
                if recipe.patience is not None and state.bad_epochs >= recipe.patience:
                    console.print(f"early stop: no val_accuracy gain in {recipe.patience} epochs")
                    break
        if probe is not None:
            probe.end(model)
        test_acc = None
        if test is not None and tracks:
            assert store is not None and writer is not None
            model.load_state_dict(torch.load(io.BytesIO(_checkpoint_bytes(store, run_id)),
                                             weights_only=True))
            _, test_acc = evaluate(model, test[0], test[1], loss_fn)
            writer.add_scalar("test/accuracy", test_acc, state.best_epoch or 0)
        if store is not None:
            store.update(run_id, status="finished", ended_at=utcnow(), test_accuracy=test_acc)
    except BaseException as e:
        if store is None:
            raise
        if isinstance(e, KeyboardInterrupt) or (stop is not None and stop.is_set()):
            # (a peer stopping first can fail a collective here before the flag is checked)
            store.update(run_id, status="interrupted", ended_at=utcnow(),
                         error=f"interrupted by the user after epoch {state.epoch}")
            if state.epoch == 0:
                raise RunInterrupted(run_id, f"run {run_id} interrupted before its first epoch ended; "
                                             "nothing to keep or resume") from None
            raise RunInterrupted(
                run_id,
                f"run {run_id} interrupted after epoch {state.epoch}; its best checkpoint is kept. "
                f"Continue it with: shipyard train --resume {run_id}"
            ) from None
        store.update(run_id, status="failed", ended_at=utcnow(), error=f"{type(e).__name__}: {e}")
        raise
    finally:
        if writer is not None:
            writer.close()
            if store is not None:
                store.put_tree(run_id, "tensorboard", Path(writer.log_dir))
    return world.share(store.get(run_id) if store is not None else None)  # type: ignore[no-any-return]


def _tb_tag(key: str) -> str:
    for prefix in ("train_", "val_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix):]}"
    return f"perf/{key}" if key in ("epoch_time_s", "samples_per_s") else f"opt/{key}"


def _to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _checkpoint_bytes(store: RunStore, run_id: str) -> bytes:
    run = store.get(run_id)
    if "checkpoint" not in run.artifacts:
        raise ShipyardError(f"run {run_id} has no checkpoint")
    return store.artifacts.get_bytes(run.artifacts["checkpoint"]["sha256"])


def resume_path(run_or_dir: Run | Path) -> Path:
    """The resume snapshot: mutable state of the last completed epoch, kept in the run folder
    (not the immutable artifact store)."""
    folder = run_or_dir if isinstance(run_or_dir, Path) else Path(run_or_dir.run_dir or ".")
    return folder / "resume.pt"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _snapshot(model: nn.Module, opt: Any, sched: Any, gen: torch.Generator, state: _State) -> dict[str, Any]:
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


def _restore(path: Path | io.BytesIO, model: nn.Module, opt: Any, sched: Any, gen: torch.Generator,
             state: _State) -> None:
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
