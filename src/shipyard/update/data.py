"""Labelled production data: the inputs the prediction log kept (ring or sample) joined with the
labels that came back, as raw inputs ready to train on, split by time so the newest share is
never trained on (the recent holdout every gate compares on)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from shipyard.data.preprocess import PreprocessSpec
from shipyard.monitor import feedback, predlog


@dataclass(frozen=True)
class Labelled:
    """Labelled production samples, oldest first."""

    x: np.ndarray  # raw inputs (the preprocessing spec's raw shape and dtype)
    y: np.ndarray  # class index (int64), or a regression's true value (float32)
    ts: np.ndarray  # when each was predicted (unix seconds)
    request_ids: list[str]
    versions: np.ndarray  # the version that answered
    labels_total: int  # labels received in the range, including those whose input is no longer kept

    def __len__(self) -> int:
        return len(self.y)

    def split(self, holdout: float = 0.2) -> tuple[Labelled, Labelled]:
        """(train, recent holdout): the newest `holdout` share by prediction time is held out."""
        cut = len(self) - int(round(len(self) * holdout))
        return self._take(slice(0, cut)), self._take(slice(cut, len(self)))

    def _take(self, sl: slice) -> Labelled:
        return Labelled(self.x[sl], self.y[sl], self.ts[sl], self.request_ids[sl], self.versions[sl],
                        self.labels_total)

    @property
    def window(self) -> tuple[float | None, float | None]:
        return (float(self.ts[0]), float(self.ts[-1])) if len(self) else (None, None)


def labelled(engine: sa.Engine, model: str, spec: PreprocessSpec, *, since: float | None = None,
             until: float | None = None, regression: bool = False) -> Labelled:
    """Every labelled prediction of `model` in the range whose input the log still keeps (a
    regression's: with its true value)."""
    labels: dict[str, int] | dict[str, float] = (feedback.values(engine, model) if regression
                                                 else feedback.labels(engine, model))
    ytype = np.float32 if regression else np.int64
    logged = predlog.read(engine, model, since=since, until=until)
    keep = [i for i, rid in enumerate(logged.request_ids) if rid in labels]
    labels_total = len(keep)
    inputs = predlog.inputs_for(engine, model, [int(logged.ids[i]) for i in keep]) if keep else {}
    keep = [i for i in keep if int(logged.ids[i]) in inputs]
    order = sorted(keep, key=lambda i: (logged.ts[i], i))
    if not order:
        empty = np.zeros((0, *spec.raw_shape), dtype=np.dtype(spec.raw_dtype))
        return Labelled(empty, np.zeros(0, ytype), np.zeros(0), [], np.zeros(0, np.int32), labels_total)
    feats = np.stack([inputs[int(logged.ids[i])].reshape(-1) for i in order])
    return Labelled(spec.invert(feats), np.array([labels[logged.request_ids[i]] for i in order], ytype),
                    logged.ts[order], [logged.request_ids[i] for i in order], logged.version[order], labels_total)
