"""Export: checkpoint -> three verified ONNX graphs (:mod:`export.to_onnx`) -> TensorRT engines (:mod:`export.to_trt`).

The contract (names, axes, opset, tolerances, default profiles) lives in :mod:`export.spec`. Importing this package is
cheap: torch, onnx, onnxruntime and TensorRT are imported inside the functions that need them.
"""
