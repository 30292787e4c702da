"""Export a checkpoint to three verified ONNX graphs: ``model.onnx``, ``cnn.onnx`` and ``bilstm.onnx``.

Names, axes and metadata follow ``docs/ARCHITECTURE.md`` (see :mod:`export.spec`). Per graph:

1. ``torch.onnx.export(dynamo=False, opset 17, dynamic_axes)`` of a small wrapper around the model. The TorchScript
   exporter keeps one native ONNX ``LSTM`` node per layer with dynamic batch and time (the dynamo exporter froze the
   time dimension of the declared output shapes with torch 2.14).
2. The LSTM is exported unpacked, then the graph input ``lengths`` (int32) is wired into input 4 (``sequence_lens``)
   of every LSTM node, so padded clips are exact in both directions: the reverse direction of a short clip starts at
   its last real frame. The heads already mask padded steps and pool real frames only.
3. Checks: one bidirectional LSTM node per layer, ``sequence_lens`` wired, no Loop/Scan, ``onnx.checker`` full check.
4. Metadata property ``cnn_bilstm_deploy`` (JSON).
5. Verification (always): ONNX Runtime (or the ONNX reference evaluator for graphs it cannot load) against the float32
   PyTorch model with packed sequences at shapes other than the export example; above tolerance raises
   :class:`ExportVerificationError` and nothing is written.
6. The graphs and ``export_report.json`` are written into a hidden sibling folder that is renamed over ``--out``:
   the folder appears whole or not at all (see :mod:`export._folder`). ``--out`` is checked before any work.

CLI::

    python -m export.to_onnx runs/demo/best.pt --out runs/demo/onnx                    # fp32 into DIR
    python -m export.to_onnx CKPT --out DIR --precision fp32 --precision fp16        # DIR/fp32 and DIR/fp16
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from export._folder import check_export_dir, refuse_other_exports, scratch_dir, write_export
from export.errors import ExportError, ExportVerificationError
from export.onnx_graph import (
    build_metadata,
    check_graph_io,
    check_lstm_structure,
    checkpoint_sha256,
    set_metadata,
    wire_sequence_lens,
)
from export.spec import PRECISIONS, SPEC, check_precision
from export.verify import example_inputs, format_report, verify_graph
from runtime._version import __version__
from runtime.spec import GRAPHS

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes:
        paths (dict[str, Path]): graph name ("model", "cnn", "bilstm") -> ONNX file.
        report (dict): the verification report (also saved at ``report_path``).
        report_path (Path): ``out_dir / "export_report.json"``.
        precision (str): the precision exported.
    """

    paths: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    report_path: Optional[Path] = None
    precision: str = "fp32"


# --- graph wrappers ----------------------------------------------------------------------------------------------
# Each wrapper takes float32 inputs and returns float32 outputs whatever the precision: casts live inside the graph.


def _make_wrappers(model, precision: str):
    import torch.nn as nn

    feature_dim = int(model.config.feature_dim)
    cnn_half = precision in ("fp16", "fp16-all")
    lstm_half = precision == "fp16-all"
    cnn_model = copy.deepcopy(model).eval()
    if cnn_half:
        cnn_model.cnn.half()
    lstm_model = copy.deepcopy(model).eval()
    if lstm_half:
        lstm_model.half()

    class CNNGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = cnn_model

        def forward(self, frames):
            x = frames.half() if cnn_half else frames
            b, t = frames.shape[:2]
            # A literal F (not -1) keeps the feature width static in the graph's declared output shape.
            return self.m.cnn(x.flatten(0, 1)).float().view(b, t, feature_dim)

    class BiLSTMGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = lstm_model

        def forward(self, features, lengths):
            x = features.half() if lstm_half else features.float()
            # Unpacked LSTM; `lengths` becomes the LSTM's sequence_lens by graph surgery after export.
            y = self.m.lstm(x)[0]
            frame_logits, clip_logits = self.m.heads(y, lengths)
            return frame_logits.float(), clip_logits.float()

    class ModelGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.cnn = CNNGraph()
            self.bilstm = BiLSTMGraph()

        def forward(self, frames, lengths):
            return self.bilstm(self.cnn(frames), lengths)

    return {"model": ModelGraph().eval(), "cnn": CNNGraph().eval(), "bilstm": BiLSTMGraph().eval()}


# --- export --------------------------------------------------------------------------------------------------------


def _export_one(wrapper, graph: str, example_feeds: dict, opset: int, out_dir: Path):
    """torch.onnx.export (TorchScript exporter) of one wrapper -> onnx.ModelProto (via a scratch file beside
    ``out_dir``, see :func:`export._folder.scratch_dir`)."""
    import onnx
    import torch

    gspec = SPEC.graph(graph)
    args = tuple(torch.from_numpy(example_feeds[name]) for name in gspec.inputs)
    with scratch_dir(out_dir) as tmp:
        path = os.path.join(tmp, gspec.filename)
        with warnings.catch_warnings():
            # The legacy-exporter deprecation and the "LSTM with batch size other than 1" notes do not apply: the
            # initial states are built from the dynamic batch size, and the graph is verified at other batches.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, args, path, dynamo=False, opset_version=opset,
                input_names=list(gspec.inputs), output_names=list(gspec.outputs),
                dynamic_axes={k: dict(v) for k, v in gspec.dynamic_axes.items()}, do_constant_folding=True,
            )
        return onnx.load(path)


def check_export_target(ckpt, out_dir, precision: str, *, force: bool = False, opset: int = 17) -> dict:
    """Refuse to replace another checkpoint's or precision's graphs in ``out_dir`` unless ``force``, before any work.
    ``out_dir`` has already passed :func:`export._folder.check_export_dir` (both callers check it first).

    Returns:
        dict: graph name -> the metadata the export will carry.

    Raises:
        ExportOverwriteError: it holds another export and ``force`` is False.
    """
    sha = checkpoint_sha256(ckpt)
    metadata = {g: build_metadata(ckpt, g, precision, opset, sha) for g in GRAPHS}
    refuse_other_exports(Path(out_dir), metadata, force)
    return metadata


def _check_arguments(precision: str, opset: int, example_shape: tuple) -> tuple[int, int]:
    """Precision, opset and the tracing example's (B, T), checked before any work."""
    check_precision(precision)
    if not 14 <= int(opset) <= 20:
        raise ValueError(f"opset must be in 14..20 (TorchScript exporter range with native LSTM), got {opset}")
    b0, t0 = (int(x) for x in example_shape)
    if b0 < 2 or t0 < 2:
        # B=1 or T=1 examples let the tracer specialise on a singleton dim; >= 2 keeps both axes symbolic.
        raise ValueError(f"example_shape must be (B, T) with B >= 2 and T >= 2, got {tuple(example_shape)}")
    return b0, t0


def _new_report(precision: str, example: tuple, sha: str, opset: int) -> dict:
    tol = SPEC.tolerance(precision)
    return {
        "precision": precision,
        "tolerance": {"rel": tol.rel, "why": tol.why, "metric": "||y - ref|| / ||ref|| per output; max_abs reported"},
        "reference": "float32 PyTorch model, packed sequences (exact padded-batch semantics)",
        "example_shape": list(example),
        "checkpoint_sha256": sha,
        "opset": int(opset),
        "graphs": {},
    }


def _export_graph(ckpt, model, wrapper, graph: str, metadata: dict, example: tuple, opset: int,
                  out_dir: Path, precision: str) -> tuple[bytes, dict]:
    """One graph: export, LSTM surgery and structure checks, I/O check, metadata, ``onnx.checker``, verification.

    Returns:
        tuple[bytes, dict]: the serialized graph and its verification result.
    """
    import onnx

    b0, t0 = example
    example_lengths = [t0] + [max(1, t0 - 1 - i) for i in range(b0 - 1)]
    feeds = example_inputs(ckpt.config, graph, b0, t0, example_lengths)
    proto = _export_one(wrapper, graph, feeds, opset, out_dir)
    lstm_nodes = []
    if SPEC.graph(graph).has_lstm:
        wire_sequence_lens(proto, "lengths")
        lstm_nodes = check_lstm_structure(proto, ckpt.config.num_layers, "lengths")
    check_graph_io(proto, graph)
    set_metadata(proto, metadata)
    proto.producer_name = "cnn-bilstm-deploy"
    proto.producer_version = __version__
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{graph}.onnx failed onnx.checker (full check): {e}") from e
    blob = proto.SerializeToString()
    shapes = SPEC.verification_shapes(precision, example)
    result = verify_graph(blob, model, graph, precision, shapes, label=f"{graph}.onnx ({precision})")
    result["lstm_nodes"] = lstm_nodes
    result["onnx_bytes"] = len(blob)
    return blob, result


def _raise_if_failed(report: dict, precision: str) -> None:
    """Any case above tolerance fails the whole export, naming each graph, shape and output; nothing is written."""
    if report["ok"]:
        return
    tol = SPEC.tolerance(precision)
    bad = [
        f"{g}.onnx at {c['shape']}: " + ", ".join(f"{n} rel {o['rel']:.3e}" for n, o in c["outputs"].items()
                                                if o["rel"] > tol.rel)
        for g, r in report["graphs"].items() for c in r["cases"] if not c["ok"]
    ]
    raise ExportVerificationError(
        f"{precision} export disagrees with PyTorch above tolerance rel <= {tol.rel:g}: " + "; ".join(bad)
        + ". Nothing was written.", report,
    )


def export_onnx(checkpoint, out_dir, precision: str = "fp32", *, force: bool = False, opset: int = 17,
                example_shape: tuple = (2, 5)) -> ExportResult:
    """Export ``model.onnx``, ``cnn.onnx`` and ``bilstm.onnx`` of a checkpoint, verify them, write the folder whole.

    Args:
        checkpoint (str | PathLike | runtime.checkpoint.Checkpoint): checkpoint file or a loaded checkpoint.
        out_dir (str | PathLike): folder for the three graphs and ``export_report.json`` and nothing else: it is
            replaced whole (written beside it, then renamed), so a killed re-export never leaves a mix.
        precision (str): "fp32", "fp16" (fp16 CNN, fp32 BiLSTM and heads) or "fp16-all". Defaults to "fp32".
        force (bool): overwrite graphs of another checkpoint or precision in ``out_dir``. Defaults to False.
        opset (int): ONNX opset (14..20; LSTM and TensorRT are happy with 17). Defaults to 17.
        example_shape (tuple[int, int]): (B, T) of the tracing example; verification uses other shapes.
            Defaults to (2, 5).

    Returns:
        ExportResult: paths of the graphs, the verification report and its path.

    Raises:
        ValueError: bad precision, opset or example shape.
        runtime._io.OutputPathError: ``out_dir`` is a file, not writable, or holds files other than an export's.
        runtime.checkpoint.CheckpointError: unusable checkpoint.
        ExportOverwriteError: ``out_dir`` holds another model's graphs and ``force`` is False.
        ExportError: the exported graph lost its native LSTM nodes or dynamic axes.
        ExportVerificationError: a graph disagrees with PyTorch beyond the precision's tolerance; nothing is written.
    """
    from runtime.checkpoint import Checkpoint, load_checkpoint

    example = _check_arguments(precision, opset, example_shape)
    out_dir = check_export_dir(Path(out_dir))  # before the checkpoint is read: a bad --out fails at once
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    model = ckpt.model.float().eval()
    metadata = check_export_target(ckpt, out_dir, precision, force=force, opset=opset)
    sha = next(iter(metadata.values()))["checkpoint_sha256"]

    t_start = time.perf_counter()
    wrappers = _make_wrappers(model, precision)
    report = _new_report(precision, example, sha, opset)
    blobs = {}
    for graph in GRAPHS:
        blobs[graph], report["graphs"][graph] = _export_graph(ckpt, model, wrappers[graph], graph, metadata[graph],
                                                              example, opset, out_dir, precision)
        logger.info("%s.onnx (%s): exported and verified with %s", graph, precision,
                    report["graphs"][graph]["runtime"])
    report["export_seconds"] = round(time.perf_counter() - t_start, 3)
    report["ok"] = all(g["ok"] for g in report["graphs"].values())
    _raise_if_failed(report, precision)
    paths, report_path = write_export(out_dir, blobs, report)
    logger.info("wrote %s and %s", ", ".join(str(p) for p in paths.values()), report_path)
    return ExportResult(paths=paths, report=report, report_path=report_path, precision=precision)


# --- CLI -----------------------------------------------------------------------------------------------------------


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a checkpoint to model.onnx, cnn.onnx and bilstm.onnx (dynamic batch and time), verify "
                    "them against PyTorch with ONNX Runtime at unseen shapes, and save export_report.json.",
        add_help=add_help,
    )
    parser.add_argument("checkpoint", help="checkpoint file (.pt) written by training")
    parser.add_argument("--out", required=True,
                        help="output folder; it holds the export only and is replaced whole (a killed re-export "
                             "leaves the old export or the new one, never a mix)")
    parser.add_argument(
        "--precision", action="append", choices=list(PRECISIONS) + ["all-default"], default=None,
        help="fp32 (default), fp16 (fp16 CNN, fp32 BiLSTM and heads) or fp16-all (everything fp16 inside; I/O "
             "stays float32 in all). Give it once to write into --out itself; give it several times (or "
             "'all-default' = fp32 + fp16) to write each precision into --out/<precision>/. For int8 on CPUs, "
             "quantize the fp32 export with `python -m export.quantize` (it needs calibration data).",
    )
    parser.add_argument("--force", action="store_true",
                        help="replace an export of another checkpoint or precision in --out (a re-export of the same "
                             "checkpoint and precision needs no --force; other files in --out are never deleted)")
    parser.add_argument("--opset", type=int, default=SPEC.default_opset, help="ONNX opset (default %(default)s)")
    parser.add_argument("--example-shape", default="2x5", help="B x T of the tracing example (default %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _expand_precisions(values: Optional[list]) -> tuple[list, bool]:
    values = values or ["fp32"]
    out = []
    for v in values:
        for p in (["fp32", "fp16"] if v == "all-default" else [v]):
            if p not in out:
                out.append(p)
    return out, len(out) > 1 or "all-default" in values


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        b, t = (int(x) for x in args.example_shape.lower().split("x"))
    except ValueError:
        print(f"error: --example-shape must look like 2x5 (B x T), got {args.example_shape!r}", file=sys.stderr)
        return 2
    precisions, nested = _expand_precisions(args.precision)
    outs = {p: Path(args.out) / p if nested else Path(args.out) for p in precisions}
    try:  # every output folder is checked before the first export starts
        from runtime.checkpoint import load_checkpoint

        for out in outs.values():
            check_export_dir(out)
        ckpt = load_checkpoint(args.checkpoint)
        for precision, out in outs.items():
            check_export_target(ckpt, out, precision, force=args.force, opset=args.opset)
    except ValueError as e:  # OutputPathError, CheckpointError, ExportOverwriteError: one clear line
        print(f"error: {e}", file=sys.stderr)
        return 2
    for precision, out in outs.items():
        try:
            result = export_onnx(ckpt, out, precision, force=args.force, opset=args.opset, example_shape=(b, t))
        except ExportVerificationError as e:
            if e.report:
                print(format_report(e.report))
            print(f"error: {e}", file=sys.stderr)
            return 1
        except ValueError as e:  # ExportError and argument errors: one clear line
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(format_report(result.report))
        print(f"wrote {', '.join(str(p) for p in result.paths.values())}")
        print(f"report {result.report_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
