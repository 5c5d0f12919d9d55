"""Preprocessing as data: a small spec recorded with the run and carried in the bundle, applied
by this one numpy function everywhere (training, evaluation, the server), so raw inputs are
transformed exactly the same way in every stage. No torch here: the server imports it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from shipyard.errors import ConfigError, UsageError

Standardize = Literal["none", "global", "feature"]
STANDARDIZE_CHOICES: tuple[str, ...] = ("none", "global", "feature")


@dataclass(frozen=True)
class PreprocessSpec:
    """raw `[N, *raw_shape]` of `raw_dtype` → float32 `[N, num_features]`:
    multiply by `scale`, flatten, then subtract `mean` and divide by `std` (scalars for
    `global` standardization, per-feature lists for `feature`)."""

    raw_shape: tuple[int, ...]
    raw_dtype: str = "uint8"
    scale: float = 1.0 / 255.0
    flatten: bool = True
    standardize: Standardize = "none"
    mean: float | list[float] | None = None
    std: float | list[float] | None = None

    @property
    def num_features(self) -> int:
        return int(np.prod(self.raw_shape))

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Transform a raw batch; raises UsageError when its shape does not match the spec."""
        if tuple(raw.shape[1:]) != self.raw_shape and raw.shape[1:] != (self.num_features,):
            raise UsageError(
                f"input shape {list(raw.shape)} does not match the expected "
                f"[N, {', '.join(map(str, self.raw_shape))}]"
            )
        if self.standardize != "none" and (self.mean is None or self.std is None):
            raise UsageError("the preprocessing spec standardizes but was never fitted: "
                             "call .fitted(raw_train) first")
        x = np.asarray(raw, dtype=np.float32)
        if self.scale != 1.0:
            x = x * np.float32(self.scale)
        x = x.reshape(len(x), self.num_features) if self.flatten else x.reshape(len(x), *self.raw_shape)
        if self.standardize != "none":
            mean = np.asarray(self.mean, dtype=np.float32)
            std = np.asarray(self.std, dtype=np.float32)
            if self.standardize == "feature" and not self.flatten:
                mean, std = mean.reshape(self.raw_shape), std.reshape(self.raw_shape)
            x = (x - mean) / std
        return np.ascontiguousarray(x, dtype=np.float32)

    def invert(self, features: np.ndarray) -> np.ndarray:
        """Features back to raw inputs (`raw_shape`, `raw_dtype`): what retraining needs from the
        prediction log, which keeps features. Exact for 8-bit sources up to rounding."""
        x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        if self.standardize != "none":
            if self.mean is None or self.std is None:
                raise UsageError("the preprocessing spec standardizes but was never fitted")
            x = x * np.asarray(self.std, dtype=np.float64).reshape(-1) + np.asarray(self.mean, dtype=np.float64
                                                                                   ).reshape(-1)
        if self.scale != 1.0:
            x = x / self.scale
        dtype = np.dtype(self.raw_dtype)
        if dtype.kind in "ui":
            info = np.iinfo(dtype)
            x = np.clip(np.rint(x), info.min, info.max)
        return x.astype(dtype).reshape(len(x), *self.raw_shape)

    def fitted(self, raw_train: np.ndarray) -> PreprocessSpec:
        """Return the spec with standardization statistics computed on the training split."""
        if self.standardize == "none":
            return self
        scaled = np.asarray(raw_train, dtype=np.float64).reshape(len(raw_train), -1) * self.scale
        if self.standardize == "global":
            mean, std = float(scaled.mean()), float(scaled.std())
            return _replace(self, mean=mean, std=max(std, 1e-6))
        mean_v = scaled.mean(axis=0)
        std_v = np.maximum(scaled.std(axis=0), 1e-6)
        return _replace(self, mean=mean_v.tolist(), std=std_v.tolist())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["raw_shape"] = list(self.raw_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        d = dict(d)
        d["raw_shape"] = tuple(d["raw_shape"])
        if d.get("standardize", "none") not in STANDARDIZE_CHOICES:
            raise ConfigError("standardize", d["standardize"], f"choose {STANDARDIZE_CHOICES}")
        return cls(**d)


def _replace(spec: PreprocessSpec, **changes: Any) -> PreprocessSpec:
    return PreprocessSpec(**{**asdict(spec), "raw_shape": spec.raw_shape, **changes})
