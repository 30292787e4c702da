"""Static int8 quantization of an fp32 ONNX export, for ONNX Runtime on x86-64 CPUs (Intel or AMD).

    python -m export.quantize runs/demo/onnx/fp32 --out runs/demo/onnx/int8 --data synthetic
    python -m export.quantize EXPORT_DIR --out DIR --data cifar10 --data-dir ../data/cifar10 --frames 16

What it does, starting from the three verified fp32 graphs of :mod:`export.to_onnx`:

1. Calibrates activation ranges on clips of the training split (``--calibration-clips``) and quantizes ``cnn.onnx``
   through ONNX Runtime's ``quantize_static`` (QDQ format: per-channel symmetric int8 weights, per-tensor uint8
   activations; ``Conv``, the residual ``Add``, ``Relu`` and the pooling). The BiLSTM and both heads stay float32:
   ``bilstm.onnx`` is the fp32 graph unchanged, and ``model.onnx`` is the int8 ``cnn.onnx`` composed with it, so the
   whole model and the streaming classifier (cnn + bilstm) compute the same thing and padding stays exact.
2. Verifies on clips of the held-out split (``--verify-clips``) against the fp32 ``model.onnx`` (itself verified
   against PyTorch at 1e-4): top-1 agreement of clip and frame predictions, and the relative error of the logits.
   Int8 errors depend on the weights and the data, so the accuracy gate is the clip top-1 agreement
   (``--min-agreement``, default 0.98), not a fixed relative error. Exactness is gated too: a padded batch must give
   what each clip gives alone, and ``cnn.onnx`` + ``bilstm.onnx`` what ``model.onnx`` gives. On failure nothing is
   written.
3. Writes ``model.onnx``, ``cnn.onnx``, ``bilstm.onnx`` (metadata ``precision: int8`` plus the calibration facts) and
   ``export_report.json`` into a hidden sibling folder renamed over ``--out``: the folder appears whole or not at
   all (see :mod:`export._folder`). ``runtime.load`` and ``StreamingClassifier`` take the folder as they take the
   fp32 one.

Calibration data must look like what the model will see: random noise gives ranges that clip real activations. The
data sources are those of training (``synthetic``, ``cifar10``, ``folder``), normalised with the export's mean/std.
TensorRT engines are built from the fp16 export instead (``export.to_trt`` refuses int8 graphs).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from export._folder import check_export_dir, refuse_other_exports, scratch_dir, write_export
from export.errors import ExportError, ExportVerificationError
from export.int8 import (
    EXACT_REL,
    INT8,
    QUANTIZED_OPS,
    compose_model,
    failed_checks,
    quantize_cnn,
    verify_int8,
)
from export.onnx_graph import check_lstm_structure, read_metadata, set_metadata
from export.spec import SPEC
from export.to_onnx import ExportResult
from runtime.spec import METADATA_KEY, check_export_file

logger = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def _load_source(source_dir: Path) -> dict:
    """The three fp32 graphs' metadata, each graph checked against the digest its export_report.json records (as
    the runtime checks it); raises ExportError when the folder is not an intact fp32 export."""
    metadata = {}
    for graph in ("model", "cnn", "bilstm"):
        path = source_dir / SPEC.graph(graph).filename
        if not path.is_file():
            raise ExportError(f"{source_dir} has no {path.name}; export the checkpoint first with "
                              f"`python -m export.to_onnx CHECKPOINT --out {source_dir}`")
        try:
            check_export_file(path)  # a bit flip inside the weights still parses and quantizes
        except ValueError as e:
            raise ExportError(f"the fp32 source: {e}") from e
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


def check_int8_target(source_dir: Path, out_dir: Path, metadata: dict, force: bool = False) -> Path:
    """Check ``out_dir`` before any work: an export folder of its own (see :func:`export._folder.check_export_dir`),
    neither the fp32 folder nor inside it, and holding no other export unless ``force`` (this checkpoint's int8 export
    is replaced without it: a re-calibration).

    Raises:
        runtime._io.OutputPathError: ``out_dir`` is a file, not writable, or holds files other than an export's.
        ExportError: ``out_dir`` is or lies inside ``source_dir``.
        ExportOverwriteError: it holds another export and ``force`` is False.
    """
    source_dir, out_dir = Path(source_dir).resolve(), Path(out_dir)
    if out_dir.resolve() == source_dir or source_dir in out_dir.resolve().parents:
        raise ExportError(f"--out {out_dir} must differ from the fp32 export folder {source_dir} and lie outside it "
                          "(an export folder holds one export and is replaced whole)")
    check_export_dir(out_dir)
    expected = {g: {"checkpoint_sha256": metadata[g].get("checkpoint_sha256"), "precision": INT8, "graph": g}
                for g in ("model", "cnn", "bilstm")}
    refuse_other_exports(out_dir, expected, force)
    return out_dir


def _check_arguments(method: str, min_agreement: float, batch: int) -> None:
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError as e:
        raise ExportError("int8 quantization needs onnxruntime (pip install 'cnn-bilstm-deploy[onnx]')") from e
    if method not in CALIBRATION_METHODS:
        raise ExportError(f"unknown calibration method {method!r}; valid: {', '.join(CALIBRATION_METHODS)}")
    if not 0.0 <= float(min_agreement) <= 1.0:
        raise ExportError(f"min_agreement must be in [0, 1], got {min_agreement}")
    if batch < 1:
        raise ExportError(f"batch must be >= 1, got {batch}")


def _int8_graphs(source_dir: Path, out_dir: Path, metadata: dict, calibration, batch: int, method: str,
                 info: dict) -> dict:
    """The three int8-export graphs (graph name -> bytes), each with its metadata and through ``onnx.checker``."""
    import onnx

    logger.info("calibrating and quantizing cnn.onnx on %d clips (%s)", len(calibration), method)
    with scratch_dir(out_dir) as tmp:  # beside --out: a killed run's scratch is removed at the next start
        cnn = quantize_cnn(source_dir / "cnn.onnx", calibration, batch, method, Path(tmp))
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
        try:
            onnx.checker.check_model(proto)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"the int8 {graph}.onnx failed onnx.checker: {e}") from e
        blobs[graph] = proto.SerializeToString()
    return blobs


def _int8_report(source_dir: Path, metadata: dict, info: dict, check: dict, min_agreement: float,
                 problems: list, t_start: float) -> dict:
    return {
        "precision": INT8,
        "source": str(source_dir),
        "reference": "the fp32 model.onnx of the source folder (verified against PyTorch at 1e-4 by export.to_onnx)",
        "gate": {"clip_agreement_min": float(min_agreement), "padded_rel_max": EXACT_REL,
                 "composition_rel_max": EXACT_REL,
                 "why": "int8 error depends on weights and data: the accuracy gate is top-1 agreement on held-out "
                        "clips; padding and the cnn + bilstm composition must stay exact"},
        "quantization": info,
        "verification": check,
        "checkpoint_sha256": metadata["model"].get("checkpoint_sha256"),
        "export_seconds": round(time.perf_counter() - t_start, 3),
        "failed": problems,
        "ok": not problems,
    }


def quantize_export(source_dir, out_dir, calibration, verification, *, verification_labels=None,
                    min_agreement: float = 0.98, method: str = "minmax", batch: int = 8, force: bool = False,
                    data_description: str = "") -> ExportResult:
    """Quantize the CNN of an fp32 export to int8 (QDQ), verify it against the fp32 graph, write the int8 export.

    Args:
        source_dir (str | PathLike): folder with the fp32 ``model.onnx``, ``cnn.onnx`` and ``bilstm.onnx``.
        out_dir (str | PathLike): folder for the int8 graphs and ``export_report.json`` and nothing else (not
            ``source_dir``): it is replaced whole, so a killed run leaves the old export or the new one.
        calibration (array): float32 (N, T, 3, H, W) normalised clips for the activation ranges.
        verification (array): held-out clips of the same form for the agreement check.
        verification_labels (array, optional): their class indices, to report both models' clip accuracy.
            Defaults to None.
        min_agreement (float): lowest clip top-1 agreement with the fp32 graph that is accepted. Defaults to 0.98.
            Padding exactness and the cnn + bilstm composition are always gated (see :func:`verify_int8`).
        method (str): calibration method, one of :data:`CALIBRATION_METHODS`. Defaults to "minmax".
        batch (int): clips per calibration / verification call. Defaults to 8.
        force (bool): overwrite another export in ``out_dir``; an int8 export of the same checkpoint is replaced
            without it (a re-calibration). Defaults to False.
        data_description (str): where the clips came from, for the report. Defaults to "".

    Returns:
        ExportResult: paths of the three graphs, the report and its path (precision "int8").

    Raises:
        ExportError: not an intact fp32 export (a graph differs from its report's digest), bad clips or arguments,
            ``out_dir`` equal to ``source_dir`` or inside it.
        runtime._io.OutputPathError: ``out_dir`` is a file, not writable, or holds files other than an export's.
        ExportOverwriteError: ``out_dir`` holds another export and ``force`` is False.
        ExportVerificationError: a check of :func:`failed_checks` fails; nothing is written.
    """
    _check_arguments(method, min_agreement, batch)
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    metadata = _load_source(source_dir)
    check_int8_target(source_dir, out_dir, metadata, force)
    calibration = _check_clips(calibration, metadata["model"], "calibration")
    verification = _check_clips(verification, metadata["model"], "verification")
    if verification_labels is not None and len(verification_labels) != len(verification):
        raise ExportError(f"{len(verification_labels)} verification labels for {len(verification)} clips")

    t_start = time.perf_counter()
    info = {"method": method, "format": "QDQ", "weights": "int8 per channel (symmetric)",
            "activations": "uint8 per tensor", "quantized_ops": list(QUANTIZED_OPS),
            "calibration_clips": int(len(calibration)), "calibration_time": int(calibration.shape[1]),
            "data": data_description, "onnxruntime": __import__("onnxruntime").__version__}
    blobs = _int8_graphs(source_dir, out_dir, metadata, calibration, batch, method, info)
    logger.info("verifying int8 model.onnx against the fp32 graph on %d held-out clips", len(verification))
    check = verify_int8(blobs["model"], source_dir / "model.onnx", verification, int8_cnn=blobs["cnn"],
                        bilstm=source_dir / "bilstm.onnx", labels=verification_labels, batch=batch)
    problems = failed_checks(check, float(min_agreement))
    report = _int8_report(source_dir, metadata, info, check, min_agreement, problems, t_start)
    if problems:
        hint = (" Try more or more representative calibration clips, --method percentile, or keep the fp32 export."
                if check["clip_agreement"] < min_agreement else "")
        raise ExportVerificationError("int8 export failed: " + "; ".join(problems) + "." + hint
                                      + " Nothing was written.", report)
    paths, report_path = write_export(out_dir, blobs, report)
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

    from train.clips import DataError
    from train.data import DataSpec, build_dataset

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
        logger.warning("%s clips have %d to %d frames; using the first %d frames of each (--frames caps the length)",
                       data, t, max(lengths), t)
        clips = [c[:t] for c in clips]
    return np.stack(clips).astype(np.float32), np.array([int(y) for _, y in items])


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    from train.clips import DATASETS

    p = argparse.ArgumentParser(description="Quantize the CNN of an fp32 ONNX export to int8 (ONNX Runtime, CPU), "
                                "calibrated and verified on real clips", add_help=add_help)
    p.add_argument("source", help="folder of the fp32 export (python -m export.to_onnx CKPT --out DIR)")
    p.add_argument("--out", required=True, help="folder for the int8 export; it holds the export only and is "
                   "replaced whole (a killed run leaves the old export or the new one, never a mix)")
    p.add_argument("--data", choices=DATASETS, default="synthetic", help="calibration and verification data source")
    p.add_argument("--data-dir", default=None, help="folder for cifar10 / folder")
    p.add_argument("--frames", type=int, default=8, help="clip length T of the calibration clips (default 8)")
    p.add_argument("--calibration-clips", type=int, default=64, help="training-split clips for calibration")
    p.add_argument("--verify-clips", type=int, default=256, help="held-out clips for the agreement check")
    p.add_argument("--min-agreement", type=float, default=0.98, help="lowest accepted clip top-1 agreement with fp32")
    p.add_argument("--method", choices=CALIBRATION_METHODS, default="minmax", help="calibration method")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--force", action="store_true", help="replace another export in --out (this checkpoint's int8 "
                   "export is replaced without it; other files in --out are never deleted)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for name in ("frames", "calibration_clips", "verify_clips"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    if not 0.0 <= args.min_agreement <= 1.0:
        print(f"error: --min-agreement must be in [0, 1], got {args.min_agreement}", file=sys.stderr)
        return 2
    try:
        source = _load_source(Path(args.source))
        check_int8_target(Path(args.source), Path(args.out), source, args.force)  # before the data is built
        metadata = source["model"]
        kwargs = dict(data_dir=args.data_dir, seed=args.seed)
        calibration, _ = clips_from_data(args.data, "train", args.calibration_clips, args.frames, metadata, **kwargs)
        verification, labels = clips_from_data(args.data, "test", args.verify_clips, args.frames, metadata, **kwargs)
        result = quantize_export(args.source, args.out, calibration, verification, verification_labels=labels,
                                 min_agreement=args.min_agreement,
                                 method=args.method, force=args.force,
                                 data_description=f"{args.data} (train split for calibration, test split for the "
                                                  f"check, seed {args.seed})")
    except ExportVerificationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # ExportError, DataError, OutputPathError: one clear line
        print(f"error: {e}", file=sys.stderr)
        return 2
    v = result.report["verification"]
    padded = "not checked (T=1)" if v["padded_rel"] is None else f"{v['padded_rel']:.2g}"
    print(f"int8 vs fp32 on {v['clips']} held-out clips (T={v['time']}): clip top-1 agreement "
          f"{v['clip_agreement']:.4f}, frame {v['frame_agreement']:.4f}; logits rel error clip "
          f"{v['clip_logits_rel']:.3g}, frame {v['frame_logits_rel']:.3g}; padding exactness {padded}, "
          f"cnn + bilstm vs model {v['composition_rel']:.2g}")
    if "clip_accuracy_int8" in v:
        print(f"clip accuracy on those clips: fp32 {v['clip_accuracy_fp32']:.4f}, int8 {v['clip_accuracy_int8']:.4f}")
    print(f"wrote {', '.join(str(p) for p in result.paths.values())}")
    print(f"report {result.report_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
