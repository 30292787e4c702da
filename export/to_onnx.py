"""Export a checkpoint to three verified ONNX graphs: ``model.onnx``, ``cnn.onnx`` and ``bilstm.onnx``.

Names, axes and metadata follow ``docs/ARCHITECTURE.md`` (see :mod:`export.spec`). Per graph:

1. ``torch.onnx.export(dynamo=False, opset 17, dynamic_axes)`` of a small wrapper around the model. The TorchScript
   exporter keeps one native ONNX ``LSTM`` node per layer with dynamic batch and time (the dynamo exporter froze the
   time dimension of the declared output shapes with torch 2.14, see ``shared/docs/baselines.md``).
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
import hashlib
import io
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from export._folder import check_export_dir, scratch_dir, write_export_dir
from export.spec import GRAPHS, METADATA_KEY, PRECISIONS, SPEC, check_precision
from runtime._io import sha256_file
from runtime._version import __version__

logger = logging.getLogger(__name__)


class ExportError(ValueError):
    """An export request cannot be carried out as asked (bad arguments, unexpected graph structure)."""


class ExportVerificationError(ExportError):
    """An exported graph disagrees with PyTorch beyond the precision's tolerance (nothing was written)."""

    def __init__(self, message: str, report: Optional[dict] = None) -> None:
        super().__init__(message)
        self.report = report


class ExportOverwriteError(ExportError):
    """The output folder holds another model's (or another precision's) graphs; pass ``force=True`` to replace them."""


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


def _example_inputs(config, graph: str, batch: int, time_steps: int, lengths=None, seed: int = 0):
    """Random float inputs (never zeros) for ``graph`` as numpy arrays keyed by input name."""
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = config.frame_size
    if lengths is None:
        lengths = [time_steps] * batch
    feeds = {}
    gspec = SPEC.graph(graph)
    if "frames" in gspec.inputs:
        feeds["frames"] = rng.standard_normal((batch, time_steps, 3, h, w)).astype(np.float32)
    if "features" in gspec.inputs:
        # Post-ReLU average-pooled ResNet features are non-negative with O(1) scale.
        feeds["features"] = np.abs(rng.standard_normal((batch, time_steps, config.feature_dim))).astype(np.float32)
    if "lengths" in gspec.inputs:
        feeds["lengths"] = np.asarray(lengths, dtype=np.int32)
    return feeds


# --- graph surgery and structure checks --------------------------------------------------------------------------


def wire_sequence_lens(model_proto, lengths_name: str = "lengths") -> int:
    """Feed the graph input ``lengths_name`` into input 4 (``sequence_lens``) of every ONNX ``LSTM`` node.

    Missing optional inputs before index 4 get the empty-name placeholder. Returns the number of nodes wired.

    Raises:
        ExportError: no such graph input, or an LSTM already has another ``sequence_lens``.
    """
    import onnx

    inputs = {i.name: i for i in model_proto.graph.input}
    if lengths_name not in inputs:
        raise ExportError(f"graph has no input {lengths_name!r}; inputs are {sorted(inputs)}")
    if inputs[lengths_name].type.tensor_type.elem_type != onnx.TensorProto.INT32:
        raise ExportError(f"graph input {lengths_name!r} must be int32 to serve as LSTM sequence_lens")
    wired = 0
    for node in model_proto.graph.node:
        if node.op_type != "LSTM":
            continue
        while len(node.input) < 5:
            node.input.append("")
        if node.input[4] not in ("", lengths_name):
            raise ExportError(f"LSTM node {node.name!r} already has sequence_lens {node.input[4]!r}")
        node.input[4] = lengths_name
        wired += 1
    return wired


def check_lstm_structure(model_proto, num_layers: int, lengths_name: Optional[str] = "lengths") -> list:
    """Check the BiLSTM stayed native: ``num_layers`` bidirectional ``LSTM`` nodes, no Loop/Scan.

    Args:
        model_proto (onnx.ModelProto): the graph.
        num_layers (int): expected LSTM node count.
        lengths_name (str | None): when given, every LSTM's ``sequence_lens`` must be this graph input.

    Returns:
        list[dict]: per LSTM node its name, direction, hidden size and sequence_lens input.

    Raises:
        ExportError: any deviation, naming what was found.
    """
    import onnx

    nodes = list(model_proto.graph.node)
    loops = [n.op_type for n in nodes if n.op_type in ("Loop", "Scan")]
    if loops:
        raise ExportError(f"the graph contains {loops}: the LSTM was unrolled or lowered to a loop, not native")
    found = []
    for n in nodes:
        if n.op_type != "LSTM":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        direction = attrs.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else str(direction)
        seq = n.input[4] if len(n.input) > 4 else ""
        found.append({"name": n.name, "direction": direction, "hidden_size": int(attrs.get("hidden_size", 0)),
                      "layout": int(attrs.get("layout", 0)), "sequence_lens": seq})
    if len(found) != num_layers:
        raise ExportError(f"expected {num_layers} native ONNX LSTM nodes (one per layer), found {len(found)}")
    for f in found:
        if f["direction"] != "bidirectional":
            raise ExportError(f"LSTM node {f['name']!r} has direction {f['direction']!r}, expected bidirectional")
        if lengths_name is not None and f["sequence_lens"] != lengths_name:
            raise ExportError(
                f"LSTM node {f['name']!r} has sequence_lens {f['sequence_lens']!r}, expected the graph input "
                f"{lengths_name!r} (padded clips would not be exact)"
            )
    return found


# --- metadata ------------------------------------------------------------------------------------------------------


def build_metadata(ckpt, graph: str, precision: str, opset: int, checkpoint_sha256: str) -> dict:
    """The ``cnn_bilstm_deploy`` metadata dict of ARCHITECTURE.md for one graph."""
    import onnx
    import torch

    return {
        "graph": graph,
        "class_names": list(ckpt.class_names),
        "frame_size": list(ckpt.config.frame_size),
        "mean": [float(x) for x in ckpt.mean],
        "std": [float(x) for x in ckpt.std],
        "precision": precision,
        "model_config": ckpt.config.to_dict(),
        "package_version": __version__,
        "exporter": {"torch": torch.__version__, "onnx": onnx.__version__, "opset": int(opset)},
        "checkpoint_sha256": checkpoint_sha256,
    }


def set_metadata(model_proto, metadata: dict) -> None:
    """Store ``metadata`` as JSON under the ``cnn_bilstm_deploy`` metadata property (replacing an old one)."""
    kept = [p for p in model_proto.metadata_props if p.key != METADATA_KEY]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(kept)
    prop = model_proto.metadata_props.add()
    prop.key = METADATA_KEY
    prop.value = json.dumps(metadata, sort_keys=True)


def read_metadata(model) -> Optional[dict]:
    """The ``cnn_bilstm_deploy`` metadata of an ONNX file or ``ModelProto`` (None when absent).

    Raises:
        ExportError: the file is not a loadable ONNX model, or the property is not valid JSON.
    """
    import onnx

    if not hasattr(model, "metadata_props"):
        try:
            model = onnx.load(str(model), load_external_data=False)
        except Exception as e:
            raise ExportError(f"{model} is not a readable ONNX file: {type(e).__name__}: {e}") from e
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            try:
                return json.loads(p.value)
            except json.JSONDecodeError as e:
                raise ExportError(f"metadata property {METADATA_KEY!r} is not valid JSON: {e}") from e
    return None


def _checkpoint_sha256(ckpt) -> str:
    import torch

    if ckpt.path is not None and Path(ckpt.path).is_file():
        return sha256_file(ckpt.path)
    buf = io.BytesIO()  # an in-memory Checkpoint: hash its weights instead
    torch.save({k: v.detach().cpu() for k, v in ckpt.model.state_dict().items()}, buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()


# --- verification --------------------------------------------------------------------------------------------------


class _GraphRunner:
    """Runs one serialized graph with ONNX Runtime (CPU), or the ONNX reference evaluator if ORT cannot load it."""

    def __init__(self, model_bytes: bytes, label: str) -> None:
        self.label = label
        try:
            import onnxruntime as ort

            from runtime.backends.ort_session import cpu_session

            self._sess = cpu_session(model_bytes)
            self.name = f"onnxruntime {ort.__version__} CPUExecutionProvider"
            self._ref = None
        except Exception as e:  # e.g. a kernel ORT's CPU provider lacks for a float16 op
            from onnx.reference import ReferenceEvaluator

            logger.warning("%s: ONNX Runtime cannot load it (%s); using onnx.reference.ReferenceEvaluator",
                           label, str(e).splitlines()[0][:200])
            self._sess = None
            self._ref = ReferenceEvaluator(model_bytes)
            self.name = "onnx.reference.ReferenceEvaluator"

    def run(self, feeds: dict) -> list:
        if self._sess is not None:
            return self._sess.run(None, feeds)
        return self._ref.run(None, feeds)


def _torch_reference(model, graph: str, feeds: dict) -> list:
    """Float32 PyTorch outputs with packed sequences (the exact padded-batch semantics)."""
    import torch

    with torch.inference_mode():
        lengths = torch.from_numpy(feeds["lengths"]).long() if "lengths" in feeds else None
        if graph == "cnn":
            return [model.extract_features(torch.from_numpy(feeds["frames"])).numpy()]
        if graph == "bilstm":
            outs = model.classify(torch.from_numpy(feeds["features"]), lengths)
        else:
            outs = model(torch.from_numpy(feeds["frames"]), lengths)
        return [o.float().numpy() for o in outs]


def compare(got, ref) -> dict:
    """``{"max_abs", "rel"}``: largest absolute difference and ``||got - ref|| / ||ref||`` (float64)."""
    import numpy as np

    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return {"max_abs": float("inf"), "rel": float("inf"), "shape": list(got.shape), "ref_shape": list(ref.shape)}
    diff = got - ref
    denom = float(np.linalg.norm(ref)) or 1.0
    finite = bool(np.isfinite(got).all())
    return {
        "max_abs": float(np.abs(diff).max()) if finite else float("inf"),
        "rel": float(np.linalg.norm(diff)) / denom if finite else float("inf"),
    }


def verify_graph(model_bytes: bytes, model, graph: str, precision: str, shapes: list, label: str = "") -> dict:
    """Run a serialized graph at ``shapes`` and compare each output with PyTorch.

    Returns:
        dict: ``{"runtime", "cases": [{"shape", "outputs": {name: {"max_abs", "rel"}}, "ok"}], "ok"}``.
    """
    gspec = SPEC.graph(graph)
    tol = SPEC.tolerance(precision).rel
    runner = _GraphRunner(model_bytes, label or graph)
    cases = []
    for i, shape in enumerate(shapes):
        feeds = _example_inputs(model.config, graph, shape.batch, shape.time, shape.lengths, seed=100 + i)
        got = runner.run(feeds)
        ref = _torch_reference(model, graph, feeds)
        outs = {name: compare(g, r) for name, g, r in zip(gspec.outputs, got, ref, strict=True)}
        ok = all(o["rel"] <= tol for o in outs.values())
        cases.append({"shape": shape.label, "batch": shape.batch, "time": shape.time,
                      "lengths": list(shape.lengths) if shape.lengths else None, "outputs": outs, "ok": ok})
    return {"runtime": runner.name, "tolerance_rel": tol, "cases": cases, "ok": all(c["ok"] for c in cases)}


def format_report(report: dict) -> str:
    """A plain-text table of a verification report (for the CLI)."""
    lines = [f"precision {report['precision']}  tolerance rel <= {report['tolerance']['rel']:g}  "
             f"(example shape B,T = {tuple(report['example_shape'])})"]
    for graph, g in report["graphs"].items():
        lines.append(f"  {graph}.onnx  [{g['runtime']}]  lstm nodes: {len(g.get('lstm_nodes', []))}")
        for c in g["cases"]:
            errs = "  ".join(f"{n}: max_abs {o['max_abs']:.3e} rel {o['rel']:.3e}" for n, o in c["outputs"].items())
            lines.append(f"    {c['shape']:<28} {errs}  {'ok' if c['ok'] else 'FAIL'}")
    return "\n".join(lines)


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


def _check_existing(out_dir: Path, metadata_by_graph: dict, force: bool) -> None:
    """Refuse to overwrite graphs of another model or precision unless ``force``."""
    for graph, meta in metadata_by_graph.items():
        path = out_dir / SPEC.graph(graph).filename
        if not path.exists() or force:
            continue
        try:
            old = read_metadata(path)
        except ExportError:
            old = None
        if old is None:
            raise ExportOverwriteError(
                f"{path} exists and is not a {METADATA_KEY} export (no readable metadata); pass force=True "
                "(--force) to overwrite it or choose another --out folder"
            )
        diffs = [k for k in ("checkpoint_sha256", "precision", "graph") if old.get(k) != meta[k]]
        if diffs:
            detail = ", ".join(f"{k}: {old.get(k)!r} there, {meta[k]!r} now" for k in diffs)
            raise ExportOverwriteError(
                f"{path} holds a different export ({detail}); pass force=True (--force) to overwrite it or choose "
                "another --out folder"
            )


def check_export_target(ckpt, out_dir, precision: str, *, force: bool = False, opset: int = 17) -> dict:
    """Check ``out_dir`` for an export of ``ckpt`` before any work (see :func:`export._folder.check_export_dir`), and
    refuse to replace another checkpoint's or precision's graphs unless ``force``.

    Returns:
        dict: graph name -> the metadata the export will carry.

    Raises:
        runtime._io.OutputPathError: ``out_dir`` is a file, not writable, or holds files other than an export's.
        ExportOverwriteError: it holds another export and ``force`` is False.
    """
    out_dir = check_export_dir(Path(out_dir))
    sha = _checkpoint_sha256(ckpt)
    metadata = {g: build_metadata(ckpt, g, precision, opset, sha) for g in GRAPHS}
    _check_existing(out_dir, metadata, force)
    return metadata


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
    import onnx

    from runtime.checkpoint import Checkpoint, load_checkpoint

    check_precision(precision)
    if not 14 <= int(opset) <= 20:
        raise ValueError(f"opset must be in 14..20 (TorchScript exporter range with native LSTM), got {opset}")
    b0, t0 = (int(x) for x in example_shape)
    if b0 < 2 or t0 < 2:
        # B=1 or T=1 examples let the tracer specialise on a singleton dim; >= 2 keeps both axes symbolic.
        raise ValueError(f"example_shape must be (B, T) with B >= 2 and T >= 2, got {tuple(example_shape)}")
    out_dir = check_export_dir(Path(out_dir))  # before the checkpoint is read: a bad --out fails at once
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    model = ckpt.model.float().eval()
    metadata = check_export_target(ckpt, out_dir, precision, force=force, opset=opset)
    sha = next(iter(metadata.values()))["checkpoint_sha256"]

    t_start = time.perf_counter()
    wrappers = _make_wrappers(model, precision)
    shapes = SPEC.verification_shapes(precision, (b0, t0))
    example_lengths = [t0] + [max(1, t0 - 1 - i) for i in range(b0 - 1)]
    tol = SPEC.tolerance(precision)
    report = {
        "precision": precision,
        "tolerance": {"rel": tol.rel, "why": tol.why, "metric": "||y - ref|| / ||ref|| per output; max_abs reported"},
        "reference": "float32 PyTorch model, packed sequences (exact padded-batch semantics)",
        "example_shape": [b0, t0],
        "checkpoint_sha256": sha,
        "opset": int(opset),
        "graphs": {},
    }
    blobs = {}
    for graph in GRAPHS:
        gspec = SPEC.graph(graph)
        feeds = _example_inputs(ckpt.config, graph, b0, t0, example_lengths)
        proto = _export_one(wrappers[graph], graph, feeds, opset, out_dir)
        lstm_nodes = []
        if gspec.has_lstm:
            wire_sequence_lens(proto, "lengths")
            lstm_nodes = check_lstm_structure(proto, ckpt.config.num_layers, "lengths")
        _check_io(proto, graph)
        set_metadata(proto, metadata[graph])
        proto.producer_name = "cnn-bilstm-deploy"
        proto.producer_version = __version__
        try:
            onnx.checker.check_model(proto, full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"{graph}.onnx failed onnx.checker (full check): {e}") from e
        blob = proto.SerializeToString()
        result = verify_graph(blob, model, graph, precision, shapes, label=f"{graph}.onnx ({precision})")
        result["lstm_nodes"] = lstm_nodes
        result["onnx_bytes"] = len(blob)
        report["graphs"][graph] = result
        blobs[graph] = blob
        logger.info("%s.onnx (%s): exported and verified with %s", graph, precision, result["runtime"])
    report["export_seconds"] = round(time.perf_counter() - t_start, 3)
    report["ok"] = all(g["ok"] for g in report["graphs"].values())
    if not report["ok"]:
        bad = [
            f"{g}.onnx at {c['shape']}: " + ", ".join(f"{n} rel {o['rel']:.3e}" for n, o in c["outputs"].items()
                                                    if o["rel"] > tol.rel)
            for g, r in report["graphs"].items() for c in r["cases"] if not c["ok"]
        ]
        raise ExportVerificationError(
            f"{precision} export disagrees with PyTorch above tolerance rel <= {tol.rel:g}: " + "; ".join(bad)
            + ". Nothing was written.", report,
        )
    names = {g: SPEC.graph(g).filename for g in GRAPHS}
    report["files"] = dict(names)
    report["sha256"] = {names[g]: hashlib.sha256(blobs[g]).hexdigest() for g in GRAPHS}  # runtime checks
    paths, report_path = write_export_dir(out_dir, blobs, report)
    logger.info("wrote %s and %s", ", ".join(str(p) for p in paths.values()), report_path)
    return ExportResult(paths=paths, report=report, report_path=report_path, precision=precision)


def _check_io(proto, graph: str) -> None:
    """Graph I/O names and dtypes as the spec says; batch and time are symbolic (not fixed numbers)."""
    import onnx

    gspec = SPEC.graph(graph)
    ins = [i.name for i in proto.graph.input]
    outs = [o.name for o in proto.graph.output]
    if tuple(ins) != gspec.inputs or tuple(outs) != gspec.outputs:
        raise ExportError(f"{graph}.onnx has inputs {ins} and outputs {outs}; expected {gspec.inputs} and "
                          f"{gspec.outputs}")
    for vi in list(proto.graph.input) + list(proto.graph.output):
        tt = vi.type.tensor_type
        want = onnx.TensorProto.INT32 if vi.name == "lengths" else onnx.TensorProto.FLOAT
        if tt.elem_type != want:
            raise ExportError(f"{graph}.onnx tensor {vi.name!r} has dtype {onnx.TensorProto.DataType.Name(tt.elem_type)}"
                              f", expected {onnx.TensorProto.DataType.Name(want)}")
        for axis, name in gspec.dynamic_axes.get(vi.name, {}).items():
            dim = tt.shape.dim[axis]
            if dim.HasField("dim_value"):
                raise ExportError(f"{graph}.onnx tensor {vi.name!r} axis {axis} ({name}) is fixed to "
                                  f"{dim.dim_value}; it must be dynamic")


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
