import sys
import textwrap
from pathlib import Path

import pytest
import torch

from shipyard.errors import ConfigError, UsageError
from shipyard.training.zoo import build_model


def test_mlp_is_the_canonical_network() -> None:
    m = build_model("mlp", input_shape=(28, 28), num_classes=10)
    linears = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
    assert [(x.in_features, x.out_features) for x in linears] == [(784, 128), (128, 10)]
    assert sum(p.numel() for p in m.parameters()) == 784 * 128 + 128 + 128 * 10 + 10
    assert all((x.bias == 0).all() for x in linears)  # Keras-style zero bias
    assert m(torch.rand(5, 784)).shape == (5, 10)


def test_mlp_options() -> None:
    m = build_model("mlp", input_shape=(20,), num_classes=3, args={"hidden": [16, 8], "dropout": 0.5})
    assert sum(isinstance(x, torch.nn.Dropout) for x in m.modules()) == 2
    assert m(torch.rand(2, 20)).shape == (2, 3)


def test_cnn_takes_flat_features() -> None:
    m = build_model("cnn", input_shape=(28, 28), num_classes=10, args={"channels": [4, 8], "hidden": 16})
    assert m(torch.rand(3, 784)).shape == (3, 10)
    with pytest.raises(ConfigError, match="2-D image"):
        build_model("cnn", input_shape=(30,), num_classes=2)


def test_user_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mymodels.py").write_text(textwrap.dedent("""
        import torch
        def tiny(num_features, num_classes, width=4):
            return torch.nn.Sequential(torch.nn.Linear(num_features, width),
                                       torch.nn.Linear(width, num_classes))
        def not_a_module(**kw):
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    m = build_model("mymodels:tiny", input_shape=(28, 28), num_classes=10, args={"width": 7})
    assert m[0].out_features == 7 and m(torch.rand(2, 784)).shape == (2, 10)
    with pytest.raises(UsageError, match="not a torch.nn.Module"):
        build_model("mymodels:not_a_module", input_shape=(4,), num_classes=2)
    with pytest.raises(UsageError, match="no callable 'missing'"):
        build_model("mymodels:missing", input_shape=(4,), num_classes=2)
    with pytest.raises(ConfigError, match="rejected"):
        build_model("mymodels:tiny", input_shape=(4,), num_classes=2, args={"depth": 3})
    sys.modules.pop("mymodels", None)


def test_unknown_model() -> None:
    with pytest.raises(UsageError, match="unknown model 'resnet'"):
        build_model("resnet", input_shape=(4,), num_classes=2)
    with pytest.raises(UsageError, match="cannot import"):
        build_model("no_such_pkg_xyz:f", input_shape=(4,), num_classes=2)
