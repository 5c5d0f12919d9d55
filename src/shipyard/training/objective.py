"""What a run optimizes and how it is scored. A classification: cross-entropy, accuracy (higher
is better). A regression: MSE or Huber on standardized targets, MAE and RMSE in the target's own
units (lower is better). A regression model answers in the target's units: `TargetScale` is part
of the model, its buffers in the checkpoint, so the exported graph needs nothing added and every
later stage (optimize, serve, predict) reads values as they are."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

EVAL_BATCH = 4096


class TargetScale(nn.Module):
    """`net`'s output × the training targets' std + their mean: the net learns standardized
    targets (well-conditioned whatever their units), the model answers in the targets' units."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Module, outputs: int) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.zeros(outputs))
        self.register_buffer("std", torch.ones(outputs))

    def fit(self, y: np.ndarray) -> TargetScale:
        v = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        self.mean.copy_(torch.from_numpy(v.mean(0)))
        self.std.copy_(torch.from_numpy(np.maximum(v.std(0), 1e-6)))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.std + self.mean


class ScaledLoss(nn.Module):
    """A regression loss on standardized targets (the model answers in target units)."""

    def __init__(self, model: TargetScale, kind: str) -> None:
        super().__init__()
        self.model = model  # not a submodule's parameters: only its buffers are read
        self.base: nn.Module = nn.HuberLoss() if kind == "huber" else nn.MSELoss()

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        scale: TargetScale = self.model
        m, s = scale.mean, scale.std
        return self.base((out - m) / s, (y.reshape(out.shape) - m) / s)


@dataclass
class Objective:
    """The loss to minimize, the per-batch score sum (correct answers, or absolute errors) and
    the metric names a run reports."""

    regression: bool
    loss_fn: nn.Module

    @property
    def metric(self) -> str:
        return "mae" if self.regression else "accuracy"

    def batch_score(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summed over the batch: correct answers, or absolute errors (mean over targets)."""
        if self.regression:
            return (out - y.reshape(out.shape)).abs().mean(1).sum()
        return (out.argmax(1) == y).sum()

    def shown(self, value: float) -> str:
        return f"{value:.4g}" if self.regression else f"{value:.2%}"

    @torch.inference_mode()
    def sums(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[summed loss, summed score, summed squared error] as float64, so shards add up exactly."""
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
        score = torch.zeros((), dtype=torch.float64, device=x.device)
        sq = torch.zeros((), dtype=torch.float64, device=x.device)
        for i in range(0, len(x), EVAL_BATCH):
            out = model(x[i: i + EVAL_BATCH])
            yb = y[i: i + EVAL_BATCH]
            loss_sum += self.loss_fn(out, yb).double() * len(yb)
            score += self.batch_score(out, yb).double()
            if self.regression:
                sq += ((out - yb.reshape(out.shape)) ** 2).mean(1).sum().double()
        return torch.stack([loss_sum, score, sq])

    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """`loss` and the metric (and `rmse` for a regression) over a whole split."""
        s = self.sums(model, x, y)
        return self.named(s, len(x))

    def named(self, s: torch.Tensor, n: int) -> dict[str, float]:
        out = {"loss": s[0].item() / n, self.metric: s[1].item() / n}
        if self.regression:
            out["rmse"] = math.sqrt(s[2].item() / n)
        return out


def make_objective(model: nn.Module, *, regression: bool, loss: str | None, label_smoothing: float) -> Objective:
    if not regression:
        return Objective(False, nn.CrossEntropyLoss(label_smoothing=label_smoothing))
    assert isinstance(model, TargetScale)
    return Objective(True, ScaledLoss(model, loss or "mse"))


__all__ = ["Objective", "ScaledLoss", "TargetScale", "make_objective"]
