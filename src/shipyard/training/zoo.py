"""The model zoo (`mlp`, `cnn`) and user factories (`package.module:callable`). Every model maps
float32 features `[N, num_features]` to logits `[N, num_classes]`; the softmax is added at
export time."""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from shipyard.errors import ConfigError, UsageError


class MLP(nn.Module):
    """The canonical recipe: flatten → Dense(128, relu) → Dense(classes); Glorot-uniform weights
    and zero biases, as Keras initializes Dense layers."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (128,),
                 dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """A small LeNet-style network for single-channel images (28×28 and similar)."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (32, 64),
                 hidden: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        if len(input_shape) != 2:
            raise ConfigError("model", "cnn", f"needs 2-D image inputs, got shape {list(input_shape)}")
        self.h, self.w = int(input_shape[0]), int(input_shape[1])
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = c2 * (self.h // 4) * (self.w // 4)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(flat, hidden),
                                  nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(-1, 1, self.h, self.w)))


ZOO: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda input_shape, num_features, num_classes, **kw: MLP(num_features, num_classes, **kw),
    "cnn": lambda input_shape, num_features, num_classes, **kw: CNN(input_shape, num_classes, **kw),
}


def build_model(name: str, *, input_shape: Sequence[int], num_classes: int,
                args: dict[str, Any] | None = None) -> nn.Module:
    """Build a zoo model by name, or call a user factory `package.module:callable`. The factory
    receives `input_shape`, `num_features` and `num_classes` when its signature accepts them,
    plus the `--model-arg` values."""
    args = dict(args or {})
    given = {"input_shape": tuple(input_shape), "num_features": math.prod(input_shape),
             "num_classes": num_classes}
    if name in ZOO:
        factory = ZOO[name]
        kwargs = {**given, **args}
    elif ":" in name:
        factory = _import_factory(name)
        params: Mapping[str, inspect.Parameter]
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}
        accepts_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in given.items() if accepts_all or k in params} | args
    else:
        raise UsageError(f"unknown model {name!r}: choose {', '.join(ZOO)} or package.module:factory")
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise ConfigError("model_args", args, f"{name} rejected them: {e}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _import_factory(path: str) -> Callable[..., Any]:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(f"cannot import model module {module_name!r}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"{module_name!r} has no callable {attr!r}")
    return factory
