"""Verification of exported graphs: each serialized graph runs with ONNX Runtime (or the ONNX reference evaluator
for graphs it cannot load) against the float32 PyTorch model with packed sequences, at shapes other than the export
example; the metric is the norm-based relative error per output (tolerances in :mod:`export.spec`)."""

from __future__ import annotations

import logging

from export.spec import SPEC
from runtime.evaluation import compare

logger = logging.getLogger(__name__)


def example_inputs(config, graph: str, batch: int, time_steps: int, lengths=None, seed: int = 0):
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
        feeds = example_inputs(model.config, graph, shape.batch, shape.time, shape.lengths, seed=100 + i)
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
