"""Static int8 quantization of an fp32 ONNX export, for ONNX Runtime on CPUs (VNNI / AMX int8 kernels).

    python -m export.quantize runs/demo/onnx/fp32 --out runs/demo/onnx/int8 --data synthetic
    python -m export.quantize EXPORT_DIR --out DIR --data cifar10 --data-dir ../data/cifar10 --frames 16

What it does, starting from the three verified fp32 graphs of :mod:`export.to_onnx`:

1. Calibrates activation ranges on clips of the training split (``--calibration-clips``) and quantizes ``cnn.onnx``
   through ONNX Runtime's ``quantize_static`` (QDQ format: per-channel symmetric int8 weights, per-tensor uint8
   activations; ``Conv``, the residual ``Add``, ``Relu`` and the pooling). The BiLSTM and both heads stay float32:
   ``bilstm.onnx`` is the fp32 graph unchanged, and ``model.onnx`` is the int8 ``cnn.onnx`` composed with it, so the
   whole model and the streaming classifier (cnn + bilstm) compute the same thing and padding stays exact.
2. Verifies on clips of the held-out split (``--verify-clips``) against the fp32 ``model.onnx`` (itself verified
   against PyTorch at 1e-4): top-1 agreement of clip and frame predictions, and the relative error of the logits,
   plus a padded batch. Int8 errors depend on the weights and the data, so the gate is the clip top-1 agreement
   (``--min-agreement``, default 0.98), not a fixed relative error. Below it, nothing is written.
3. Writes ``model.onnx``, ``cnn.onnx``, ``bilstm.onnx`` (metadata ``precision: int8`` plus the calibration facts) and
   ``export_report.json`` atomically. ``runtime.load`` and ``StreamingClassifier`` take the folder as they take the
   fp32 one.

Calibration data must look like what the model will see: random noise gives ranges that clip real activations. The
data sources are those of training (``synthetic``, ``cifar10``, ``folder``), normalised with the export's mean/std.
TensorRT engines are built from the fp16 export instead (``export.to_trt`` refuses int8 graphs).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from export.spec import METADATA_KEY, REPORT_NAME, SPEC
from export.to_onnx import (
    ExportError,
    ExportOverwriteError,
    ExportResult,
    ExportVerificationError,
    check_lstm_structure,
    compare,
    read_metadata,
    set_metadata,
)
from runtime._io import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)

INT8 = "int8"
# The CNN's operators; LSTM, MatMul and Gemm (BiLSTM and heads) stay float32.
QUANTIZED_OPS = ("Conv", "Add", "Relu", "GlobalAveragePool", "MaxPool")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def _load_source(source_dir: Path) -> dict:
    """The three fp32 graphs' metadata; raises ExportError when the folder is not an fp32 export."""
    metadata = {}
    for graph in ("model", "cnn", "bilstm"):
        path = source_dir / SPEC.graph(graph).filename
        if not path.is_file():
            raise ExportError(f"{source_dir} has no {path.name}; export the checkpoint first with "
                              f"`python -m export.to_onnx CHECKPOINT --out {source_dir}`")
        meta = read_metadata(path)
        if meta is None:
            raise ExportError(f"{path} lacks the {METADATA_KEY!r} metadata: not written by export.to_onnx")
        if meta.get("precision") != "fp32":
            raise ExportError(f"{path} is a {meta.get('precision')!r} graph; int8 quantization starts from the fp32 "
                              "export (python -m export.to_onnx CHECKPOINT --precision fp32)")
        metadata[graph] = meta
    shas = {m.get("checkpoint_sha256") for m in metadata.values()}
    if len(shas) != 1:
        raise ExportError(f"{source_dir} mixes graphs of different checkpoints (checkpoint_sha256 {sorted(map(str, shas))})")
    return metadata


def _check_clips(clips, metadata: dict, what: str):
    """float32 (N, T, 3, H, W) normalised clips matching the export's frame size; returns them as numpy."""
    import numpy as np

    clips = np.asarray(clips)
    h, w = metadata["frame_size"]
    if clips.ndim != 5 or clips.shape[2] != 3 or tuple(clips.shape[3:]) != (h, w) or min(clips.shape[:2]) < 1:
        raise ExportError(f"{what} clips must be float (N, T, 3, {h}, {w}) normalised frames with N, T >= 1, got "
                          f"shape {clips.shape}")
    if clips.dtype.kind != "f":
        raise ExportError(f"{what} clips must be normalised float frames (runtime.preprocess_frames), got dtype "
                          f"{clips.dtype}")
    clips = clips.astype(np.float32, copy=False)
    if not np.isfinite(clips).all():
        raise ExportError(f"{what} clips contain NaN or Inf")
    return clips


def _session(path_or_bytes, threads: Optional[int] = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(path_or_bytes if isinstance(path_or_bytes, bytes) else os.fspath(path_or_bytes),
                                opts, providers=["CPUExecutionProvider"])


def _quantize_cnn(src: Path, calibration, batch: int, method: str, tmp: Path):
    """quantize_static of ``cnn.onnx`` -> onnx.ModelProto (QDQ)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"frames": calibration[i:i + batch]} for i in range(0, len(calibration), batch)])

        def get_next(self):
            return next(self._it, None)

    from onnxruntime.quantization.shape_inference import quant_pre_process

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

    from export.to_onnx import _check_io

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
    _check_io(merged, "model")
    return merged


def _argmax_agreement(a, b) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def verify_int8(int8_model: bytes, fp32_model: Path, clips, *, labels=None, batch: int = 8) -> dict:
    """Compare an int8 ``model.onnx`` with the fp32 one on held-out clips (full length) and one padded batch.

    Returns:
        dict: ``clip_agreement``, ``frame_agreement`` (top-1), ``clip_logits_rel`` / ``frame_logits_rel`` (norm-relative
        error over all clips), ``padded_rel``, the number of clips, and with ``labels`` the clip accuracy of both.
    """
    import numpy as np

    q, ref = _session(int8_model), _session(fp32_model)
    outs_q, outs_r = [], []
    for i in range(0, len(clips), batch):
        x = clips[i:i + batch]
        feeds = {"frames": x, "lengths": np.full((x.shape[0],), x.shape[1], dtype=np.int32)}
        outs_q.append(q.run(None, feeds))
        outs_r.append(ref.run(None, feeds))
    frame_q = np.concatenate([o[0] for o in outs_q])
    frame_r = np.concatenate([o[0] for o in outs_r])
    clip_q = np.concatenate([o[1] for o in outs_q])
    clip_r = np.concatenate([o[1] for o in outs_r])
    result = {
        "clips": int(len(clips)),
        "time": int(clips.shape[1]),
        "clip_agreement": _argmax_agreement(clip_q, clip_r),
        "frame_agreement": _argmax_agreement(frame_q, frame_r),
        "clip_logits_rel": compare(clip_q, clip_r)["rel"],
        "frame_logits_rel": compare(frame_q, frame_r)["rel"],
    }
    if labels is not None:
        labels = np.asarray(labels)
        result["clip_accuracy_fp32"] = float((clip_r.argmax(-1) == labels).mean())
        result["clip_accuracy_int8"] = float((clip_q.argmax(-1) == labels).mean())
    # Padding: quantization only touches the CNN, so a padded batch must err no more than the full-length clips do.
    t = clips.shape[1]
    x = clips[: min(4, len(clips))]
    lengths = np.array([max(1, t - 2 * k) for k in range(len(x))], dtype=np.int32)
    feeds = {"frames": x, "lengths": lengths}
    got, want = q.run(None, feeds), ref.run(None, feeds)
    result["padded_lengths"] = lengths.tolist()
    result["padded_clip_agreement"] = _argmax_agreement(got[1], want[1])
    result["padded_rel"] = max(compare(g, w)["rel"] for g, w in zip(got, want, strict=True))
    return result


def quantize_export(source_dir, out_dir, calibration, verification, *, verification_labels=None,
                    min_agreement: float = 0.98, method: str = "minmax", batch: int = 8, force: bool = False,
                    data_description: str = "") -> ExportResult:
    """Quantize the CNN of an fp32 export to int8 (QDQ), verify it against the fp32 graph, write the int8 export.

    Args:
        source_dir (str | PathLike): folder with the fp32 ``model.onnx``, ``cnn.onnx`` and ``bilstm.onnx``.
        out_dir (str | PathLike): folder for the int8 graphs and ``export_report.json`` (not ``source_dir``).
        calibration (array): float32 (N, T, 3, H, W) normalised clips for the activation ranges.
        verification (array): held-out clips of the same form for the agreement check.
        verification_labels (array, optional): their class indices, to report both models' clip accuracy.
            Defaults to None.
        min_agreement (float): lowest clip top-1 agreement with the fp32 graph that is accepted. Defaults to 0.98.
        method (str): calibration method, one of :data:`CALIBRATION_METHODS`. Defaults to "minmax".
        batch (int): clips per calibration / verification call. Defaults to 8.
        force (bool): overwrite another export in ``out_dir``. Defaults to False.
        data_description (str): where the clips came from, for the report. Defaults to "".

    Returns:
        ExportResult: paths of the three graphs, the report and its path (precision "int8").

    Raises:
        ExportError: not an fp32 export, bad clips or arguments, ``out_dir`` equal to ``source_dir``.
        ExportOverwriteError: ``out_dir`` holds another export and ``force`` is False.
        ExportVerificationError: clip agreement below ``min_agreement``; nothing is written.
    """
    import onnx

    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError as e:
        raise ExportError("int8 quantization needs onnxruntime (pip install 'cnn-bilstm-deploy[onnx]')") from e
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if method not in CALIBRATION_METHODS:
        raise ExportError(f"unknown calibration method {method!r}; valid: {', '.join(CALIBRATION_METHODS)}")
    if not 0.0 <= float(min_agreement) <= 1.0:
        raise ExportError(f"min_agreement must be in [0, 1], got {min_agreement}")
    if batch < 1:
        raise ExportError(f"batch must be >= 1, got {batch}")
    if out_dir.resolve() == source_dir.resolve():
        raise ExportError(f"--out must differ from the fp32 export folder {source_dir}")
    metadata = _load_source(source_dir)
    calibration = _check_clips(calibration, metadata["model"], "calibration")
    verification = _check_clips(verification, metadata["model"], "verification")
    if out_dir.exists() and not force:
        for graph in ("model", "cnn", "bilstm"):
            path = out_dir / SPEC.graph(graph).filename
            old = read_metadata(path) if path.is_file() else None
            if path.is_file() and (old is None or old.get("precision") != INT8 or old.get("checkpoint_sha256")
                                   != metadata[graph].get("checkpoint_sha256")):
                raise ExportOverwriteError(f"{path} holds another export; pass force=True (--force) to overwrite it "
                                           "or choose another --out folder")

    t_start = time.perf_counter()
    info = {"method": method, "format": "QDQ", "weights": "int8 per channel (symmetric)",
            "activations": "uint8 per tensor", "quantized_ops": list(QUANTIZED_OPS),
            "calibration_clips": int(len(calibration)), "calibration_time": int(calibration.shape[1]),
            "data": data_description, "onnxruntime": __import__("onnxruntime").__version__}
    logger.info("calibrating and quantizing cnn.onnx on %d clips (%s)", len(calibration), method)
    with tempfile.TemporaryDirectory(prefix="cnn-bilstm-int8-") as tmp:
        cnn = _quantize_cnn(source_dir / "cnn.onnx", calibration, batch, method, Path(tmp))
    bilstm = onnx.load(os.fspath(source_dir / "bilstm.onnx"))
    protos = {"model": compose_model(cnn, bilstm), "cnn": cnn, "bilstm": bilstm}
    check_lstm_structure(protos["model"], int(metadata["model"]["model_config"]["num_layers"]), "lengths")
    blobs = {}
    for graph, proto in protos.items():
        note = {"bilstm": "the fp32 BiLSTM graph, unchanged",
                "model": "the int8 cnn.onnx composed with the fp32 bilstm.onnx"}.get(graph, "")
        set_metadata(proto, {**metadata[graph], "precision": INT8,
                             "quantization": {**info, **({"note": note} if note else {})}})
        proto.producer_name = "cnn-bilstm-deploy"
        onnx.checker.check_model(proto)
        blobs[graph] = proto.SerializeToString()

    logger.info("verifying int8 model.onnx against the fp32 graph on %d held-out clips", len(verification))
    if verification_labels is not None and len(verification_labels) != len(verification):
        raise ExportError(f"{len(verification_labels)} verification labels for {len(verification)} clips")
    check = verify_int8(blobs["model"], source_dir / "model.onnx", verification, labels=verification_labels,
                        batch=batch)
    # The int8 cnn.onnx must compute what the int8 model.onnx's CNN computes (the streaming classifier uses it).
    import numpy as np

    x = verification[:2]
    feats_q = _session(blobs["cnn"]).run(None, {"frames": x})[0]
    feats_r = _session(source_dir / "cnn.onnx").run(None, {"frames": x})[0]
    check["cnn_features_rel"] = compare(feats_q, feats_r)["rel"]
    check["cnn_finite"] = bool(np.isfinite(feats_q).all())
    ok = (check["clip_agreement"] >= min_agreement and check["cnn_finite"]
          and check["padded_rel"] <= max(0.5, 4 * check["clip_logits_rel"]))
    report = {
        "precision": INT8,
        "source": str(source_dir),
        "reference": "the fp32 model.onnx of the source folder (verified against PyTorch at 1e-4 by export.to_onnx)",
        "gate": {"clip_agreement_min": float(min_agreement),
                 "why": "int8 error depends on weights and data: the gate is top-1 agreement on held-out clips"},
        "quantization": info,
        "verification": check,
        "checkpoint_sha256": metadata["model"].get("checkpoint_sha256"),
        "export_seconds": round(time.perf_counter() - t_start, 3),
        "ok": bool(ok),
    }
    if not ok:
        raise ExportVerificationError(
            f"int8 graph agrees with fp32 on {100 * check['clip_agreement']:.1f}% of {check['clips']} held-out clips "
            f"(needed {100 * min_agreement:.1f}%; clip logits rel error {check['clip_logits_rel']:.3g}, padded "
            f"{check['padded_rel']:.3g}). Try more or more representative calibration clips, --method percentile, "
            "or keep the fp32 export. Nothing was written.", report)
    paths = {g: atomic_write_bytes(out_dir / SPEC.graph(g).filename, blobs[g]) for g in ("model", "cnn", "bilstm")}
    report["files"] = {g: p.name for g, p in paths.items()}
    report_path = atomic_write_json(out_dir / REPORT_NAME, report)
    logger.info("wrote int8 export to %s", out_dir)
    return ExportResult(paths=paths, report=report, report_path=report_path, precision=INT8)


def clips_from_data(data: str, split: str, num_clips: int, frames: int, metadata: dict, *, data_dir=None,
                    seed: int = 0):
    """``num_clips`` normalised clips (N, T, 3, H, W) of a training data source, with the export's mean/std, and
    their labels (N,).

    Raises:
        ExportError: the data cannot be built (unknown source, missing folder) or has other classes than the model.
    """
    import numpy as np

    from train.data import DataError, DataSpec, build_dataset

    config = metadata.get("model_config") or {}
    spec = DataSpec(name=data, data_dir=data_dir, frames=frames, frame_size=tuple(metadata["frame_size"]), seed=seed,
                    num_clips=num_clips, num_classes=int(config.get("num_classes") or len(metadata["class_names"])),
                    mean=metadata["mean"], std=metadata["std"])
    try:
        ds = build_dataset(spec, split)
    except DataError as e:
        raise ExportError(f"calibration data: {e}") from e
    if list(ds.class_names) != list(metadata["class_names"]):
        raise ExportError(f"the {data} data has classes {list(ds.class_names)}, but the export was trained on "
                          f"{list(metadata['class_names'])}")
    items = [ds[i] for i in range(min(num_clips, len(ds)))]
    clips = [x.numpy() for x, _ in items]
    lengths = {c.shape[0] for c in clips}
    if len(lengths) != 1:  # folder clips of mixed lengths: keep the common prefix so that one batch holds them
        t = min(lengths)
        clips = [c[:t] for c in clips]
    return np.stack(clips).astype(np.float32), np.array([int(y) for _, y in items])


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    from train.data import DATASETS

    p = argparse.ArgumentParser(description="Quantize the CNN of an fp32 ONNX export to int8 (ONNX Runtime, CPU), "
                                "calibrated and verified on real clips", add_help=add_help)
    p.add_argument("source", help="folder of the fp32 export (python -m export.to_onnx CKPT --out DIR)")
    p.add_argument("--out", required=True, help="folder for the int8 export")
    p.add_argument("--data", choices=DATASETS, default="synthetic", help="calibration and verification data source")
    p.add_argument("--data-dir", default=None, help="folder for cifar10 / folder")
    p.add_argument("--frames", type=int, default=8, help="clip length T of the calibration clips (default 8)")
    p.add_argument("--calibration-clips", type=int, default=64, help="training-split clips for calibration")
    p.add_argument("--verify-clips", type=int, default=256, help="held-out clips for the agreement check")
    p.add_argument("--min-agreement", type=float, default=0.98, help="lowest accepted clip top-1 agreement with fp32")
    p.add_argument("--method", choices=CALIBRATION_METHODS, default="minmax", help="calibration method")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--force", action="store_true", help="overwrite another export in --out")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for name in ("frames", "calibration_clips", "verify_clips"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
            return 2
    try:
        metadata = _load_source(Path(args.source))["model"]
        kwargs = dict(data_dir=args.data_dir, seed=args.seed)
        calibration, _ = clips_from_data(args.data, "train", args.calibration_clips, args.frames, metadata, **kwargs)
        verification, labels = clips_from_data(args.data, "test", args.verify_clips, args.frames, metadata, **kwargs)
        result = quantize_export(args.source, args.out, calibration, verification, verification_labels=labels,
                                 min_agreement=args.min_agreement,
                                 method=args.method, force=args.force,
                                 data_description=f"{args.data} (train split for calibration, test split for the "
                                                  f"check, seed {args.seed})")
    except ExportVerificationError as e:
        print(f"error: {e}")
        return 1
    except ValueError as e:  # ExportError, DataError: one clear line
        print(f"error: {e}")
        return 2
    v = result.report["verification"]
    print(f"int8 vs fp32 on {v['clips']} held-out clips (T={v['time']}): clip top-1 agreement "
          f"{v['clip_agreement']:.4f}, frame {v['frame_agreement']:.4f}; logits rel error clip "
          f"{v['clip_logits_rel']:.3g}, frame {v['frame_logits_rel']:.3g}; padded batch rel {v['padded_rel']:.3g}")
    if "clip_accuracy_int8" in v:
        print(f"clip accuracy on those clips: fp32 {v['clip_accuracy_fp32']:.4f}, int8 {v['clip_accuracy_int8']:.4f}")
    print(f"wrote {', '.join(str(p) for p in result.paths.values())}")
    print(f"report {result.report_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
