"""scripts/check_layout.py on a made-up package: which imports make an edge, how a cycle is shown."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layout", ROOT / "scripts" / "check_layout.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_layout"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        f = root / "src" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return root / "src"


def test_function_local_and_relative_imports_count_type_checking_ones_do_not(tmp_path: Path) -> None:
    check = load_checker()
    src = write(tmp_path, {
        "pk/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pk import b\n",
        "pk/a.py": "def f():\n    from . import b\n",  # an edge to the module pk.b
        "pk/b.py": "import typing\nif typing.TYPE_CHECKING:\n    import pk.a\nelse:\n    from .c import x\n",
        "pk/c.py": "x = 1\n",
    })
    modules = check.module_names(src, "pk")
    assert set(modules) == {"pk", "pk.a", "pk.b", "pk.c"}
    edges = {(e.src, e.dst) for name, path in modules.items() for e in check.edges_of(name, path, modules, "pk")}
    assert edges == {("pk.a", "pk.b"), ("pk.b", "pk.c")}


def test_a_cycle_through_the_package_init_is_reported_as_a_path(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    check = load_checker()
    src = write(tmp_path, {
        "pk/__init__.py": "from pk.stage import go\n",
        "pk/stage/__init__.py": "from .run import go\n",
        "pk/stage/run.py": "def go():\n    import pk\n    return pk.other()\n",
        "pk/fine.py": "from pk import stage\n",
    })
    assert check.main(["--src", str(src), "--package", "pk"]) == 1
    out = capsys.readouterr().out
    assert "import cycle (3 modules: pk, pk.stage, pk.stage.run)" in out
    assert "pk  imports  pk.stage    (" in out and "pk.stage.run  imports  pk    (" in out
    assert "run.py:2)" in out  # where the offending import is
    assert "pk.fine" not in out


def test_long_modules_fail_and_a_clean_tree_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check = load_checker()
    src = write(tmp_path, {"pk/__init__.py": "from pk import a\n", "pk/a.py": "x = 1\n" * 501})
    assert check.main(["--src", str(src), "--package", "pk"]) == 1
    assert "pk/a.py (pk.a): 501 lines" in capsys.readouterr().out
    assert check.main(["--src", str(src), "--package", "pk", "--max-lines", "501"]) == 0
    assert capsys.readouterr().out.startswith("check_layout: ok: 2 modules, 1 imports")
