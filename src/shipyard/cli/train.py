"""`shipyard train`: train a model and track the run. The only verb that imports torch, and only
once it runs (`--help` stays light)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape

from shipyard.cli._common import JsonOpt, emit_json, err, out, pct, reporting, settings
from shipyard.errors import UsageError


def _model_args(pairs: list[str] | None) -> dict[str, Any] | None:
    if not pairs:
        return None
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--model-arg wants KEY=VALUE, got {pair!r}")
        try:
            args[key] = json.loads(raw)
        except json.JSONDecodeError:
            args[key] = raw
    return args


def parse_image(text: str | None) -> tuple[int, int] | None:
    """`--image 28,28` → (28, 28)."""
    if text is None:
        return None
    parts = text.replace("x", ",").split(",")
    try:
        h, w = (int(v) for v in parts)
    except ValueError:
        raise UsageError(f"--image wants HEIGHT,WIDTH such as 28,28, got {text!r}") from None
    if h < 1 or w < 1:
        raise UsageError(f"--image wants positive sizes, got {text!r}")
    return h, w


def train(
    data: Annotated[str | None, typer.Option(help="mnist-sample | fashion-mnist | idx:DIR | npz:FILE | csv:FILE | parquet:FILE | sklearn:NAME (iris, wine, breast_cancer, digits, diabetes) | folder:DIR  [default: mnist-sample]. csv: and parquet: are tables of named columns, numeric or categorical (one-hot); pixel columns only with --image.")] = None,
    model: Annotated[str | None, typer.Option(help="mlp | cnn | package.module:factory | path/to/file.py:factory  [default: mlp]. A factory returns a torch.nn.Module and gets, if its signature names them (or takes **kwargs): input_shape (tuple, one raw sample's shape, e.g. (28, 28)), num_features (int: inputs arrive preprocessed and flattened, float32 [N, num_features]), num_classes (int: return logits [N, num_classes]; the softmax is added at export), plus each --model-arg. One batch is tried before the run starts.")] = None,
    model_arg: Annotated[list[str] | None, typer.Option(help="Model argument KEY=VALUE (JSON value), repeatable, passed to the model or factory as the keyword KEY, e.g. hidden=[256,128].")] = None,
    epochs: Annotated[int | None, typer.Option(help="[default: 10]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="[default: 32]")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam | adamw | sgd | rmsprop  [default: adam]")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate [default: 0.001].")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="[default: 0]")] = None,
    momentum: Annotated[float | None, typer.Option(help="For sgd and rmsprop [default: 0.9].")] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="[default: 0]")] = None,
    schedule: Annotated[str | None, typer.Option(help="Learning-rate schedule: none | cosine | step  [default: none]")] = None,
    schedule_step: Annotated[int | None, typer.Option(help="Epochs between steps for --schedule step [default: 5].")] = None,
    schedule_gamma: Annotated[float | None, typer.Option(help="Factor per step for --schedule step [default: 0.1].")] = None,
    patience: Annotated[int | None, typer.Option(help="Stop after this many epochs without a val_accuracy gain [default: off].")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for weights, shuffling and dropout [default: 0].")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Validation share [default: 0.1 with a test split, else 0.2].")] = None,
    label_column: Annotated[str | None, typer.Option(help="Label column of a csv: or parquet: table [default: label].")] = None,
    task: Annotated[str | None, typer.Option(help="classification | regression  [default: classification for string labels or at most 20 distinct integers, else regression; printed]")] = None,
    loss: Annotated[str | None, typer.Option(help="A regression's loss on standardized targets: mse | huber  [default: mse]. A classification uses cross-entropy.")] = None,
    impute: Annotated[str | None, typer.Option(help="Missing values in a table: none (refused, naming row and column) | mean | median | constant (numeric columns; categorical ones take their most frequent category)  [default: none]")] = None,
    impute_value: Annotated[float | None, typer.Option(help="The value --impute constant fills in [default: 0].")] = None,
    image: Annotated[str | None, typer.Option(help="HEIGHT,WIDTH: the table's columns are the pixels (0–255) of grayscale images of this size.")] = None,
    standardize: Annotated[str | None, typer.Option(help="none | global | feature  [default: the source's]")] = None,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads [default: SHIPYARD_THREADS or min(2, cores)].")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda  [default: auto]")] = None,
    like: Annotated[str | None, typer.Option(help="Replay this run's recipe, with the options given here as overrides.")] = None,
    resume: Annotated[str | None, typer.Option(help="Continue this interrupted run from its last completed epoch.")] = None,
    nproc: Annotated[int | None, typer.Option(help="Data-parallel processes on this host (torch.distributed, gloo on CPU, NCCL on GPU); --batch-size stays the global batch and must divide by nproc × nnodes [default: 1].")] = None,
    nnodes: Annotated[int | None, typer.Option(help="Hosts in the job; run the same command on each with its own --node-rank [default: 1].")] = None,
    node_rank: Annotated[int, typer.Option(help="This host's rank, 0 to nnodes-1; node 0 holds the recipe and tracks the one run.")] = 0,
    rdzv_endpoint: Annotated[str | None, typer.Option(help="HOST:PORT of the c10d rendezvous, the same on every node (node 0 listens there); needed with --nnodes > 1.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="A name for the run (up to 128 printable characters), shown by `shipyard runs`; several runs may share one. With --resume: renames the run.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Tag the run KEY=VALUE, repeatable (KEY: 1-64 of A-Z a-z 0-9 _ . -; VALUE: up to 256 characters; at most 32 tags). Change them later with `shipyard runs tag`.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a model and track the run (defaults: the canonical MNIST MLP recipe)."""
    from shipyard.training import get_run
    from shipyard.training import train as train_api
    from shipyard.training.tracking import parse_tags

    def interrupted(run_id: str) -> dict[str, Any]:
        return get_run(run_id, settings=settings()).to_dict()

    with reporting(as_json, on_interrupt=interrupted):
        overrides: dict[str, Any] = dict(
            data=data, model=model, model_args=_model_args(model_arg), epochs=epochs,
            batch_size=batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
            momentum=momentum, label_smoothing=label_smoothing, schedule=schedule,
            schedule_step=schedule_step, schedule_gamma=schedule_gamma, patience=patience, seed=seed,
            val_fraction=val_fraction, label_column=label_column, standardize=standardize, task=task,
            impute=impute, impute_value=impute_value, image=parse_image(image), loss=loss,
            threads=threads, device=device, nproc=nproc, nnodes=nnodes,
        )
        if resume and like:
            raise UsageError("--resume and --like exclude each other")
        run = train_api(like=like, resume=resume, settings=settings(), progress=not quiet,
                        node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, name=name,
                        tags=parse_tags(tag) or None, **overrides)
        if run.regression:
            mae = run.best_val_mae
            summary = (f"run [bold]{run.id}[/] {run.status}: best val_mae {mae:.4g} at epoch {run.best_epoch}"
                       if mae is not None else f"run [bold]{run.id}[/] {run.status}")
            if run.test_mae is not None:
                summary += f", test_mae {run.test_mae:.4g}"
        else:
            summary = f"run [bold]{run.id}[/] {run.status}: best val_accuracy {pct(run.best_val_accuracy)} at epoch {run.best_epoch}"
            if run.test_accuracy is not None:
                summary += f", test_accuracy {pct(run.test_accuracy)}"
        if run.name:
            summary += f" ({escape(run.name)})"
        err.print(summary)
        if as_json:
            emit_json(run.to_dict())
        else:
            out.print(escape(f"checkpoint      {run.checkpoint}\ntensorboard_dir {run.tensorboard_dir}"))
