"""The `shipyard` command end to end, as a user and a script would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..conftest import run_cli


def last_json(stdout: str) -> dict:  # type: ignore[type-arg]
    lines = stdout.strip().splitlines()
    assert lines, "no output on stdout"
    return json.loads(lines[-1])


def test_train_json_contract_checkpoint_and_tensorboard(cli_env: dict[str, str]) -> None:
    p = run_cli(["train", "--data", "mnist-sample", "--epochs", "2", "--json"], cli_env)
    assert len(p.stdout.strip().splitlines()) == 1  # exactly one line, the JSON object
    out = last_json(p.stdout)
    for key in ("run_id", "status", "best_val_accuracy", "test_accuracy", "epochs_run",
                "checkpoint", "tensorboard_dir"):
        assert key in out
    assert out["status"] == "finished" and out["epochs_run"] == 2 and out["test_accuracy"] is None
    assert 0.8 < out["best_val_accuracy"] <= 1.0
    assert "epoch   2/2" in p.stderr  # narration goes to stderr
    state = torch.load(out["checkpoint"], weights_only=True)
    assert set(state) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    assert list(Path(out["tensorboard_dir"]).glob("events.out.tfevents.*"))

    listed = last_json(run_cli(["runs", "list", "--json"], cli_env).stdout)
    assert [r["run_id"] for r in listed["runs"]] == [out["run_id"]]
    shown = last_json(run_cli(["runs", "show", out["run_id"][:5], "--json"], cli_env).stdout)
    assert shown["metrics"]["val_accuracy"][-1] == pytest.approx(out["metrics"]["val_accuracy"][-1])
    table = run_cli(["runs", "show", "latest"], cli_env).stdout
    assert out["run_id"] in table and "val acc" in table

    second = last_json(run_cli(["train", "--like", out["run_id"], "--epochs", "1", "--lr", "0.01",
                                "--json", "-q"], cli_env).stdout)
    cmp = last_json(run_cli(["runs", "compare", out["run_id"], second["run_id"], "--json"], cli_env).stdout)
    assert cmp["differing_params"] == ["epochs", "lr"]
    assert cmp["params"]["lr"] == [0.001, 0.01]
    plot = last_json(run_cli(["runs", "plot", out["run_id"], second["run_id"], "--json"], cli_env).stdout)
    png = Path(plot["plot"]).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


@pytest.mark.parametrize("args", [
    [], ["train"], ["runs"], ["runs", "list"], ["runs", "show"], ["runs", "compare"],
    ["runs", "plot"], ["runs", "tag"], ["data"], ["data", "show"], ["monitor", "ack"],
])
def test_help_everywhere(args: list[str], cli_env: dict[str, str]) -> None:
    p = run_cli([*args, "--help"], cli_env)
    assert "Usage:" in p.stdout and "--help" in p.stdout


@pytest.mark.parametrize(("args", "code", "message"), [
    (["train", "--optimizer", "adagrad", "--json"], 2, "'optimizer' has value 'adagrad'"),
    (["train", "--data", "nosuch:thing", "--json"], 2, "unknown data source"),
    (["train", "--data", "idx:/nonexistent", "--json"], 1, "/nonexistent: no such folder"),
    (["train", "--model-arg", "oops", "--json"], 2, "KEY=VALUE"),
    (["runs", "show", "abcdef", "--json"], 1, "no run 'abcdef'"),
    (["runs", "list", "--status", "weird", "--json"], 2, "unknown status"),
    (["train", "--tag", "oops", "--json"], 2, "--tag wants KEY=VALUE, got 'oops'"),
    (["train", "--tag", "bad key=1", "--json"], 2, "tag key 'bad key': 1..64 characters of A-Z a-z 0-9 _ . -"),
    (["train", "--name", "n" * 129, "--json"], 2, "a run name must be at most 128 characters, got 129"),
    (["runs", "tag", "abcdef", "--name", "x", "--json"], 1, "no run 'abcdef'"),
    (["runs", "list", "--tag", "bad key", "--json"], 2, "tag filter 'bad key'"),
])
def test_errors_are_clear_with_meaningful_exit_codes(args: list[str], code: int, message: str,
                                                     cli_env: dict[str, str]) -> None:
    p = run_cli(args, cli_env, check=False)
    assert p.returncode == code, p.stderr
    assert message in p.stderr
    assert message in last_json(p.stdout)["error"]
    assert "Traceback" not in p.stderr


def test_usage_errors_from_the_parser_exit_2(cli_env: dict[str, str]) -> None:
    p = run_cli(["train", "--epochs", "many"], cli_env, check=False)
    assert p.returncode == 2 and "--epochs" in p.stderr and "integer" in p.stderr
    assert p.stdout == ""  # no --json: nothing on stdout
    for args, word in ((["train", "--epochs", "many", "--json"], "--epochs"),
                       (["models", "show", "--json", "--no-such-flag"], "--no-such-flag"),
                       (["rollout", "--json"], "NAME")):
        p = run_cli(args, cli_env, check=False)
        assert p.returncode == 2, (args, p.stderr)
        assert word in last_json(p.stdout)["error"] and word in p.stderr


def test_data_show(cli_env: dict[str, str]) -> None:
    info = last_json(run_cli(["data", "show", "mnist-sample", "--json"], cli_env).stdout)
    assert info["samples"] == 5000 and info["input_shape"] == [28, 28]
    assert info["class_counts"] == [500] * 10 and len(info["fingerprint"]) == 64


def test_verbs_that_do_not_train_never_import_torch(cli_env: dict[str, str]) -> None:
    code = (
        "import sys\n"
        "from shipyard.cli.app import app\n"
        "for argv in (['runs', 'list'], ['data', 'show', 'mnist-sample'], ['--help']):\n"
        "    try:\n"
        "        app(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (argv, e.code)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], env=cli_env, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr


def test_command_modules_import_common_never_the_app() -> None:
    """cli/app.py registers every verb; a verb module importing it back (even inside a function)
    would be a cycle. `shipyard.cli` still re-exports the app and main."""
    import ast

    import typer

    import shipyard.cli
    from shipyard.cli import app, main
    from shipyard.cli.app import main as app_main

    assert isinstance(app, typer.Typer) and main is app_main
    folder = Path(shipyard.cli.__file__).parent
    for path in sorted(folder.glob("*.py")):
        if path.name in ("__init__.py", "app.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                       else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert not {"shipyard.cli", "shipyard.cli.app"} & set(targets), f"{path.name} imports the app"


def test_an_unexpected_failure_still_keeps_the_json_contract(cli_env: dict[str, str]) -> None:
    # dropout=2 is rejected inside torch, not by us: still one line, a JSON object, exit 1
    p = run_cli(["train", "--model-arg", "dropout=2", "--epochs", "1", "--json"], cli_env, check=False)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr and "dropout" in p.stderr
    assert "dropout" in last_json(p.stdout)["error"]


def test_train_names_and_tags_a_run_and_runs_shows_and_edits_them(cli_env: dict[str, str]) -> None:
    out = last_json(run_cli(["train", "--data", "sklearn:iris", "--epochs", "1", "-q", "--name", "iris try",
                             "--tag", "team=vision", "--tag", "stage=dev", "--json"], cli_env).stdout)
    run_id = out["run_id"]
    assert out["name"] == "iris try" and out["tags"] == {"team": "vision", "stage": "dev"}
    listed = last_json(run_cli(["runs", "list", "--tag", "team=vision", "--json"], cli_env).stdout)["runs"]
    assert [(r["run_id"], r["name"], r["tags"]) for r in listed] == [(run_id, "iris try", out["tags"])]
    assert last_json(run_cli(["runs", "list", "--tag", "team=audio", "--json"], cli_env).stdout)["runs"] == []
    table = run_cli(["runs", "list"], cli_env).stdout
    assert run_id in table and "iris try" in table and "stage=dev" in table
    shown = run_cli(["runs", "show", run_id], cli_env).stdout
    assert "iris try" in shown and "stage=dev team=vision" in shown

    tagged = last_json(run_cli(["runs", "tag", run_id[:6], "--name", "iris final", "--tag", "stage=prod",
                                "--untag", "team", "--json"], cli_env).stdout)
    assert (tagged["run_id"], tagged["name"], tagged["tags"]) == (run_id, "iris final", {"stage": "prod"})
    assert last_json(run_cli(["runs", "show", run_id, "--json"], cli_env).stdout)["tags"] == {"stage": "prod"}
    assert last_json(run_cli(["runs", "list", "--name", "iris try", "--json"], cli_env).stdout)["runs"] == []
    human = run_cli(["runs", "tag", run_id, "--name", ""], cli_env).stdout
    assert f"run {run_id}  name –  tags stage=prod" in human
    bad = run_cli(["runs", "tag", run_id, "--untag", "team", "--tag", "ok=1", "--json"], cli_env, check=False)
    assert bad.returncode == 2
    assert f"run {run_id} has no tag 'team' (its tags: ok, stage)" in last_json(bad.stdout)["error"]
    bad = run_cli(["runs", "tag", run_id, "--tag", "nothing"], cli_env, check=False)
    assert bad.returncode == 2 and "--tag wants KEY=VALUE, got 'nothing'" in bad.stderr
