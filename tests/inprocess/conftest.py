"""The in-process tier's registry: real SQLite, two tiny real bundles (`tiny` version 1 behind
`production`, version 2 behind `candidate`), no training."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.bundles import make_bundle
from shipyard.registry import Registry
from shipyard.settings import Settings


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(settings=Settings(home=tmp_path / "home"))
    reg.register(make_bundle(tmp_path / "b1", seed=1), "tiny", alias="production")
    reg.register(make_bundle(tmp_path / "b2", seed=2), "tiny", alias="candidate")
    return reg
