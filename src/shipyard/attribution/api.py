"""`shipyard explain REF INPUT` and `shipyard.explain(...)`: explanations in-process, from a
registry reference or a bundle on disk, for an image file, a folder of images, a `.npy` array,
an `.npz`, or CSV/Parquet rows — the same explainer the server runs. No torch, no server."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.attribution.explainer import Explainer, Explanation, Params
from shipyard.errors import DataError, UsageError

if TYPE_CHECKING:
    from shipyard.bundle import Bundle
    from shipyard.registry import Registry
    from shipyard.settings import Settings

#: instances one in-process call explains (the rest of a long file is left out, and said so)
MAX_INSTANCES = 256


@dataclass
class ExplainResult:
    """An explanation of the first rows of INPUT, with their ids and what explained them."""

    explanation: Explanation
    ids: list[str]
    inputs: np.ndarray  # what the attributions are shaped like (pixels, features, or the raw table)
    kind: str  # raw | features | columns
    model: str
    version: int | None
    columns: list[str]
    seconds: float
    left_out: int = 0  # rows beyond MAX_INSTANCES
    bad_rows: list[dict[str, Any]] | None = None

    def to_dict(self, *, arrays: bool = True) -> dict[str, Any]:
        ex = self.explanation
        out: dict[str, Any] = {"model": self.model, "version": self.version, "ids": self.ids, "kind": self.kind,
                               **ex.summary(), "seconds": round(self.seconds, 4), "left_out": self.left_out,
                               "bad_rows": self.bad_rows or []}
        if arrays:
            out["attributions"] = {k: v.tolist() for k, v in ex.attributions.items()}
        return out


def explain(ref: str | Path, source: str | Path, *, target: int | str | None = None, method: str | None = None,
            steps: int = 64, baseline: str = "zeros", integration: str = "riemann_trapezoid", patch: int = 4,
            samples: int = 1024, rows: int = 16, registry: Registry | None = None,
            settings: Settings | None = None) -> ExplainResult:
    """Explain the first `rows` instances of `source` with the model `ref` (NAME[@VERSION|ALIAS]
    or a bundle path). Parameters as the server's (`Params`); a bad one is a UsageError."""
    from shipyard.errors import BadRequest
    from shipyard.serve.batch_predict import open_model

    t0 = time.perf_counter()
    if not 1 <= rows <= MAX_INSTANCES:
        raise UsageError(f"--rows must be in 1..{MAX_INSTANCES}, got {rows}")
    try:
        params = Params.parse({k: v for k, v in {"target": target, "method": method, "steps": steps,
                                                  "baseline": baseline, "integration": integration,
                                                  "patch": patch, "samples": samples}.items() if v is not None})
    except BadRequest as e:
        raise UsageError(str(e)) from None
    bundle, name, version = open_model(ref, registry=registry, settings=settings)
    features, inputs, ids, kind, left, bad = _read(bundle, Path(source), rows)
    try:
        ex = Explainer(bundle).explain(features, params, kind=kind, shape=tuple(inputs.shape[1:]))
    except BadRequest as e:
        raise UsageError(str(e)) from None
    spec = bundle.preprocess
    columns = [c.name for c in spec.columns] if spec is not None and spec.columns is not None else []
    return ExplainResult(ex, ids, inputs, kind, name, version, columns, time.perf_counter() - t0, left, bad)


def _read(bundle: Bundle, path: Path, rows: int
          ) -> tuple[np.ndarray, np.ndarray, list[str], str, int, list[dict[str, Any]]]:
    """(features, the instances as sent, ids, kind, rows left out, bad rows) of the first `rows`
    good rows of `path`."""
    from shipyard.serve.batch_inputs import ModelInputs
    from shipyard.serve.batch_predict import open_source

    model = ModelInputs.of(bundle)
    spec = model.spec
    if path.suffix.lower() == ".npy":
        return _npy(bundle, path, rows)
    src = open_source(path, model, rows, count=True)
    feats: list[np.ndarray] = []
    ids: list[str] = []
    bad: list[dict[str, Any]] = []
    for chunk in src.chunks():
        bad += [b.to_dict() for b in chunk.bad]
        feats.append(chunk.features)
        ids += [str(i) for i in chunk.ids]
        if sum(len(f) for f in feats) >= rows:
            break
    if not ids:
        why = f" (row {bad[0]['row']}: {bad[0]['reason']})" if bad else ""
        raise DataError(path, "no good rows to explain" + why)
    x = np.concatenate(feats)[:rows]
    left = max((src.total or len(ids)) - len(bad) - rows, 0)
    if spec is not None and spec.is_table:
        return x, spec.invert(x), ids[:rows], "columns", left, bad
    if spec is not None and src.kind == "images":
        return x, spec.invert(x).reshape(len(x), *spec.raw_shape), ids[:rows], "raw", left, bad
    return x, x, ids[:rows], "features", left, bad


def _npy(bundle: Bundle, path: Path, rows: int
         ) -> tuple[np.ndarray, np.ndarray, list[str], str, int, list[dict[str, Any]]]:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(path, f"not a readable .npy array ({e})") from None
    if a.dtype.kind not in "uif":
        raise DataError(path, f"holds {a.dtype} values, not numbers")
    spec = bundle.preprocess
    sig = bundle.meta.signature
    feats_shape = tuple(next(i for i in sig.inputs if i.name == sig.onnx_input).shape[1:])
    raw = tuple(spec.raw_shape) if spec is not None and not spec.is_table else None
    if raw is not None and tuple(a.shape) in (raw, (1, *raw)) or raw is not None and tuple(a.shape[1:]) == raw:
        a = a.reshape(-1, *raw)
        kind = "raw"
    elif tuple(a.shape) == feats_shape or tuple(a.shape[1:]) == feats_shape:
        a = a.reshape(-1, *feats_shape)
        kind = "features"
    else:
        takes = f"{list(raw)} (raw) or " if raw else ""
        raise DataError(path, f"shape {list(a.shape)}: the model takes {takes}{list(feats_shape)} (features) "
                              "per instance")
    if not np.isfinite(a).all():
        raise DataError(path, "holds NaN or infinity")
    left = max(len(a) - rows, 0)
    a = a[:rows]
    if kind == "raw":
        assert spec is not None
        if spec.raw_dtype == "uint8" and (a.min() < 0 or a.max() > 255):
            raise DataError(path, "pixel values must be in 0..255")
        return spec.apply(a.astype(spec.raw_dtype)), a, [str(i + 1) for i in range(len(a))], kind, left, []
    f = np.ascontiguousarray(a, np.float32)
    return f, f, [str(i + 1) for i in range(len(a))], kind, left, []
