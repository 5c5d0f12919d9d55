"""The variants we try: fp32 with ONNX Runtime's graph optimizations applied offline, int8
dynamic quantization, and int8 static (QDQ) quantization calibrated on training samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from shipyard.optimizing._common import INPUT, quiet

VARIANTS = ("fp32", "int8-dynamic", "int8-static")
CALIBRATION_SAMPLES = 1000
#: only the heavy ops: quantizing the softmax output would round probabilities to 1/255 steps
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]


def fp32_optimized(src: Path, dest: Path) -> Path:
    """Apply ORT's basic and extended graph optimizations once, offline, and save the result
    (for the CPU provider this serving stack uses)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dest)
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    return dest


def int8_dynamic(src: Path, dest: Path, work: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with quiet():
        pre = work / "pre-dynamic.onnx"
        quant_pre_process(str(src), str(pre))
        quantize_dynamic(str(pre), str(dest), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=QUANTIZED_OPS)
    return dest


def int8_static(src: Path, dest: Path, work: Path, calibration: np.ndarray) -> Path:
    """QDQ format, per-channel int8 weights and uint8 activations (the fast pair on x86),
    min-max calibrated on training samples."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 100)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: np.ascontiguousarray(batch)}

    with quiet():
        pre = work / "pre-static.onnx"
        quant_pre_process(str(src), str(pre))
        quantize_static(str(pre), str(dest), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True, calibrate_method=CalibrationMethod.MinMax,
                        op_types_to_quantize=QUANTIZED_OPS)
    return dest
