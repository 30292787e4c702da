"""The int8 graphs of :mod:`export.quantize`: the CNN quantized by ONNX Runtime's ``quantize_static`` (QDQ),
``model.onnx`` composed from it and the fp32 BiLSTM, and the checks of the result against the fp32 export."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Optional

from export.onnx_graph import check_graph_io
from runtime.backends.ort_session import cpu_session
from runtime.evaluation import accuracy, agreement, collect_logits, compare

INT8 = "int8"
# The CNN's operators; LSTM, MatMul and Gemm (BiLSTM and heads) stay float32.
QUANTIZED_OPS = ("Conv", "Add", "Relu", "GlobalAveragePool", "MaxPool")


def quantize_cnn(src: Path, calibration, batch: int, method: str, tmp: Path):
    """quantize_static of ``cnn.onnx`` -> onnx.ModelProto (QDQ)."""
    import onnx
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
            self._it = iter([{"frames": calibration[i:i + batch]} for i in range(0, len(calibration), batch)])

        def get_next(self):
            return next(self._it, None)

    # ONNX Runtime's recommended pre-pass (graph optimisation + shape inference) so every tensor has a known type.
    pre = tmp / "cnn.pre.onnx"
    quant_pre_process(os.fspath(src), os.fspath(pre), skip_symbolic_shape=True)
    out = tmp / "cnn.int8.onnx"
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    quantize_static(
        os.fspath(pre), os.fspath(out), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS),
        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=methods[method], calibration_providers=["CPUExecutionProvider"],
    )
    return onnx.load(os.fspath(out))


def compose_model(cnn, bilstm):
    """``model.onnx`` as ``cnn.onnx`` feeding ``bilstm.onnx``, with the contract's I/O names.

    Built this way the int8 model graph computes exactly what the streaming classifier computes from the int8
    ``cnn.onnx`` and the ``bilstm.onnx`` (one set of quantization scales, not two calibrations that differ slightly).
    """
    from onnx import compose

    parts = []
    for proto in (cnn, bilstm):
        proto = copy.deepcopy(proto)
        del proto.metadata_props[:]
        parts.append(proto)
    merged = compose.merge_models(parts[0], parts[1], io_map=[("features", "features")], prefix1="cnn/",
                                  prefix2="bilstm/")
    rename = {"cnn/frames": "frames", "bilstm/lengths": "lengths", "bilstm/frame_logits": "frame_logits",
              "bilstm/clip_logits": "clip_logits"}
    g = merged.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        vi.name = rename.get(vi.name, vi.name)
    for node in g.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    check_graph_io(merged, "model")
    return merged


# Padding and composition are exact in fp32 arithmetic: only summation order may differ.
EXACT_REL = 1e-4


def verify_int8(int8_model: bytes, fp32_model: Path, clips, *, int8_cnn: Optional[bytes] = None,
                bilstm: Optional[Path] = None, labels=None, batch: int = 8) -> dict:
    """Check an int8 ``model.onnx`` on held-out clips.

    * Agreement with the fp32 ``model.onnx`` (full-length clips): top-1 of clip and frame predictions, and the
      norm-relative error of the logits; with ``labels`` both models' clip accuracy.
    * Padding exactness of the int8 graph itself: a padded batch (rows of lengths T, T/2, ...) must give, row by row,
      what the same graph gives each clip alone at its own length (``padded_rel``; not checked when T == 1).
    * Composition (with ``int8_cnn`` and ``bilstm``): int8 ``cnn.onnx`` followed by ``bilstm.onnx``, the streaming
      classifier's path, must give what ``model.onnx`` gives (``composition_rel``).

    Returns:
        dict: the measurements above.
    """
    q = cpu_session(int8_model)
    result = _agreement(q, cpu_session(fp32_model), clips, batch, labels)
    result["padded_lengths"], result["padded_rel"] = _padding_rel(q, clips)
    if int8_cnn is not None and bilstm is not None:
        result["composition_rel"] = _composition_rel(q, int8_cnn, bilstm, clips[:batch])
    return result


class SessionRunner:
    """An ONNX Runtime session of a whole-model graph, as :func:`runtime.evaluation.collect_logits` runs a runner
    (the int8 graph is checked before it is written, so there is no file for ``runtime.load`` yet)."""

    def __init__(self, session) -> None:
        self.session = session

    def infer(self, x, lengths) -> dict:
        frame_logits, clip_logits = self.session.run(["frame_logits", "clip_logits"],
                                                     {"frames": x, "lengths": lengths})
        return {"frame_logits": frame_logits, "clip_logits": clip_logits}


def _agreement(q, ref, clips, batch: int, labels) -> dict:
    """Agreement of the int8 graph with the fp32 one on full-length clips, scored by the evaluation core."""
    batches = [(clips[i:i + batch], None, None if labels is None else labels[i:i + batch])
               for i in range(0, len(clips), batch)]
    got, want = collect_logits([SessionRunner(q), SessionRunner(ref)], batches)
    check = agreement(got, want)
    result = {"clips": int(len(clips)), "time": int(clips.shape[1])}
    result.update({k: check[k] for k in ("clip_agreement", "frame_agreement", "clip_logits_rel", "frame_logits_rel",
                                         "finite")})
    if labels is not None:
        result["clip_accuracy_fp32"] = accuracy(want)["clip_acc"]
        result["clip_accuracy_int8"] = accuracy(got)["clip_acc"]
    return result


def _padding_rel(q, clips) -> tuple:
    """(row lengths, worst relative difference) of a padded batch against each row alone; (None, None) at T == 1."""
    import numpy as np

    t = clips.shape[1]
    if t <= 1:
        return None, None  # T == 1: nothing to pad
    rows = [clips[k % len(clips)] for k in range(max(2, min(4, len(clips))))]  # >= 2 rows, repeating one clip
    lengths = np.array([max(1, t >> k) for k in range(len(rows))], dtype=np.int32)
    padded = q.run(None, {"frames": np.stack(rows), "lengths": lengths})
    worst = 0.0
    for k, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        alone = q.run(None, {"frames": row[None, :n], "lengths": np.array([n], dtype=np.int32)})
        worst = max(worst, compare(padded[1][k], alone[1][0])["rel"], compare(padded[0][k, :n], alone[0][0])["rel"])
    return lengths.tolist(), worst


def _composition_rel(q, int8_cnn: bytes, bilstm: Path, x) -> float:
    import numpy as np

    lengths = np.full((len(x),), x.shape[1], dtype=np.int32)
    features = cpu_session(int8_cnn).run(None, {"frames": x})[0]
    frame_s, clip_s = cpu_session(bilstm).run(None, {"features": features, "lengths": lengths})
    frame_m, clip_m = q.run(None, {"frames": x, "lengths": lengths})
    return max(compare(frame_s, frame_m)["rel"], compare(clip_s, clip_m)["rel"])


def failed_checks(check: dict, min_agreement: float) -> list:
    """Human-readable reasons an int8 verification result fails (empty when it passes)."""
    reasons = []
    if not check["finite"]:
        reasons.append("the int8 graph outputs NaN/Inf")
    if check["clip_agreement"] < min_agreement:
        reasons.append(f"it agrees with fp32 on {100 * check['clip_agreement']:.1f}% of {check['clips']} held-out "
                       f"clips, {100 * min_agreement:.1f}% needed (clip logits rel error "
                       f"{check['clip_logits_rel']:.3g})")
    if check.get("padded_rel") is not None and not check["padded_rel"] <= EXACT_REL:
        reasons.append(f"a padded batch differs from its clips run alone by {check['padded_rel']:.3g} (rel; must be "
                       f"<= {EXACT_REL:g}): padding leaks into real frames")
    if check.get("composition_rel") is not None and not check["composition_rel"] <= EXACT_REL:
        reasons.append(f"cnn.onnx + bilstm.onnx differ from model.onnx by {check['composition_rel']:.3g} (rel; must "
                       f"be <= {EXACT_REL:g})")
    return reasons
