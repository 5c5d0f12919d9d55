"""`Projection`: what the prediction log keeps of each input, computed per request in float32 as
the reference profile computes it in float64 (`reference.profile`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.bundles import make_bundle
from shipyard.bundle import Bundle
from shipyard.bundle.reference import Projection, profile


def test_the_projection_matches_the_profile_and_takes_the_parts_of_a_flush(tmp_path: Path) -> None:
    b = Bundle.load(make_bundle(tmp_path / "b", reference=True))
    proj = Projection.load(b)
    assert proj is not None
    x = np.random.default_rng(3).random((300, 784), dtype=np.float32)
    whole = proj.project(x)
    assert whole.dtype == np.float16 and whole.shape == (300, 33)
    parts = proj.project([x[:7], x[7:100], x[100:]]).astype(np.float32)  # BLAS may round by batch size
    assert np.allclose(parts, whole.astype(np.float32), rtol=2e-3, atol=2e-3)
    ref = b.reference
    assert ref is not None
    exact = profile(ref["pca_mean"], ref["pca_components"], x)
    assert np.allclose(whole.astype(np.float64), exact, rtol=2e-3, atol=2e-2)


def test_no_reference_no_projection(tmp_path: Path) -> None:
    assert Projection.load(Bundle.load(make_bundle(tmp_path / "b"))) is None
