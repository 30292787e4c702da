"""The one place where ONNX Runtime sessions are configured: the runtime's runners, export verification, int8
quantization and the benchmarks' per-node profiles all build their options here, so a setting (threads, spinning,
graph optimizations, log level) means the same everywhere."""

from __future__ import annotations

import os
from typing import Optional


def session_options(ort, *, intra_op_threads: Optional[int] = None, allow_spinning: bool = True,
                    optimize: bool = True):
    """``ort.SessionOptions`` for one clip at a time: sequential execution, one inter-op thread, quiet logs.

    Args:
        ort (module): onnxruntime.
        intra_op_threads (int | None): threads per operator; None lets ONNX Runtime decide (all cores).
        allow_spinning (bool): let idle intra-op threads spin (lower latency, busier cores). Defaults to True.
        optimize (bool): full graph optimizations; False opens a file only to read its metadata (0.15 s for the
            reference model.onnx on the CPU EP, against 1 s to compile it on OpenVINO). Defaults to True.
    """
    opts = ort.SessionOptions()
    if optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one clip is a chain: parallel branches add latency
        opts.inter_op_num_threads = 1
        if intra_op_threads is not None:
            opts.intra_op_num_threads = int(intra_op_threads)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    else:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return opts


def cpu_session(source, *, intra_op_threads: Optional[int] = None, optimize: bool = True, **session_kwargs):
    """An ``InferenceSession`` on the CPU execution provider over a path or serialized bytes, with
    :func:`session_options`. Extra keyword arguments (e.g. ``disabled_optimizers``) go to the session."""
    import onnxruntime as ort

    opts = session_options(ort, intra_op_threads=intra_op_threads, optimize=optimize)
    return ort.InferenceSession(source if isinstance(source, bytes) else os.fspath(source), opts,
                                providers=["CPUExecutionProvider"], **session_kwargs)
