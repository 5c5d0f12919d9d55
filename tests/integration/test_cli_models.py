"""`shipyard models …` end to end, as a user and a script would run it: `--json` shapes, tables,
exit codes 0/1/2, one clear error line and never a traceback."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

import pytest

from harness.bundles import make_bundle
from shipyard.bundle import verify
from shipyard.registry import Registry
from shipyard.settings import Settings
from shipyard.store.engine import dispose_engines

from ..conftest import SHIPYARD, run_cli

VERBS = ["register", "list", "show", "compare", "download", "alias", "unalias", "history", "delete"]


pytestmark = pytest.mark.usefixtures("close_pools")


def last_json(stdout: str) -> dict:  # type: ignore[type-arg]
    lines = stdout.strip().splitlines()
    assert lines, "no output on stdout"
    return json.loads(lines[-1])


def models(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """`shipyard models ARGS` with no terminal on stdin (as in a script or CI)."""
    p = subprocess.run([*SHIPYARD, "models", *args], env=env, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"shipyard models {' '.join(args)} exited {p.returncode}:\n{p.stderr}")
    return p


@pytest.fixture
def registered(cli_env: dict[str, str], tmp_path: Path) -> Registry:
    """tiny@1 (alias production) and tiny@2, registered through the Python API."""
    reg = Registry(settings=Settings(home=Path(cli_env["SHIPYARD_HOME"])))
    reg.register(make_bundle(tmp_path / "r1", seed=1), alias="production", reason="first")
    reg.register(make_bundle(tmp_path / "r2", seed=2))
    dispose_engines()
    return reg


def test_every_verb_json_contract(cli_env: dict[str, str], tmp_path: Path) -> None:
    b1, b2 = make_bundle(tmp_path / "b1", seed=1), make_bundle(tmp_path / "b2", seed=2)
    p = models(["register", str(b1), "--json"], cli_env)
    assert len(p.stdout.strip().splitlines()) == 1  # exactly one line: the JSON object
    first = last_json(p.stdout)
    assert (first["name"], first["version"], first["aliases"]) == ("tiny", 1, [])
    assert "registered tiny@1" in p.stderr  # narration goes to stderr

    second = last_json(models(["register", str(b2), "--name", "digits", "--alias", "production",
                               "--tag", "team=vision", "--tag", "data=mnist", "--description", "wider",
                               "--reason", "ship it", "--json"], cli_env).stdout)
    assert (second["name"], second["version"], second["aliases"]) == ("digits", 1, ["production"])
    assert second["tags"] == {"team": "vision", "data": "mnist"} and second["description"] == "wider"
    again = last_json(models(["register", str(b1), "--name", "digits", "--json"], cli_env).stdout)
    assert again["version"] == 2

    listed = last_json(models(["list", "--json"], cli_env).stdout)
    assert [m["name"] for m in listed["models"]] == ["digits", "tiny"]
    digits = listed["models"][0]
    assert [v["version"] for v in digits["versions"]] == [1, 2]
    assert digits["aliases"] == {"production": 1} and digits["latest_version"] == 2
    assert digits["versions"][0]["metrics"]["accuracy"] == 0.9

    shown = last_json(models(["show", "digits@production", "--json"], cli_env).stdout)
    assert (shown["version"], shown["aliases"]) == (1, ["production"])
    assert shown["meta"]["signature"]["inputs"][0]["name"] == "input"
    assert shown["bundle_sha256"] == second["bundle_sha256"]

    cmp = last_json(models(["compare", "digits@1", "digits@2", "--json"], cli_env).stdout)
    assert cmp["refs"] == ["digits@1", "digits@2"] and cmp["chosen"] == ["fp32", "fp32"]
    assert cmp["metrics"]["accuracy"] == [0.9, 0.9]

    moved = last_json(models(["alias", "digits", "production", "2", "--reason", "canary passed", "--json"],
                             cli_env).stdout)
    assert moved == {"name": "digits", "alias": "production", "from_version": 1, "to_version": 2, "changed": True}
    models(["alias", "digits", "candidate", "1", "--json"], cli_env)
    removed = last_json(models(["unalias", "digits", "candidate", "--reason", "done", "--json"], cli_env).stdout)
    assert (removed["from_version"], removed["to_version"]) == (1, None)

    dl = last_json(models(["download", "digits@production", str(tmp_path / "dl"), "--json"], cli_env).stdout)
    assert (dl["name"], dl["version"]) == ("digits", 2)
    assert verify(Path(dl["path"])) == verify(b1)
    assert set(dl["files"]) == {"model.onnx", "bundle.json", "MANIFEST.sha256"}

    gone = last_json(models(["delete", "digits@1", "--yes", "--reason", "superseded", "--json"], cli_env).stdout)
    assert gone == {"deleted": "digits@1", "name": "digits", "version": 1}

    hist = last_json(models(["history", "digits", "--json"], cli_env).stdout)
    assert hist["name"] == "digits"
    assert [(e["kind"], e["version"], e["reason"]) for e in hist["events"]] == [
        ("register", 1, "ship it"), ("alias", 1, "ship it"), ("register", 2, None),
        ("alias", 2, "canary passed"), ("alias", 1, None), ("unalias", 1, "done"), ("delete", 1, "superseded")]
    assert all("@" in e["actor"] and e["at"] for e in hist["events"])
    newest = last_json(models(["history", "digits", "--limit", "1", "--json"], cli_env).stdout)
    assert [e["kind"] for e in newest["events"]] == ["delete"]


def test_tables_for_people(registered: Registry, cli_env: dict[str, str]) -> None:
    listed = models(["list"], cli_env).stdout
    assert "tiny" in listed and "production" in listed and "90.00%" in listed
    shown = models(["show", "tiny@1"], cli_env).stdout
    assert "tiny@1  (production)" in shown and "input float32 [-1, 784]" in shown and "fp32 *" in shown
    assert "accuracy" in models(["compare", "tiny@1", "tiny@2"], cli_env).stdout
    hist = models(["history", "tiny"], cli_env).stdout
    assert "production: – → 1" in hist and "first" in hist
    assert models(["alias", "tiny", "production", "1"], cli_env).stderr.strip().endswith("nothing changed")


def test_no_models_yet(cli_env: dict[str, str]) -> None:
    assert "no models yet" in models(["list"], cli_env).stdout
    assert last_json(models(["list", "--json"], cli_env).stdout) == {"models": []}


@pytest.mark.parametrize("args", [["models"], *[["models", verb] for verb in VERBS]])
def test_help_on_every_verb(args: list[str], cli_env: dict[str, str]) -> None:
    p = run_cli([*args, "--help"], cli_env)
    assert "Usage:" in p.stdout and "--help" in p.stdout
    if len(args) == 2:
        assert "--json" in p.stdout


@pytest.mark.parametrize(("args", "code", "message"), [
    (["show", "nosuch"], 1, "no model 'nosuch'"),
    (["show", "tiny@9"], 1, "model 'tiny' has no version 9 (versions: 1, 2)"),
    (["show", "tiny@staging"], 1, "model 'tiny' has no alias 'staging' (aliases: production→1)"),
    (["show", "a@b@c"], 2, "not a model reference: 'a@b@c'"),
    (["compare", "tiny@1", "tiny@7"], 1, "no version 7"),
    (["alias", "tiny", "3", "1"], 2, "alias '3' is a number"),
    (["alias", "tiny", "Prod", "1"], 2, "not an alias: 'Prod'"),
    (["alias", "tiny", "production", "two"], 2, "not a version number: 'two'"),
    (["alias", "tiny", "production", "5"], 1, "no version 5"),
    (["unalias", "tiny", "candidate"], 1, "no alias 'candidate'"),
    (["history", "nosuch"], 1, "no model 'nosuch'"),
    (["register", "/nonexistent/bundle"], 1, "/nonexistent/bundle: no such bundle"),
    (["register", "/nonexistent/bundle", "--tag", "oops"], 2, "--tag wants KEY=VALUE"),
    (["delete", "tiny@1", "--yes"], 1, "refusing to delete tiny@1: alias production points at it"),
    (["delete", "tiny", "--yes"], 2, "delete needs one version"),
    (["delete", "tiny@2"], 2, "pass --yes"),
    (["delete", "tiny@9", "--yes"], 1, "no version 9"),
    (["history", "tiny", "--limit", "0"], 2, "--limit must be a positive integer"),
])
def test_errors_are_one_clear_line_with_meaningful_exit_codes(registered: Registry, cli_env: dict[str, str],
                                                              args: list[str], code: int, message: str) -> None:
    for as_json in (False, True):
        p = models([*args, "--json"] if as_json else args, cli_env, check=False)
        assert p.returncode == code, p.stderr
        assert "Traceback" not in p.stderr
        assert p.stderr.strip().splitlines() == [p.stderr.strip()], p.stderr  # one line
        assert p.stderr.startswith("error: ") and message in p.stderr
        if as_json:
            assert message in last_json(p.stdout)["error"]
        else:
            assert p.stdout == ""
    assert [v.version for v in registered.list()[0].versions] == [1, 2]  # nothing changed
    assert registered.get("tiny@production").version == 1


def test_a_tampered_or_unloadable_bundle_is_refused(cli_env: dict[str, str], tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b")
    (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes()[:-1] + b"\x00")
    p = models(["register", str(b), "--json"], cli_env, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"{b / 'model.onnx'}: checksum mismatch" in last_json(p.stdout)["error"]
    assert last_json(p.stdout)["error_type"] == "BundleError"
    assert last_json(models(["list", "--json"], cli_env).stdout) == {"models": []}


def test_a_download_folder_must_be_new_or_empty(registered: Registry, cli_env: dict[str, str],
                                                tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    p = models(["download", "tiny@1", str(busy), "--json"], cli_env, check=False)
    assert p.returncode == 2 and "exists and is not empty" in last_json(p.stdout)["error"]
    assert [x.name for x in busy.iterdir()] == ["keep.txt"]
    assert models(["download", "tiny", str(tmp_path / "new")], cli_env).stdout.strip() == str(tmp_path / "new")
    verify(tmp_path / "new")


def test_delete_asks_for_confirmation_on_a_terminal(registered: Registry, cli_env: dict[str, str]) -> None:
    def delete_answering(answer: bytes) -> subprocess.CompletedProcess[str]:
        master, slave = pty.openpty()
        try:
            p = subprocess.Popen([*SHIPYARD, "models", "delete", "tiny@2"], env=cli_env, stdin=slave,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            os.close(slave)
            os.write(master, answer)
            out, err = p.communicate(timeout=300)
        finally:
            os.close(master)
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)

    no = delete_answering(b"n\n")
    assert no.returncode == 1 and "Delete tiny@2" in no.stderr and "tiny@2 not deleted" in no.stderr
    assert registered.get("tiny@2").version == 2
    yes = delete_answering(b"y\n")
    assert yes.returncode == 0 and "deleted tiny@2" in yes.stderr
    assert [v.version for v in registered.list()[0].versions] == [1]


@pytest.mark.parametrize("url", ["postgresql+psycopg://nobody@127.0.0.1:1/none", "sqlite:////proc/nope/x.db"])
def test_unreachable_database_is_exit_1_and_one_clear_line(cli_env: dict[str, str], url: str) -> None:
    for args in (["--db", url, "models", "list", "--json"],
                 ["--db", url, "models", "show", "tiny", "--json"]):
        p = run_cli(args, cli_env, check=False)
        assert p.returncode == 1, p.stderr
        assert "Traceback" not in p.stderr
        assert p.stderr.strip().splitlines() == [p.stderr.strip()]
        assert "database" in p.stderr and url.split("://")[0] in last_json(p.stdout)["error"]
    env = dict(cli_env, SHIPYARD_DATABASE_URL=url)
    p = run_cli(["models", "list"], env, check=False)
    assert p.returncode == 1 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr


def test_the_cli_against_postgresql(fresh_pg_url: str, cli_env: dict[str, str], tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b")
    env = dict(cli_env, SHIPYARD_DATABASE_URL=fresh_pg_url)
    reg = last_json(models(["register", str(b), "--alias", "production", "--json"], env).stdout)
    assert (reg["name"], reg["version"]) == ("tiny", 1)
    shown = last_json(run_cli(["--db", fresh_pg_url, "models", "show", "tiny@production", "--json"], cli_env).stdout)
    assert shown["bundle_sha256"] == reg["bundle_sha256"]
    assert not (Path(cli_env["SHIPYARD_HOME"]) / "shipyard.db").exists()  # nothing went to SQLite
    assert last_json(models(["list", "--json"], cli_env).stdout) == {"models": []}  # SQLite stays empty


def test_models_verbs_do_not_import_torch(registered: Registry, cli_env: dict[str, str], tmp_path: Path) -> None:
    code = ("import sys\nfrom shipyard.cli.app import app\n"
            "for args in (['list'], ['show', 'tiny@production'], ['alias', 'tiny', 'candidate', '2']):\n"
            "    try:\n        app(['models', *args, '--json'])\n    except SystemExit as e:\n"
            "        assert e.code == 0, e.code\n"
            "print('torch' in sys.modules, 'onnxruntime' in sys.modules)\n")
    p = subprocess.run([SHIPYARD[0], "-c", code], env=cli_env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "False True"  # onnxruntime for the alias's trial load only
    assert registered.get("tiny@candidate").version == 2
