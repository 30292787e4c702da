"""How close a contender's outputs must be to eager fp32, and how that closeness is measured."""

from __future__ import annotations

from typing import Any

# Norm-relative error ||y - y_ref|| / ||y_ref|| allowed against eager fp32 (TF32 off), per precision label.
# "tf32": fp32 on CUDA with PyTorch's default of TF32 cuDNN convolutions/RNNs (10-bit mantissa, like fp16).
# fp16: the export spec's fp16 bound (export/spec.py, 1e-2); plain eager .half() of the reference model measured 6-7e-3
# against fp32 on an H200, so a tighter bound would fail the eager fp16 baseline itself.
# int8: export.quantize's CNN calibrated on N(0,1) frames. With the benchmark's random weights the logits err by
# 0.12-0.2 (reference model; a trained demo model errs by 3e-3-8e-3 with 100% top-1 agreement), so this bound only
# catches a broken graph (errors of O(1)); real accuracy is gated by export.quantize's agreement check.
# "int8-data": an int8 export calibrated on real data (--int8-dir). Its error on the benchmark's N(0,1) frames says
# nothing (they are far from the calibration data: a trained demo model errs by ~0.5 there while agreeing 100% with
# fp32 on held-out clips), so it is not gated here; the contender requires the export's own report to show that it
# passed export.quantize's top-1 agreement gate for this very checkpoint.
# bf16: OpenVINO's bf16 inference on CPUs (8-bit mantissa, 3 bits fewer than fp16, so ~8x its error); the reference
# model measured 2.9-3.2e-2 against fp32 (frame logits; 1.2-2.0e-2 clip logits) on the dev machine.
TOLERANCES = {"fp32": 1e-4, "tf32": 5e-3, "fp16": 1e-2, "fp16-cnn": 1e-2, "bf16": 6e-2, "int8": 0.3,
              "int8-data": float("inf")}


def rel_error(outputs: dict, reference: dict) -> float:
    """Largest norm-relative error ||y - y_ref|| / ||y_ref|| over the reference's keys.

    Raises:
        ValueError: a reference key is missing from ``outputs`` or a shape differs.
    """
    from runtime.evaluation import compare  # the evaluation core's metric: one definition of "relative error"

    worst = 0.0
    for key, ref in reference.items():
        if key not in outputs:
            raise ValueError(f"output {key!r} missing; the contender returned {sorted(outputs)}")
        got = to_numpy(outputs[key])
        if got.shape != ref.shape:
            raise ValueError(f"output {key!r} has shape {got.shape}, the eager reference {ref.shape}")
        worst = max(worst, compare(got, ref)["rel"])  # inf when got holds NaN/Inf
    return worst


def to_numpy(value: Any):
    """numpy float32 copy of a numpy array or torch tensor (any device or dtype)."""
    import numpy as np

    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)
