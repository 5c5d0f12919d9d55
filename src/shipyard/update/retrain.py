"""`shipyard retrain NAME`: a challenger from the champion, trained on the original data plus the
labelled production samples, warm-started from the champion's weights with the champion's recipe,
optimized, bundled and registered behind `candidate` with its lineage; then the offline gate
compares it with the champion on the recent holdout and the original validation split.

The newest 20% of labelled production samples (by prediction time) are never trained on: they are
the recent holdout every later gate compares on. The new version's reference profile is built from
held-out rows only (`held_out`): the recent holdout, the production rows the run's validation
split kept out of training, and, when those look like the original data, original rows both runs
held out, towards 2×500 rows so windows of 250 can be calibrated."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console

from shipyard.errors import NotFound, ShipyardError, UsageError
from shipyard.settings import Settings
from shipyard.update import gates
from shipyard.update.data import Labelled, labelled

if TYPE_CHECKING:
    from shipyard.data import Dataset
    from shipyard.optimizing.build import HeldOut
    from shipyard.registry import Registry


@dataclass
class RetrainResult:
    """What `retrain` made and why."""

    name: str
    champion: int
    version: int | None  # the registered challenger
    run_id: str | None
    alias: str
    samples: dict[str, Any]
    gate: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "champion": self.champion, "version": self.version, "run_id": self.run_id,
                "alias": self.alias, "samples": self.samples, "offline_gate": self.gate,
                "seconds": round(self.seconds, 1)}


def server_running(home: Path) -> bool:
    """True when a `shipyard serve` of this home runs on this host (its metrics folder exists and
    its process lives)."""
    run = home / "run"
    for d in run.glob("metrics-*") if run.is_dir() else []:
        try:
            os.kill(int(d.name.split("-", 1)[1]), 0)
            return True
        except (ValueError, ProcessLookupError, PermissionError):
            continue
    return False


def retrain(name: str, *, registry: Registry | None = None, settings: Settings | None = None,
            champion: str = "production", data: str | None = None, since: float | None = None,
            holdout: float = 0.2, min_labels: int = 20, alias: str = "candidate", tolerance: float = 0.01,
            progress: bool = True, console: Console | None = None, **overrides: Any) -> RetrainResult:
    """Retrain NAME's champion (the version behind `champion`) on its original data plus the
    labelled production samples since `since`; register the result behind `alias` and run the
    offline gate. `overrides` change the champion's recipe (epochs, lr, …)."""
    from shipyard.optimizing import optimize
    from shipyard.registry import Registry
    from shipyard.training import Recipe, train

    t0 = time.perf_counter()
    console = console or Console(stderr=True, highlight=False, soft_wrap=True)
    settings = settings or Settings.from_env()
    reg = registry or Registry(settings=settings)
    if not 0 < holdout < 1:
        raise UsageError(f"--holdout must be in (0, 1), got {holdout}")
    champ = reg.get(f"{name}@{champion}")
    bundle = reg.load(champ)
    weights = bundle.path / "weights.pt"
    if not weights.is_file():
        raise UsageError(f"{champ.ref} cannot be retrained: its bundle has no weights (weights.pt), e.g. a model "
                         "imported from elsewhere; train a new run instead")
    original, recipe, source = gates.champion_data(reg, name, champ, bundle, data)
    spec = bundle.preprocess
    if spec is None:
        raise UsageError(f"{champ.ref} has no preprocessing spec: its logged inputs cannot be turned back "
                         "into training data")
    prod = labelled(reg.engine, name, spec, since=since, regression=bundle.regression)
    if len(prod) < min_labels:
        raise UsageError(f"only {len(prod)} labelled production samples with kept inputs ({prod.labels_total} "
                         f"labels in all) for {name}; need at least {min_labels} (send feedback, or lower "
                         "--min-labels)")
    train_part, recent = prod.split(holdout)
    console.print(f"retraining {champ.ref}: {len(original.y):,} original samples + {len(train_part):,} labelled "
                  f"production samples; {len(recent):,} newest held out")

    home = settings.home
    work = home / "retrain" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "x_train": np.concatenate([original.x, train_part.x.astype(original.x.dtype)]),
        "y_train": np.concatenate([original.y, train_part.y]),
        "classes": np.array(original.classes),
        "task": np.array(original.task),  # a regression's float targets stay targets
    }
    if original.x_test is not None and original.y_test is not None:
        arrays["x_test"], arrays["y_test"] = original.x_test, original.y_test
    if spec.columns is not None:  # a table stays one: the same named columns for its clients
        from shipyard.data.sources import table_description

        arrays["table"] = table_description(spec)
    np.savez(work / "data.npz", allow_pickle=False, **arrays)  # numeric arrays only: never pickle

    busy = server_running(home)
    if busy:  # serving latency first: one thread at low priority
        overrides.setdefault("threads", 1)
        with contextlib.suppress(OSError):
            os.nice(10)
        # and one process, whatever world size the champion trained with
        overrides.setdefault("nproc", 1)
        overrides.setdefault("nnodes", 1)
        console.print("a server runs on this host: training with 1 thread at low priority")
    parent_run = champ.run_id
    train_args = {k: v for k, v in overrides.items() if v is not None}
    train_args.setdefault("nnodes", 1)  # a retrain runs on this host: other nodes cannot be summoned
    data_arg = f"npz:{work / 'data.npz'}"
    if parent_run and _run_exists(settings, parent_run):  # replay the champion's run with the new data
        run = train(like=parent_run, data=data_arg, init_weights=weights, settings=settings,
                    progress=progress, **train_args)
    else:  # its run lives in another registry: the recipe the bundle records
        run = train(Recipe.from_dict({**recipe, "data": data_arg}), init_weights=weights,
                    settings=settings, progress=progress, **train_args)
    window_start, window_end = prod.window
    new_lineage = {"parent_version": champ.version, "parent_bundle": champ.bundle_sha256,
                   "production_window": {"since": window_start, "until": window_end,
                                         "trained_on": len(train_part), "held_out": len(recent),
                                         "holdout_since": recent.window[0]},
                   "original_data": source}
    tried = tuple(v.name for v in bundle.meta.variants) or ("fp32",)
    # monitored against the production world it was retrained for, not the one it left: held-out
    # rows only (never trained on, so its confidences are honest), production ones first
    held = held_out(recent, train_part, original, recipe, arrays["y_train"], run.recipe)
    new_bundle = optimize(run, name=name, output=work / f"{name}.tar.gz", settings=settings,
                          lineage=new_lineage, reference_data=held, variants=tried)
    samples = {"original": int(len(original.y)), "production_train": len(train_part),
               "recent_holdout": len(recent), "labels_total": prod.labels_total,
               "window": {"since": window_start, "until": window_end},
               "reference": new_bundle.meta.reference.held_out_rows if new_bundle.meta.reference else None}
    mv = reg.register(new_bundle.path if new_bundle.path.is_dir() else work / f"{name}.tar.gz", name,
                      description=f"retrained from v{champ.version} on {len(train_part)} production samples",
                      tags={"parent_version": str(champ.version), "run": run.id}, reason="retrain")
    verdict = gates.offline(reg.load(champ), reg.load(mv), recent, original, recipe, tolerance=tolerance)
    reg.record(name, "gate", version=mv.version, reason=verdict["reason"],
               details={"gate": "offline", **verdict})
    reg.set_alias(name, alias, mv.version, reason=f"retrained from v{champ.version}; offline gate "
                                                   f"{'passed' if verdict['passed'] else 'FAILED'}")
    console.print(f"registered {mv.ref} behind {alias!r}; offline gate "
                  + ("[green]passed[/]" if verdict["passed"] else f"[red]failed[/]: {verdict['reason']}"))
    return RetrainResult(name, champ.version, mv.version, run.id, alias, samples, verdict,
                         time.perf_counter() - t0)


def _val_indices(y: np.ndarray, has_test: bool, recipe: dict[str, Any]) -> np.ndarray:
    """The rows of data `y` a run with `recipe` validated on (never trained on): `Dataset.split`'s
    (a regression's targets stratified by their quantile bins, as there)."""
    from shipyard.data.dataset import VAL_FRACTION_DEFAULT, VAL_FRACTION_WITH_TEST, quantile_bins, stratified_split

    fraction = recipe.get("val_fraction")
    if fraction is None:
        fraction = VAL_FRACTION_WITH_TEST if has_test else VAL_FRACTION_DEFAULT
    strata = quantile_bins(y) if y.dtype.kind == "f" else y
    return stratified_split(strata, float(fraction), int(recipe.get("split_seed", 0) or 0))[1]


def held_out(recent: Labelled, train_part: Labelled, original: Dataset, champion_recipe: dict[str, Any],
             y_train: np.ndarray, run_recipe: dict[str, Any]) -> HeldOut:
    """The rows the new version's reference may describe, none of them trained on by the retrain
    run: the recent holdout, then the production rows of the run's validation split; to top up
    with, the original rows of that split, those the champion held out too first (the warm start
    carries what the champion learnt from the rest)."""
    from shipyard.optimizing.build import HeldOut

    n_orig = len(original.y)
    val = _val_indices(y_train, original.x_test is not None, run_recipe)
    prod = val[val >= n_orig] - n_orig
    orig = val[val < n_orig]
    champion_val = np.zeros(n_orig, bool)
    champion_val[_val_indices(original.y, original.x_test is not None, champion_recipe)] = True
    rng = np.random.default_rng(0)
    order = np.concatenate([rng.permutation(orig[champion_val[orig]]), rng.permutation(orig[~champion_val[orig]])])
    return HeldOut(np.concatenate([recent.x, train_part.x[prod].astype(recent.x.dtype)]),
                   np.concatenate([recent.y, train_part.y[prod]]), len(recent),
                   original.x[order], original.y[order])


def _run_exists(settings: Settings, run_id: str) -> bool:
    from shipyard.training import get_run

    try:
        get_run(run_id, settings=settings)
        return True
    except (NotFound, ShipyardError):
        return False


__all__ = ["Labelled", "RetrainResult", "held_out", "retrain", "server_running"]
