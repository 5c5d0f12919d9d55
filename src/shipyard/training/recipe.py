"""The complete training recipe. A run stores it whole, so `train --like RUN` replays a run
and retraining later reuses the champion's recipe. Defaults are the canonical MNIST MLP:
Adam 0.001, batch 32, 10 epochs, sparse categorical cross-entropy."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from shipyard.errors import ConfigError

if TYPE_CHECKING:
    from shipyard.data.dataset import Dataset
    from shipyard.data.preprocess import Impute, Standardize

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("none", "cosine", "step")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Recipe:
    data: str = "mnist-sample"
    label_column: str = "label"
    standardize: Standardize | None = None  # None: the source's default
    task: str | None = None  # classification | regression; None: guessed from the labels (tables)
    impute: Impute = "none"  # missing values in a table: refused (none), or mean | median | constant
    impute_value: float = 0.0  # what `constant` puts in numeric columns
    image: tuple[int, int] | None = None  # a table's columns are the pixels of H×W images
    loss: str | None = None  # a regression's: mse | huber (on standardized targets); None: mse
    val_fraction: float | None = None  # None: 0.1 with a shipped test split, else 0.2
    split_seed: int = 0
    model: str = "mlp"
    model_args: dict[str, Any] = field(default_factory=dict)
    label_smoothing: float = 0.0
    optimizer: str = "adam"
    lr: float = 0.001
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 32
    epochs: int = 10
    patience: int | None = None
    schedule: str = "none"
    schedule_step: int = 5
    schedule_gamma: float = 0.1
    seed: int = 0
    threads: int | None = None  # None: the settings' thread count (per node, shared by its processes)
    device: str = "auto"
    nproc: int = 1  # data-parallel processes per node (`train --nproc`)
    nnodes: int = 1  # hosts taking part (`train --nnodes`); batch_size is the global batch

    def __post_init__(self) -> None:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("device", self.device, DEVICES)
        if self.standardize is not None:
            _choice("standardize", self.standardize, ("none", "global", "feature"))
        if self.task is not None:
            _choice("task", self.task, ("classification", "regression"))
        _choice("impute", self.impute, ("none", "mean", "median", "constant"))
        if self.loss is not None:
            _choice("loss", self.loss, ("mse", "huber"))
        if self.image is not None:
            if not isinstance(self.image, list | tuple) or len(self.image) != 2 or \
                    not all(isinstance(v, int) and v > 0 for v in self.image):
                raise ConfigError("image", self.image, "HEIGHT,WIDTH: two positive integers")
            object.__setattr__(self, "image", (int(self.image[0]), int(self.image[1])))  # a JSON list back
        _positive("batch_size", self.batch_size)
        _positive("epochs", self.epochs)
        _positive("schedule_step", self.schedule_step)
        _positive("nproc", self.nproc)
        _positive("nnodes", self.nnodes)
        world = self.nproc * self.nnodes
        if self.batch_size % world:
            up = (self.batch_size // world + 1) * world
            raise ConfigError("batch_size", self.batch_size,
                              f"the global batch must split evenly over the {world} processes "
                              f"(nproc {self.nproc} × nnodes {self.nnodes}); try {up}")
        if self.threads is not None:
            _positive("threads", self.threads)
        if self.patience is not None:
            _positive("patience", self.patience)
        if not self.lr > 0:
            raise ConfigError("lr", self.lr, "must be greater than 0")
        if self.weight_decay < 0:
            raise ConfigError("weight_decay", self.weight_decay, "must not be negative")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError("label_smoothing", self.label_smoothing, "must be in [0, 1)")
        if self.val_fraction is not None and not 0.0 < self.val_fraction < 1.0:
            raise ConfigError("val_fraction", self.val_fraction, "must be between 0 and 1")
        if not isinstance(self.model_args, dict):
            raise ConfigError("model_args", self.model_args, "must be a mapping")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_data(self) -> Dataset:
        """The recipe's data source, read as the recipe says (label column, task, imputation,
        image shape, standardization): the one place every stage opens it."""
        from dataclasses import replace as _replace

        from shipyard.data import load

        table = self.data.partition(":")[0] in ("csv", "parquet")  # a retrain's npz of pixels is one already
        ds = load(self.data, label_column=self.label_column, standardize=self.standardize, impute=self.impute,
                  image=self.image if table else None, task=self.task)
        if self.impute == "constant" and ds.preprocess.columns is not None:
            ds = _replace(ds, preprocess=_replace(ds.preprocess, impute_value=float(self.impute_value)))
        return ds

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ConfigError("recipe", unknown, "unknown keys")
        return cls(**d)

    def with_overrides(self, **overrides: Any) -> Recipe:
        """A copy with every override that is not None applied (CLI flags left unset are None)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _choice(key: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(key, value, f"choose one of {', '.join(choices)}")


def _positive(key: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(key, value, "must be a positive integer")
