"""Data-parallel training (`shipyard train --nproc N`, `--nnodes`) with real processes started by
torch's elastic launcher: one tracked run, gradients really synchronised, usage errors before
any worker starts, two "hosts" joined by a c10d rendezvous (two network namespaces over a veth
pair), and Ctrl-C + `--resume` of a distributed run."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
import torch

from shipyard.settings import Settings
from shipyard.store.engine import engine_for
from shipyard.store.schema import runs as runs_table
from shipyard.training import get_run, train
from shipyard.training.distributed import DEBUG_DIR_ENV

from ..conftest import SHIPYARD, run_cli
from ..waiting import wait_for

EPOCHS = 6
RECIPE = ["--data", "mnist-sample", "--epochs", str(EPOCHS), "--seed", "3", "--threads", "2"]
N_TRAIN = 4000  # mnist-sample's training split


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env.update(SHIPYARD_HOME=str(home), PYTHONUNBUFFERED="1", **extra)
    return env


def _last_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def two_procs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `shipyard train --nproc 2 --json` through the CLI, each worker dumping its shard,
    gradients and parameters (the hidden debug hook) for the synchronisation checks."""
    root = tmp_path_factory.mktemp("dist")
    env = _env(root / "home", **{DEBUG_DIR_ENV: str(root / "dump")})
    p = run_cli(["train", *RECIPE, "--nproc", "2", "--json"], env, timeout=240)
    listed = run_cli(["runs", "list", "--json"], env)
    return {"proc": p, "env": env, "dump": root / "dump", "home": root / "home",
            "runs": _last_json(listed.stdout)["runs"]}


def test_nproc_2_is_one_tracked_run_like_a_one_process_run(two_procs: dict[str, Any],
                                                            settings: Settings) -> None:
    p = two_procs["proc"]
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1, p.stdout  # the JSON line, printed once (workers write nothing to stdout)
    out = json.loads(lines[0])
    assert out["status"] == "finished" and out["epochs_run"] == EPOCHS
    assert [r["run_id"] for r in two_procs["runs"]] == [out["run_id"]]  # exactly one run
    # narration and per-epoch lines come from rank 0 alone
    assert p.stderr.count(f"epoch   1/{EPOCHS}") == 1 and p.stderr.count(f"epoch   {EPOCHS}/{EPOCHS}") == 1

    assert out["recipe"]["nproc"] == 2 and out["recipe"]["nnodes"] == 1 and out["recipe"]["batch_size"] == 32
    assert out["threads"] == 1  # the node's 2 threads shared by its 2 processes
    assert out["device"] == "cpu ×2 (gloo)"
    shown = run_cli(["runs", "show", out["run_id"]], two_procs["env"]).stdout
    assert "nproc=2" in shown and "nnodes=1" in shown

    # one TensorBoard event file, written by rank 0; a checkpoint in the usual format
    events = list(Path(out["tensorboard_dir"]).glob("events.out.tfevents.*"))
    assert len(events) == 1
    assert os.path.exists(out["checkpoint"])
    state = torch.load(io.BytesIO(Path(out["checkpoint"]).read_bytes()), weights_only=True)
    alone = train(data="mnist-sample", epochs=EPOCHS, seed=3, threads=2, settings=settings, progress=False)
    ref = torch.load(io.BytesIO(Path(alone.checkpoint or "").read_bytes()), weights_only=True)
    assert list(state) == list(ref) and all(state[k].shape == ref[k].shape for k in ref)

    # the same global batch as one process: the same accuracy band
    assert abs(out["best_val_accuracy"] - (alone.best_val_accuracy or 0)) <= 0.05
    assert out["best_val_accuracy"] > 0.85

    # ... and `optimize` takes it unchanged
    from shipyard.optimizing.build import optimize

    home_settings = Settings(home=two_procs["home"])
    bundle, _, _ = optimize(get_run(out["run_id"], settings=home_settings), settings=home_settings,
                            bench_seconds=0.05)
    assert bundle.meta.lineage.run_id == out["run_id"]


def test_gradients_are_synchronised_across_ranks(two_procs: dict[str, Any]) -> None:
    d: Path = two_procs["dump"]

    def load(rank: int, name: str) -> np.ndarray:
        return np.load(d / f"rank{rank}-{name}.npy")

    # each rank trains on its own half of the epoch's (shared) permutation
    s0, s1 = load(0, "shard"), load(1, "shard")
    assert len(s0) == len(s1) == N_TRAIN // 2
    assert not set(s0.tolist()) & set(s1.tolist())
    assert set(s0.tolist()) | set(s1.tolist()) == set(range(N_TRAIN))
    # so their own gradients differ: without synchronisation the replicas would drift apart
    g0, g1 = load(0, "grad-local"), load(1, "grad-local")
    assert not np.allclose(g0, g1, atol=1e-6)
    # the gradient each applied is the same all-reduced mean
    s_0, s_1 = load(0, "grad-synced"), load(1, "grad-synced")
    assert np.array_equal(s_0, s_1)
    assert np.allclose(s_0, (g0 + g1) / 2, rtol=1e-4, atol=1e-7)
    # and the parameters are identical after the first step and at the end
    assert np.array_equal(load(0, "params-step1"), load(1, "params-step1"))
    assert np.array_equal(load(0, "params-end"), load(1, "params-end"))
    assert not np.array_equal(load(0, "params-step1"), load(0, "params-end"))
    who = [json.loads((d / f"rank{r}-world.json").read_text()) for r in (0, 1)]
    assert [w["threads"] for w in who] == [1, 1]
    assert len({w["pid"] for w in who}) == 2


def test_batch_size_not_divisible_is_a_usage_error_before_any_worker(cli_env: dict[str, str]) -> None:
    p = run_cli(["train", "--nproc", "2", "--batch-size", "33", "--epochs", "1", "--json"], cli_env, check=False)
    assert p.returncode == 2, p.stderr
    err = _last_json(p.stdout)
    assert "batch_size" in err["error"] and "2 processes" in err["error"] and "try 34" in err["error"]
    assert "data-parallel training" not in p.stderr  # refused before launching
    assert not (Path(cli_env["SHIPYARD_HOME"]) / "runs").exists() or not any(
        (Path(cli_env["SHIPYARD_HOME"]) / "runs").iterdir())
    p = run_cli(["train", "--nnodes", "2", "--json"], cli_env, check=False)
    assert p.returncode == 2 and "--rdzv-endpoint" in _last_json(p.stdout)["error"]
    p = run_cli(["train", "--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "127.0.0.1:1", "--json"],
                cli_env, check=False)
    assert p.returncode == 2 and "--node-rank" in _last_json(p.stdout)["error"]
    assert "data-parallel training" not in p.stderr


def _two_nodes(endpoint: str, node_cmd: list[list[str]], envs: list[dict[str, str]],
               dump: Path) -> tuple[list[subprocess.CompletedProcess[str]], list[dict[str, Any]]]:
    """Start node 1 first (so the rendezvous is likely to give it process-group rank 0): node 0
    starts once node 1's launcher has begun. Wait for both."""
    procs, logs = [], [dump.parent / f"node{node}.stderr" for node in (0, 1)]
    for node in (1, 0):
        args = [*node_cmd[node], *SHIPYARD, "train", "--data", "mnist-sample", "--epochs", "2", "--threads", "1",
                "--nnodes", "2", "--nproc", "1", "--node-rank", str(node), "--rdzv-endpoint", endpoint, "--json"]
        with logs[node].open("w") as err:
            p = subprocess.Popen(args, env={**envs[node], DEBUG_DIR_ENV: str(dump)}, text=True,
                                 stdout=subprocess.PIPE, stderr=err)
        procs.append(p)
        if node == 1:
            wait_for(lambda: "data-parallel training" in logs[1].read_text() or procs[0].poll() is not None,
                     "node 1 to start its launcher", timeout=120)
    done = []
    for node, p in zip((0, 1), reversed(procs), strict=True):
        out, _ = p.communicate(timeout=180)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, logs[node].read_text()))
    for node, c in enumerate(done):
        assert c.returncode == 0, f"node {node}: {c.stderr}"
    who = [json.loads((dump / f"rank{r}-world.json").read_text()) for r in (0, 1)]
    return done, who


def _check_one_run(home: Path, done: list[subprocess.CompletedProcess[str]], who: list[dict[str, Any]]) -> None:
    outs = [_last_json(c.stdout) for c in done]
    assert outs[0]["run_id"] == outs[1]["run_id"] and outs[0]["status"] == "finished"
    assert outs[0]["recipe"]["nnodes"] == 2 and outs[0]["recipe"]["nproc"] == 1
    listed = _last_json(run_cli(["runs", "list", "--json"], _env(home)).stdout)["runs"]
    assert [r["run_id"] for r in listed] == [outs[0]["run_id"]]
    # only rank 0 of node 0 tracks: its pid is the run's, and only node 0 narrates the epochs
    assert who[0]["node_rank"] == 0 and who[1]["node_rank"] == 1
    assert get_run(outs[0]["run_id"], settings=Settings(home=home)).pid == who[0]["pid"]
    assert "epoch   1/2" in done[0].stderr and "epoch   1/2" not in done[1].stderr


def test_two_nodes_on_localhost_track_one_run(tmp_path: Path) -> None:
    home, dump = tmp_path / "home", tmp_path / "dump"
    env = _env(home)
    done, who = _two_nodes(f"127.0.0.1:{_free_port()}", [[], []], [env, env], dump)
    _check_one_run(home, done, who)
    assert np.array_equal(np.load(dump / "rank0-params-end.npy"), np.load(dump / "rank1-params-end.npy"))
    # the tracker is found by node rank, not by the order the rendezvous admitted the nodes in
    assert who[0]["tracker_rank"] == who[0]["group_rank"]


@pytest.fixture
def netns_pair() -> Iterator[list[tuple[str, str]]]:
    """Two network namespaces joined by a veth pair, 10.78.0.1/24 and 10.78.0.2/24: two hosts
    that share only this machine's file system (where the SQLite database lives). Yields
    (namespace, interface) for each; both are removed afterwards."""
    tag = f"{os.getpid() % 100000}"
    names, links = [f"sydt{tag}a", f"sydt{tag}b"], [f"sydt{tag}x", f"sydt{tag}y"]

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    try:
        # needs root and iproute2 (the test command runs as root; `make system-deps` installs
        # iproute2): a failure here fails the test, it does not skip it
        for ns in names:
            ip("netns", "add", ns)
        ip("link", "add", links[0], "type", "veth", "peer", "name", links[1])
        for ns, link, addr in zip(names, links, ("10.78.0.1/24", "10.78.0.2/24"), strict=True):
            ip("link", "set", link, "netns", ns)
            ip("-n", ns, "addr", "add", addr, "dev", link)
            ip("-n", ns, "link", "set", link, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield list(zip(names, links, strict=True))
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", links[0]], capture_output=True, timeout=30)


def test_two_nodes_in_two_network_namespaces_track_one_run(tmp_path: Path,
                                                          netns_pair: list[tuple[str, str]]) -> None:
    home, dump = tmp_path / "home", tmp_path / "dump"
    envs = [_env(home, GLOO_SOCKET_IFNAME=link) for _, link in netns_pair]
    done, who = _two_nodes("10.78.0.1:29517", [["ip", "netns", "exec", ns] for ns, _ in netns_pair], envs, dump)
    _check_one_run(home, done, who)
    assert np.array_equal(np.load(dump / "rank0-params-end.npy"), np.load(dump / "rank1-params-end.npy"))


def test_ctrl_c_then_resume_matches_the_uninterrupted_distributed_run(
    two_procs: dict[str, Any], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = _env(home)
    proc = subprocess.Popen([*SHIPYARD, "train", *RECIPE, "--nproc", "2", "--json"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    engine = engine_for(Settings(home=home).db_url)
    deadline = time.monotonic() + 120
    run_id = None
    while time.monotonic() < deadline and run_id is None:
        assert proc.poll() is None, proc.communicate()[1]
        if (home / "shipyard.db").exists():
            with engine.connect() as conn:
                row = conn.execute(sa.select(runs_table.c.id, runs_table.c.epochs_run)).first()
            if row is not None and row.epochs_run >= 1:
                run_id = str(row.id)
        time.sleep(0.02)
    assert run_id is not None, "training did not reach epoch 1 in time"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    out = _last_json(stdout)
    assert out["run_id"] == run_id and out["status"] == "interrupted", stderr
    assert 1 <= out["epochs_run"] < EPOCHS and f"--resume {run_id}" in stderr

    p = run_cli(["train", "--resume", run_id, "--json"], env)  # the recipe brings back --nproc 2
    resumed = _last_json(p.stdout)
    assert resumed["run_id"] == run_id and resumed["status"] == "finished" and resumed["epochs_run"] == EPOCHS
    assert "2 processes" in p.stderr
    straight = _last_json(two_procs["proc"].stdout)
    assert resumed["metrics"]["val_accuracy"] == straight["metrics"]["val_accuracy"]
    assert resumed["metrics"]["train_loss"] == straight["metrics"]["train_loss"]
    assert resumed["checkpoint_sha256"] == straight["checkpoint_sha256"]
    # a resume continues exactly, so the world size cannot change
    p = run_cli(["train", "--resume", run_id, "--epochs", str(EPOCHS + 1), "--nproc", "1", "--json"], env,
                check=False)
    assert p.returncode == 2 and "nproc" in _last_json(p.stdout)["error"]
