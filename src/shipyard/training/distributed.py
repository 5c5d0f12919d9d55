"""Data-parallel training: `shipyard train --nproc N [--nnodes M --node-rank R --rdzv-endpoint H:P]`.

Processes are started by torch's own elastic launcher (the engine behind `torchrun`), with a c10d
rendezvous, gloo on CPU and NCCL on GPU. Each worker runs `python -m shipyard.training.distributed
SPEC` and then the ordinary training loop (`loop.fit`) with a `World`: one tracked run, written by
logical rank 0 (local rank 0 of node 0) alone, and the same model format as a one-process run.

The launching process (the CLI) waits for its node's workers and turns what they report into a
`Run` or into the error that stopped them. Only the launcher writes to stdout, so `--json` still
prints exactly one line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.utils.hooks import RemovableHandle

from shipyard import errors
from shipyard.errors import RunInterrupted, ShipyardError, UsageError
from shipyard.settings import Settings
from shipyard.training.loop import EpochStart, fit, resolve_device
from shipyard.training.recipe import Recipe
from shipyard.training.tracking import Run
from shipyard.training.world import World

#: test hook: each worker dumps its shard, gradients and parameters here (see `_Probe`)
DEBUG_DIR_ENV = "SHIPYARD_DIST_DEBUG_DIR"
#: how long the nodes of a multi-node job wait for each other at the rendezvous
JOIN_TIMEOUT_S = 900
#: every node of one job must name the same rendezvous id; one job per endpoint at a time
MULTINODE_RDZV_ID = "shipyard-train"


def check_world(nproc: int, nnodes: int, node_rank: int, rdzv_endpoint: str | None) -> None:
    """Refuse a launch that cannot work, before any process starts."""
    if nproc < 1 or nnodes < 1:
        raise UsageError("--nproc and --nnodes must be positive integers")
    if nnodes > 1 and not rdzv_endpoint:
        raise UsageError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (the same on every node; "
                         "node 0 listens there) and --node-rank on each node")
    if nnodes == 1 and (node_rank or rdzv_endpoint):
        raise UsageError("--node-rank and --rdzv-endpoint are for jobs on several hosts (--nnodes 2 or more)")
    if not 0 <= node_rank < nnodes:
        raise UsageError(f"--node-rank must be between 0 and {nnodes - 1} for --nnodes {nnodes}, not {node_rank}")
    if rdzv_endpoint:
        host, sep, port = rdzv_endpoint.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--rdzv-endpoint wants HOST:PORT, got {rdzv_endpoint!r}")


def launch(recipe: Recipe | None, settings: Settings, *, nproc: int, nnodes: int = 1, node_rank: int = 0,
           rdzv_endpoint: str | None = None, resume: str | None = None, parent_run_id: str | None = None,
           expect_fingerprint: str | None = None, progress: bool = True,
           init_weights: str | Path | None = None, device_name: str | None = None, name: str | None = None,
           tags: dict[str, str] | None = None) -> Run:
    """Run this node's `nproc` workers through torch's elastic launcher and return the run.

    Node 0 passes the recipe; other nodes may pass None and receive node 0's (they need neither
    the database nor the run folder, only the data at the same path)."""
    check_world(nproc, nnodes, node_rank, rdzv_endpoint)
    if recipe is not None and (recipe.nproc, recipe.nnodes) != (nproc, nnodes):
        raise UsageError(f"the recipe says nproc {recipe.nproc} × nnodes {recipe.nnodes}, "
                         f"the launch {nproc} × {nnodes}")
    # a helper node has no recipe: it takes --device as given here (node 0 checks they agree)
    device = resolve_device(recipe.device if recipe is not None else (device_name or "auto"))
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise UsageError(f"--nproc {nproc} on CUDA needs {nproc} GPUs on this node, torch sees "
                         f"{torch.cuda.device_count()}; use fewer processes or --device cpu")
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    work = Path(tempfile.mkdtemp(prefix="shipyard-dist-"))
    spec = {"recipe": recipe, "settings": settings, "resume": resume, "parent_run_id": parent_run_id,
            "expect_fingerprint": expect_fingerprint, "progress": progress,
            "init_weights": str(init_weights) if init_weights is not None else None,
            "node_rank": node_rank, "nproc": nproc, "nnodes": nnodes, "device": device.type, "name": name, "tags": tags,
            "outcomes": str(work)}
    spec_path = work / "spec.pkl"
    spec_path.write_bytes(pickle.dumps(spec))
    config = LaunchConfig(
        min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc,
        run_id=MULTINODE_RDZV_ID if nnodes > 1 else uuid.uuid4().hex,
        rdzv_backend="c10d", rdzv_endpoint=rdzv_endpoint or "localhost:0",
        # node 0 hosts the rendezvous store: its host name may not resolve to the endpoint's address
        rdzv_configs={"timeout": JOIN_TIMEOUT_S, **({"is_host": node_rank == 0} if nnodes > 1 else {})},
        max_restarts=0,  # a restart would start a second run
        start_method="spawn", local_addr=_local_addr(rdzv_endpoint) if nnodes > 1 else None,
        logs_specs=DefaultLogsSpecs(log_dir=str(work / "logs")),
    )
    console.print(f"data-parallel training: {nproc} process{'es' if nproc > 1 else ''} on this node"
                  + (f" (node {node_rank} of {nnodes}, rendezvous at {rdzv_endpoint})" if nnodes > 1 else "")
                  + f", {'nccl' if device.type == 'cuda' else 'gloo'}")
    saved_ifname = os.environ.get("GLOO_SOCKET_IFNAME")
    if nnodes > 1 and saved_ifname is None and (ifname := _interface_with(config.local_addr)):
        # gloo otherwise takes the address the host name resolves to, often a loopback one
        os.environ["GLOO_SOCKET_IFNAME"] = ifname
    # the launcher's own log lines repeat what the workers report; keep stderr readable
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed.elastic")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    failed: BaseException | None = None
    try:
        try:
            elastic_launch(config, sys.executable)("-m", "shipyard.training.distributed", str(spec_path))
        except (ChildFailedError, SignalException) as e:
            failed = e
        except Exception as e:  # noqa: BLE001 - rendezvous and launch errors become one clear message
            failed = ShipyardError(_launch_error(e, rdzv_endpoint or "", node_rank))
        return _result(work, failed, interrupted=isinstance(failed, SignalException)
                       and getattr(failed, "sigval", None) == signal.SIGINT)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if saved_ifname is None:
            os.environ.pop("GLOO_SOCKET_IFNAME", None)


def _launch_error(e: Exception, endpoint: str, node_rank: int) -> str:
    """The launcher's own failure (mostly the rendezvous), with its cause and what to check."""
    msg = f"the distributed job failed: {type(e).__name__}" + (f": {str(e).splitlines()[0]}" if str(e) else "")
    if (cause := e.__cause__ or e.__context__) is not None and str(cause):
        msg += f" ({type(cause).__name__}: {str(cause).splitlines()[0]})"
    name = type(e).__name__
    if name == "RendezvousTimeoutError":
        msg += f"; not every one of the nodes joined the rendezvous at {endpoint} in time"
    elif name.startswith("Rendezvous") and endpoint:
        msg += (f"; node 0 hosts the rendezvous at {endpoint}: is that address this host's, the port free, "
                "and only one node started with --node-rank 0?" if node_rank == 0 else
                f"; is node 0 up and {endpoint} reachable from here?")
    return msg


def _result(work: Path, failed: BaseException | None, *, interrupted: bool) -> Run:
    """The run, or the error that best explains why the workers stopped."""
    outcomes = []
    for f in sorted(work.glob("outcome-*.pkl")):
        try:
            outcomes.append(pickle.loads(f.read_bytes()))
        except (OSError, pickle.UnpicklingError, EOFError):
            continue
    done = [o["run"] for o in outcomes if o.get("run") is not None]
    if done and not interrupted and not any(o.get("error") for o in outcomes):
        # the run is finished and stored; trouble after the workers reported (the launcher's exit
        # barrier, a peer's teardown) does not undo it
        return done[0]
    if failed is None:
        raise ShipyardError("the distributed job ended without reporting a run")
    if isinstance(failed, ShipyardError) and not outcomes:
        raise failed
    tracker = next((o for o in outcomes if o.get("tracks")), None)
    if interrupted or (tracker is not None and tracker.get("error_type") == "RunInterrupted"):
        if tracker is not None and tracker.get("run_id"):
            raise RunInterrupted(tracker["run_id"], tracker.get("error") or "interrupted")
        raise KeyboardInterrupt
    # the root cause: not a process the launcher stopped, preferably one of ours, then the earliest
    errors = sorted((o for o in outcomes if o.get("error")),
                    key=lambda o: (o["error_type"] == _Stopped.__name__, not o["shipyard"], o["at"]))
    if not errors:
        raise ShipyardError(f"distributed training failed: {failed}")
    root = errors[0]
    msg = root["error"] if root["shipyard"] else f"{root['error_type']}: {root['error']}"
    if not root["shipyard"] and tracker is None:
        msg += " (a process on another node may have failed first; see node 0's output)"
    raise _rebuilt(root["error_type"] if root["shipyard"] else "", msg, root["exit_code"])


def _rebuilt(name: str, msg: str, exit_code: int) -> ShipyardError:
    """The worker's error as the same shipyard exception class (same exit code and `--json`
    error_type), without calling constructors that take more than a message."""
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, ShipyardError)) or cls is RunInterrupted:
        cls = UsageError if exit_code == 2 else ShipyardError
    e = cls.__new__(cls)
    Exception.__init__(e, msg)
    return e


def _local_addr(endpoint: str | None) -> str | None:
    """The address this host uses to reach the rendezvous endpoint: one the other nodes can reach
    too, where the host name may resolve to loopback."""
    if not endpoint:
        return None
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, int(port)))  # UDP: picks the route, sends nothing
            return str(s.getsockname()[0])
    except OSError:
        return None


def _interface_with(addr: str | None) -> str | None:
    """The network interface holding IPv4 `addr` (Linux), unless it is a loopback address."""
    if not addr or addr.startswith("127.") or not hasattr(socket, "if_nameindex"):
        return None
    import fcntl
    import struct

    siocgifaddr = 0x8915
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                packed = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
        if socket.inet_ntoa(packed[20:24]) == addr:
            return name
    return None


# -- the worker side ---------------------------------------------------------------------------

class _Probe:
    """Test hook (`SHIPYARD_DIST_DEBUG_DIR`), a `fit` observer: proves the processes really share
    one model. At the first epoch's start each process saves its data shard and the gradient of
    its own first batch alone (computed on a copy, so training is untouched); an optimizer hook
    saves the all-reduced gradient and the parameters after that first step; at the end, the
    final parameters. Nothing of it runs inside the batch loop."""

    def __init__(self, folder: Path, world: World, node_rank: int) -> None:
        self.folder, self.rank = folder, world.rank
        self.hook: RemovableHandle | None = None
        self.started = False
        folder.mkdir(parents=True, exist_ok=True)
        self.who = {"rank": world.rank, "group_rank": torch.distributed.get_rank(),
                    "tracker_rank": world.tracker_rank, "node_rank": node_rank,
                    "local_rank": world.local_rank, "pid": os.getpid()}

    def _save(self, name: str, arr: np.ndarray) -> None:
        np.save(self.folder / f"rank{self.rank}-{name}.npy", arr)

    @staticmethod
    def _flat(tensors: Any) -> np.ndarray:
        return torch.cat([t.detach().reshape(-1).double().cpu() for t in tensors]).numpy()

    def _unhook(self) -> None:
        if self.hook is not None:
            self.hook.remove()
            self.hook = None

    def epoch_start(self, start: EpochStart) -> None:
        self._unhook()
        if self.started:
            return
        self.started = True
        import copy

        self._save("shard", start.shard.cpu().numpy())
        alone = copy.deepcopy(start.model)
        alone.zero_grad(set_to_none=True)
        with torch.random.fork_rng(devices=[]):
            start.loss_fn(alone(start.xb), start.yb).backward()
        self._save("grad-local", self._flat(p.grad for p in alone.parameters()))
        model, saved = start.model, [False]

        def after_first_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if not saved[0]:  # (removed at the next epoch's start: not while torch iterates its hooks)
                saved[0] = True
                self._save("grad-synced", self._flat(p.grad for p in model.parameters()))
                self._save("params-step1", self._flat(model.parameters()))

        self.hook = start.optimizer.register_step_post_hook(after_first_step)

    def end(self, model: nn.Module) -> None:
        self._unhook()
        self._save("params-end", self._flat(model.parameters()))
        who = {**self.who, "threads": torch.get_num_threads()}
        (self.folder / f"rank{self.rank}-world.json").write_text(json.dumps(who))


class _Stopped(ShipyardError):
    """The launcher stopped this process (SIGTERM), because another one failed."""


def _install_signal_handlers(world: World) -> None:
    """SIGINT (the launcher passing on Ctrl-C) asks the loop to stop at the next batch, so the
    tracker marks the run `interrupted`; SIGTERM (the launcher stopping the job because another
    process failed) fails the run. Repeats are ignored while the first is being handled."""

    def on_int(signum: int, frame: Any) -> None:
        world.stop.set()

    def on_term(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise _Stopped("stopped by the launcher (SIGTERM): another process of the job failed")

    signal.signal(signal.SIGINT, on_int)
    signal.signal(signal.SIGTERM, on_term)


def _worker(spec_path: str) -> int:
    """One process of the job: join the process group, agree who is who, train, report."""
    os.dup2(2, 1)  # the launcher's stdout carries only its own JSON line
    sys.stdout = sys.stderr
    spec = pickle.loads(Path(spec_path).read_bytes())
    local_rank = int(os.environ["LOCAL_RANK"])
    outcome: dict[str, Any] = {"tracks": False, "run": None}
    world = World(local_rank=local_rank)
    _install_signal_handlers(world)
    import torch.distributed as dist

    try:
        cuda = spec["device"] == "cuda"
        if cuda:
            torch.cuda.set_device(local_rank)
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
        size, group_rank = dist.get_world_size(), dist.get_rank()
        me = (spec["node_rank"], local_rank, spec["nproc"], spec["nnodes"])
        everyone: list[Any] = [None] * size
        dist.all_gather_object(everyone, me)
        logical = _logical_ranks(everyone, size)
        world.rank, world.size, world.backend = logical[group_rank], size, backend
        world.tracker_rank = logical.index(0)
        outcome["tracks"] = world.tracks
        folder = os.environ.get(DEBUG_DIR_ENV)
        probe = _Probe(Path(folder), world, spec["node_rank"]) if folder else None
        run = fit(spec["recipe"], spec["settings"], resume=spec["resume"], parent_run_id=spec["parent_run_id"],
                  expect_fingerprint=spec["expect_fingerprint"], progress=spec["progress"],
                  init_weights=spec["init_weights"], world=world, observer=probe, name=spec.get("name"),
                  tags=spec.get("tags"))
        outcome.update(run=run, run_id=run.id)
        code = 0
    except BaseException as e:  # noqa: BLE001 - reported to the launcher, which picks the root cause
        outcome.update(error=str(e) or type(e).__name__, error_type=type(e).__name__,
                       shipyard=isinstance(e, ShipyardError), exit_code=getattr(e, "exit_code", 1),
                       run_id=getattr(e, "run_id", None), traceback=traceback.format_exc())
        code = int(outcome["exit_code"])
    outcome["at"] = time.time()
    out = Path(spec["outcomes"]) / f"outcome-{local_rank}.pkl"
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(outcome))
    os.replace(tmp, out)
    if code == 0 and dist.is_initialized():
        # nobody leaves while a peer may still be reading from it
        with contextlib.suppress(Exception):
            dist.barrier()
    return code


def _main(spec_path: str) -> None:
    """Exit without tearing the process group down: gloo's and the store's C++ threads can abort
    the process in their destructors when a peer has already gone (seen as SIGABRT at exit on a
    loaded machine), and everything worth keeping is written by now."""
    code = _worker(spec_path)
    sys.stderr.flush()
    os._exit(code)


def _logical_ranks(everyone: list[Any], size: int) -> list[int]:
    """`node_rank * nproc + local_rank` for every process-group rank, after checking that the
    nodes agree on the shape of the job and that no node rank is taken twice."""
    shapes = {(nproc, nnodes) for _, _, nproc, nnodes in everyone}
    if len(shapes) > 1:
        said = sorted({(node, nproc, nnodes) for node, _, nproc, nnodes in everyone})
        raise UsageError("the nodes disagree on --nproc/--nnodes ("
                         + ", ".join(f"node {n}: {p} × {m}" for n, p, m in said) + "); pass the same on every node")
    logical = [node * nproc + local for node, local, nproc, _ in everyone]
    if sorted(logical) != list(range(size)):
        taken = sorted(node for node, local, _, _ in everyone if local == 0)
        raise UsageError(f"each node needs its own --node-rank from 0 to {size // everyone[0][2] - 1}; "
                         f"the nodes passed {taken}")
    return logical


if __name__ == "__main__":
    _main(sys.argv[1])
