"""Export: checkpoint -> three verified ONNX graphs (:mod:`export.to_onnx`) -> TensorRT engines (:mod:`export.to_trt`).

The contract (names, axes, opset, tolerances, default profiles) lives in :mod:`export.spec`. Importing this package is
cheap: torch, onnx, onnxruntime and TensorRT are imported inside the functions that need them.

CLIs: ``export.to_onnx``, ``export.quantize`` (int8 from the fp32 export), ``export.to_trt``. Their parts:
``onnx_graph`` (metadata, LSTM surgery, structure and I/O checks), ``verify`` (graphs against PyTorch), ``int8``
(quantized CNN, composed model, int8 checks), ``_folder`` (export folders: checks, overwrite guard, writing),
``engine_build`` (the steps of one engine build), ``engine_cache`` (cache key, output guard), ``trt_profiles``,
``trt_inspect`` (network/engine inspection, precision checks), ``trt_build`` (build-only TensorRT version glue) and
``errors``.
"""
