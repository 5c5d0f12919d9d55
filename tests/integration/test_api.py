"""The Python API mirrors the CLI: `shipyard.train`, `shipyard.runs`, `shipyard.data.*`."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

import shipyard
from shipyard.settings import Settings


def test_import_shipyard_stays_light() -> None:
    code = "import sys, shipyard; assert 'torch' not in sys.modules; print(shipyard.__version__)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == shipyard.__version__


def test_train_and_runs(settings: Settings) -> None:
    run = shipyard.train(data="mnist-sample", epochs=1, settings=settings, progress=False)
    assert isinstance(run, shipyard.Run) and run.status == "finished"
    listed = shipyard.runs(settings=settings)
    assert [r.id for r in listed] == [run.id]
    assert shipyard.get_run(run.id, settings=settings).metrics == run.metrics
    assert shipyard.runs(status="failed", settings=settings) == []


def test_data_functions() -> None:
    ds = shipyard.data.mnist_sample()
    assert ds.x.shape == (5000, 28, 28) and ds.x.dtype == np.uint8
    splits = ds.split()
    assert len(splits.y_val) == 1000 and splits.x_test is None
    features = ds.preprocess.fitted(splits.x_train).apply(splits.x_val[:3])
    assert features.shape == (3, 784) and features.dtype == np.float32
    assert features.min() >= 0.0 and features.max() <= 1.0
    fm = shipyard.data.load("fashion-mnist")
    assert fm.has_test and fm.classes[0] == "T-shirt/top"
