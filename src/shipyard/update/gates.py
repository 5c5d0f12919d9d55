"""Gates a challenger must pass before it replaces the champion.

Offline: accuracy of both on the recent holdout (labelled production samples never trained on)
and on the original validation split; the challenger may not be worse on either by more than
`tolerance` (absolute accuracy). A regression's gate is its MAE (lower is better): the challenger's
may not exceed the champion's by more than `mae_tolerance` of it (2%, optimize's contract)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.errors import DataError, UsageError
from shipyard.update.data import Labelled

if TYPE_CHECKING:
    from shipyard.bundle import Bundle
    from shipyard.data import Dataset
    from shipyard.registry import ModelVersion, Registry


#: a regression challenger's MAE may exceed the champion's by this share of it
MAE_TOLERANCE = 0.02


def _quality(bundle: Bundle, x_raw: np.ndarray, y: np.ndarray) -> float | None:
    """Accuracy, or a regression's MAE, of `bundle` on raw inputs."""
    if len(y) == 0:
        return None
    from shipyard.serve.runtime import ModelRuntime

    rt = ModelRuntime(bundle)
    spec = bundle.preprocess
    if spec is None:
        raise UsageError(f"the bundle {bundle.name!r} has no preprocessing spec: raw data cannot be fed to it")
    feats = spec.apply(x_raw)
    out = np.concatenate([rt.predict(feats[i:i + 1024]) for i in range(0, len(feats), 1024)])
    if bundle.regression:
        return float(np.abs(out.reshape(len(y), -1) - np.asarray(y, np.float64).reshape(len(y), -1)).mean())
    return float((out.argmax(1) == y).mean())


def offline(champion: Bundle, challenger: Bundle, recent: Labelled, original: Dataset, recipe: dict[str, Any], *,
            tolerance: float = 0.01, mae_tolerance: float = MAE_TOLERANCE) -> dict[str, Any]:
    """Compare the two bundles; returns accuracies (a regression's MAEs), `passed` and the reason."""
    splits = original.split(recipe.get("val_fraction"), recipe.get("split_seed", 0))
    sets = {"recent_holdout": (recent.x, recent.y), "validation": (splits.x_val, splits.y_val)}
    regression = champion.regression
    out: dict[str, Any] = {"metric": "mae" if regression else "accuracy", "sets": {},
                           "tolerance": mae_tolerance if regression else tolerance}
    failures = []
    for label, (x, y) in sets.items():
        a, b = _quality(champion, x, y), _quality(challenger, x, y)
        out["sets"][label] = {"n": int(len(y)), "champion": a, "challenger": b,
                              "delta": None if a is None or b is None else b - a}
        if a is None or b is None:
            continue
        if regression and b > a * (1 + mae_tolerance):
            failures.append(f"{label}: MAE {b:.4g} against the champion's {a:.4g} (more than "
                            f"{mae_tolerance:.0%} higher)")
        elif not regression and b < a - tolerance:
            failures.append(f"{label}: {b:.1%} against the champion's {a:.1%} (more than {tolerance:.1%} worse)")
    out["passed"] = not failures
    parts = [f"{k} " + (f"MAE {v['challenger']:.4g} vs {v['champion']:.4g}" if regression else
                        f"{v['challenger']:.1%} vs {v['champion']:.1%}")
             for k, v in out["sets"].items() if v["challenger"] is not None]
    out["reason"] = "; ".join(failures) if failures else "not worse on " + ", ".join(parts)
    return out


def champion_data(registry: Registry, name: str, champion: ModelVersion, bundle: Bundle, data: str | None = None
                  ) -> tuple[Dataset, dict[str, Any], str]:
    """The champion's original dataset, recipe and source (`data` overrides the source)."""
    from shipyard.training.recipe import Recipe

    lineage = bundle.meta.lineage
    recipe = lineage.recipe
    if not recipe:
        raise UsageError(f"{champion.ref} records no training recipe (imported or hand-made bundle)")
    source = data or lineage.data_source or recipe.get("data")
    if not isinstance(source, str):
        raise UsageError(f"{champion.ref} records no training data source; pass --data SOURCE")
    try:  # read as the run read it: label column, task, imputation, image shape, standardization
        original = Recipe.from_dict({**recipe, "data": source}).load_data()
    except (DataError, UsageError) as e:
        raise UsageError(f"{champion.ref} was trained on {source!r}, which cannot be read here ({e}); pass "
                         "--data SOURCE with the same classes") from None
    if original.regression != bundle.regression:
        raise UsageError(f"the data {source!r} is read as a {original.task}, {champion.ref} is a {bundle.meta.task}")
    if list(original.classes) != list(bundle.classes):
        raise UsageError(f"the data {source!r} has classes {original.classes[:5]}…, the champion "
                         f"{bundle.classes[:5]}…: they must be the same")
    return original, recipe, source


def offline_gate(registry: Registry, name: str, candidate: int, *, champion_alias: str = "production",
                 holdout: float = 0.2, tolerance: float = 0.01, data: str | None = None) -> dict[str, Any]:
    """Run the offline gate of `name@candidate` against the champion now (for a candidate that
    did not come from `retrain`), and record the verdict in history."""
    from shipyard.update.data import labelled

    champ = registry.get(f"{name}@{champion_alias}")
    champ_bundle = registry.load(champ)
    original, recipe, _ = champion_data(registry, name, champ, champ_bundle, data)
    spec = champ_bundle.preprocess
    if spec is None:
        raise UsageError(f"{champ.ref} has no preprocessing spec: its logged inputs cannot be turned back into data")
    _, recent = labelled(registry.engine, name, spec, regression=champ_bundle.regression).split(holdout)
    verdict = offline(champ_bundle, registry.load(f"{name}@{candidate}"), recent, original, recipe,
                      tolerance=tolerance)
    registry.record(name, "gate", version=candidate, reason=verdict["reason"], details={"gate": "offline", **verdict})
    return verdict
