"""A tiny bundle that ships the int8-dynamic variant, for batch-invariance tests: the tiny
classifier of `bundles.py` quantized by the optimizer's own int8-dynamic step, whose activation
scale comes from the whole batch, so an input's answer depends on its batch-mates."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from harness.bundles import tiny_meta, tiny_onnx
from shipyard import bundle


def int8_dynamic_onnx(work: Path, seed: int = 1) -> bytes:
    """The tiny classifier (`seed`'s weights), dynamically quantized (about a second: the quantizer)."""
    from shipyard.optimizing import variants as V

    work.mkdir(parents=True, exist_ok=True)
    (work / "fp32.onnx").write_bytes(tiny_onnx(10, seed))
    return V.int8_dynamic(work / "fp32.onnx", work / "int8.onnx", work).read_bytes()


def dynamic_bundle(folder: Path, model: bytes, *, measured: bool) -> Path:
    """A bundle folder shipping `model` as int8-dynamic. `measured`: its bundle.json says it is
    batch-variant (max difference 0.0123), as optimize writes it; else it says nothing, as a
    bundle from before invariance was measured."""
    variant: dict[str, Any] = {"name": "int8-dynamic", "accuracy": 0.9, "size_bytes": len(model),
                               "latency_p50_ms": 0.1, "throughput_per_s": 3000.0, "chosen": True}
    if measured:
        variant.update(batch_max_diff=0.0123, batch_invariant=False)
    src = Path(tempfile.mkdtemp(dir=Path(folder).parent)) / "model.onnx"
    src.write_bytes(model)
    bundle.write(Path(folder), tiny_meta("tiny", 10, len(model), variant="int8-dynamic", variants=[variant]),
                 {bundle.MODEL: src})
    return Path(folder)
