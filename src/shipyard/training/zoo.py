"""The model zoo (`mlp`, `cnn`) and user factories (`package.module:callable` or
`path/to/file.py:callable`). Every model maps float32 features `[N, num_features]` to logits
`[N, num_classes]`; the softmax is added at export time. `check_fits` tries one small batch before a
run starts."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shipyard.errors import ConfigError, ShipyardError, UsageError
from shipyard.training.objective import TargetScale


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
                args: dict[str, Any] | None = None, num_features: int | None = None,
                regression: bool = False) -> nn.Module:
    """Build a zoo model by name, or call a user factory `package.module:callable` or
    `path/to/file.py:callable` (a module in the current directory or a file is found without
    PYTHONPATH). A factory gets these keyword arguments, each only if its signature names it (or
    takes **kwargs), plus the `--model-arg` values: `input_shape` (one raw sample's shape, e.g.
    (28, 28)), `num_features` (the preprocessed float32 vector's length: the model gets
    `[N, num_features]`; None here: prod(input_shape)) and `num_classes` (it returns logits
    `[N, num_classes]`)."""
    args = dict(args or {})
    given = {"input_shape": tuple(input_shape),
             "num_features": math.prod(input_shape) if num_features is None else int(num_features),
             "num_classes": num_classes}
    if name in ZOO:
        factory, kwargs = ZOO[name], {**given, **args}
        with _errors_as_config(name, args):
            model = factory(**kwargs)
    elif ":" in name:
        with _import_path(name):
            factory = _load_factory(name)
            params: Mapping[str, inspect.Parameter]
            try:
                params = inspect.signature(factory).parameters
            except (TypeError, ValueError):
                params = {}
            accepts_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
            kwargs = {k: v for k, v in given.items() if accepts_all or k in params} | args
            with _errors_as_config(name, args, factory):
                model = factory(**kwargs)
    else:
        raise UsageError(f"unknown model {name!r}: choose {', '.join(ZOO)}, package.module:factory "
                         "or path/to/file.py:factory")
    if not isinstance(model, nn.Module):
        raise UsageError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return TargetScale(model, num_classes) if regression else model  # a regression answers in target units


def canonical_model(name: str) -> str:
    """`--model` with a factory file's path made absolute, so a stored recipe replays from anywhere
    (`train --like`, retraining, `optimize`); zoo names and module references stay as given."""
    if name in ZOO or not _is_file_ref(name):
        return name
    path, _, attr = name.rpartition(":")
    return f"{Path(path).expanduser().resolve()}:{attr}"


def check_fits(model: nn.Module, sample: torch.Tensor, num_classes: int, name: str, *,
               input_shape: Sequence[int] | None = None) -> None:
    """One forward pass over a few preprocessed samples (eval mode, no grad; the mode is restored),
    so a model that does not fit the data fails with one clear line before any run exists."""
    got = f"it got features {_dims(sample.shape, len(sample))}"
    if input_shape is not None:
        got += f" (from input shape {list(input_shape)})"
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(sample)
    except Exception as e:  # whatever the model raises, said in one line
        raise UsageError(f"model {name!r} does not fit the data: {got} and failed: {_one_line(e)}") from None
    finally:
        model.train(training)
    want = (len(sample), num_classes)
    if not isinstance(out, torch.Tensor):
        raise UsageError(f"model {name!r} does not fit the data: {got} and returned {type(out).__name__}, "
                         f"but logits {_dims(want, len(sample))} (one per class) were expected")
    if tuple(out.shape) != want:
        raise UsageError(f"model {name!r} does not fit the data: {got} and returned "
                         f"{_dims(out.shape, len(sample))}, but logits {_dims(want, len(sample))} "
                         "(one per class) were expected")


def _dims(shape: Sequence[int], n: int) -> str:
    """A shape as `[N, 64]`: the batch dimension named N when it is the batch's size."""
    dims = [str(int(d)) for d in shape]
    if dims and dims[0] == str(n):
        dims[0] = "N"
    return "[" + ", ".join(dims) + "]"


def _one_line(e: BaseException) -> str:
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return text or type(e).__name__


@contextmanager
def _errors_as_config(name: str, args: dict[str, Any], factory: Callable[..., Any] | None = None) -> Iterator[None]:
    """A TypeError from the factory call: arguments it does not take. Anything else a user
    `factory` raises (but shipyard's own errors) becomes one line naming where in its file."""
    try:
        yield
    except ShipyardError:
        raise
    except TypeError as e:
        if args or factory is None:
            raise ConfigError("model_args", args, f"{name} rejected them: {_one_line(e)}") from None
        raise UsageError(f"model factory {name!r} failed: {_where_failed(e, _source(factory))}") from None
    except Exception as e:
        if factory is None:
            raise
        raise UsageError(f"model factory {name!r} failed: {_where_failed(e, _source(factory))}") from None


def _source(obj: Any) -> Path | None:
    try:
        found = inspect.getsourcefile(obj)
    except TypeError:
        return None
    return Path(found).resolve() if found else None


def _is_file_ref(name: str) -> bool:
    path = name.rpartition(":")[0]
    return path.endswith(".py") or "/" in path or "\\" in path or path.startswith("~")


@contextmanager
def _import_path(name: str) -> Iterator[None]:
    """The current directory (a module reference) or the factory file's folder (a file reference)
    on sys.path while the factory is loaded and called, after what is installed; then removed."""
    folder = (str(Path(name.rpartition(":")[0]).expanduser().resolve().parent) if _is_file_ref(name)
              else os.getcwd())
    added = folder not in sys.path
    if added:
        sys.path.append(folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _load_factory(name: str) -> Callable[..., Any]:
    where, _, attr = name.rpartition(":")
    if _is_file_ref(name):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"model file {where!r} not found (from --model {name!r})")
        module_name = "shipyard_factory_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"model file {where!r} cannot be loaded as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look their module up here
        try:
            spec.loader.exec_module(module)
        except BaseException as e:
            sys.modules.pop(module_name, None)
            if isinstance(e, Exception):
                raise UsageError(f"cannot load model file {_where_failed(e, path)}") from None
            raise
        what = f"model file {where!r}"
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise UsageError(f"cannot import model module {where!r}: {_one_line(e)}") from None
        except Exception as e:
            raise UsageError(f"cannot import model module {where!r}: {_where_failed(e, None)}") from None
        what = f"model module {where!r}"
    factory = getattr(module, attr, None)
    if factory is None:
        raise UsageError(f"{what} has no callable {attr!r}")
    if not callable(factory):
        raise UsageError(f"{what} has no callable {attr!r} (it is a {type(factory).__name__})")
    return factory


def _where_failed(e: Exception, path: Path | None) -> str:
    """`file:line: Error: message`, for a syntax error or an exception raised while importing."""
    if isinstance(e, SyntaxError):
        return f"{e.filename or path}:{e.lineno}: SyntaxError: {e.msg}"
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if path is not None and Path(f.filename).resolve() == path] or frames
    at = f"{ours[-1].filename}:{ours[-1].lineno}: " if ours else f"{path}: " if path else ""
    return f"{at}{type(e).__name__}: {_one_line(e)}"
