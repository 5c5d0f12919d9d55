"""Own model factories: `path/to/file.py:factory` and `package.module:factory` without PYTHONPATH,
the keyword arguments a factory gets, one-line errors, and `check_fits`' one batch."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shipyard.errors import ConfigError, UsageError
from shipyard.training.zoo import build_model, canonical_model, check_fits

FACTORIES = """
import torch

def make(num_features, num_classes, width=4):
    return torch.nn.Sequential(torch.nn.Linear(num_features, width), torch.nn.ReLU(),
                               torch.nn.Linear(width, num_classes))

def seen(**kw):
    m = torch.nn.Identity()
    m.kwargs = kw
    return m

def only_classes(num_classes):
    m = torch.nn.LazyLinear(num_classes)
    m.kwargs = {"num_classes": num_classes}
    return m

def not_a_module(**kw):
    return 42

def explodes(num_features):
    raise ValueError("no good " + str(num_features))

NOT_CALLABLE = 3
"""


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "proj" / "mymodels_zf.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(FACTORIES))
    monkeypatch.chdir(path.parent)
    yield path
    sys.modules.pop("mymodels_zf", None)


def test_file_factory_relative_and_absolute(factories: Path) -> None:
    for ref in ("mymodels_zf.py:make", "./mymodels_zf.py:make", f"{factories}:make"):
        m = build_model(ref, input_shape=(8, 8), num_classes=3, args={"width": 5})
        assert isinstance(m, torch.nn.Sequential) and m[0].out_features == 5
        assert m(torch.rand(2, 64)).shape == (2, 3)
    assert "mymodels_zf" not in sys.modules  # loaded by path under its own name
    assert not any(p == str(factories.parent) for p in sys.path)


def test_file_factory_home_relative(factories: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(factories.parent.parent))
    m = build_model("~/proj/mymodels_zf.py:make", input_shape=(4,), num_classes=2)
    assert m(torch.rand(1, 4)).shape == (1, 2)
    assert canonical_model("~/proj/mymodels_zf.py:make") == f"{factories}:make"


def test_module_factory_found_in_the_current_directory(factories: Path) -> None:
    m = build_model("mymodels_zf:make", input_shape=(6,), num_classes=2)
    assert m(torch.rand(3, 6)).shape == (3, 2)
    assert str(factories.parent) not in sys.path  # only for the import


def test_canonical_model_makes_file_paths_absolute(factories: Path) -> None:
    assert canonical_model("./mymodels_zf.py:make") == f"{factories}:make"
    assert canonical_model("mymodels_zf.py:make") == f"{factories}:make"
    assert canonical_model("mlp") == "mlp" and canonical_model("cnn") == "cnn"
    assert canonical_model("mymodels_zf:make") == "mymodels_zf:make"  # a module reference stays


def test_kwargs_passed_only_when_accepted(factories: Path) -> None:
    m = build_model("mymodels_zf.py:seen", input_shape=(8, 8), num_classes=10, num_features=70,
                    args={"extra": [1, 2]})
    assert m.kwargs == {"input_shape": (8, 8), "num_features": 70, "num_classes": 10, "extra": [1, 2]}
    m = build_model("mymodels_zf.py:only_classes", input_shape=(8, 8), num_classes=4)
    assert m.kwargs == {"num_classes": 4}


def test_num_features_defaults_to_the_input_size_and_reaches_the_zoo() -> None:
    m = build_model("mlp", input_shape=(3, 4), num_classes=2)
    assert m.net[0].in_features == 12
    m = build_model("mlp", input_shape=(3,), num_features=9, num_classes=2)  # one-hot columns widen it
    assert m.net[0].in_features == 9 and m(torch.rand(2, 9)).shape == (2, 2)


def test_errors_are_one_clear_line(factories: Path) -> None:
    def fails(ref: str, match: str, exc: type[Exception] = UsageError) -> str:
        with pytest.raises(exc, match=match) as info:
            build_model(ref, input_shape=(4,), num_classes=2)
        assert "\n" not in str(info.value)
        return str(info.value)

    fails("missing_zf.py:make", "model file 'missing_zf.py' not found")
    fails("mymodels_zf.py:nope", "model file 'mymodels_zf.py' has no callable 'nope'")
    fails("mymodels_zf.py:NOT_CALLABLE", "has no callable 'NOT_CALLABLE' \\(it is a int\\)")
    fails("mymodels_zf.py:not_a_module", "returned int, not a torch.nn.Module")
    msg = fails("mymodels_zf.py:explodes", "model factory 'mymodels_zf.py:explodes' failed: ")
    assert f"{factories}:" in msg and "ValueError: no good 4" in msg
    fails("mymodels_zf:nope", "model module 'mymodels_zf' has no callable 'nope'")
    fails("no_such_pkg_zf:f", "cannot import model module 'no_such_pkg_zf'")
    with pytest.raises(ConfigError, match="rejected"):
        build_model("mymodels_zf.py:make", input_shape=(4,), num_classes=2, args={"depth": 3})


def test_syntax_and_import_errors_name_file_and_line(factories: Path) -> None:
    (factories.parent / "broken_zf.py").write_text("import torch\n\ndef make(:\n    pass\n")
    (factories.parent / "raising_zf.py").write_text("import torch\nx = 1\nraise RuntimeError('at import')\n")
    with pytest.raises(UsageError) as info:
        build_model("broken_zf.py:make", input_shape=(4,), num_classes=2)
    assert str(info.value).startswith(f"cannot load model file {factories.parent / 'broken_zf.py'}:3: SyntaxError")
    with pytest.raises(UsageError) as info:
        build_model("raising_zf.py:make", input_shape=(4,), num_classes=2)
    assert str(info.value) == (f"cannot load model file {factories.parent / 'raising_zf.py'}:3: "
                               "RuntimeError: at import")
    with pytest.raises(UsageError, match=r"broken_zf.py:3: SyntaxError"):
        build_model("broken_zf:make", input_shape=(4,), num_classes=2)
    sys.modules.pop("broken_zf", None)


def test_check_fits_passes_and_restores_the_mode() -> None:
    m = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    check_fits(m, torch.rand(2, 64), 3, "m")
    assert m.training
    m.eval()
    check_fits(m, torch.rand(2, 64), 3, "m")
    assert not m.training


def test_check_fits_lazy_modules_get_their_shapes() -> None:
    m = torch.nn.LazyLinear(3)
    check_fits(m, torch.rand(2, 5), 3, "lazy")
    assert m.weight.shape == (3, 5) and m.training


def test_check_fits_names_a_shape_mismatch() -> None:
    m = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.Linear(128, 10))
    with pytest.raises(UsageError) as info:
        check_fits(m, torch.rand(2, 64), 10, "my.py:make", input_shape=(8, 8))
    assert str(info.value) == ("model 'my.py:make' does not fit the data: it got features [N, 64] "
                               "(from input shape [8, 8]) and failed: mat1 and mat2 shapes cannot be "
                               "multiplied (2x64 and 784x128)")
    assert m.training


def test_check_fits_checks_the_logits_shape() -> None:
    with pytest.raises(UsageError) as info:
        check_fits(torch.nn.Linear(64, 5), torch.rand(2, 64), 10, "m.py:f", input_shape=(8, 8))
    assert str(info.value) == ("model 'm.py:f' does not fit the data: it got features [N, 64] (from input "
                               "shape [8, 8]) and returned [N, 5], but logits [N, 10] (one per class) "
                               "were expected")
    with pytest.raises(UsageError, match=r"returned \[N, 2, 2\], but logits \[N, 4\]"):
        check_fits(torch.nn.Unflatten(1, (2, 2)), torch.rand(2, 4), 4, "m")
    with pytest.raises(UsageError, match=r"returned tuple, but logits \[N, 4\]"):
        check_fits(_Pair(), torch.rand(2, 4), 4, "m")


class _Pair(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x
