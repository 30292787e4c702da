"""The export contract in one place (Optimum ``OnnxConfig`` style): graphs, I/O names, dynamic axes, opset,
verification shapes, tolerances per precision and the default TensorRT optimisation profiles.

Both exporters (:mod:`export.to_onnx`, :mod:`export.to_trt`) and the tests read :data:`SPEC`; the names follow
``docs/ARCHITECTURE.md`` and must not change without changing that page first.

Precisions (graph I/O is float32 in all of them; the casts live inside the graph, so it is strongly typed):

* ``fp32``: everything float32.
* ``fp16``: the CNN runs in float16 (``Cast`` to half after ``frames``, back to float before the BiLSTM); the BiLSTM
  and both heads stay float32. The default for engines: the CNN is most of the compute, the recurrence keeps fp32
  accuracy over long clips.
* ``fp16-all``: the BiLSTM and heads in float16 too (opt-in); verified at the longest T of the default profile.

Tolerances (norm-based relative error ``||y - ref|| / ||ref||`` per output, against the float32 PyTorch model with
packed sequences, i.e. the exact padded-batch semantics):

* ``fp32``: 1e-4; ONNX Runtime measures ~1e-7 here, so this only absorbs summation order.
* ``fp16``: 1e-2. float16 has a unit roundoff of 4.9e-4; a ResNet rounds each of its ~20 layer outputs and the BN
  folding/accumulation order differs between runtimes, so errors of 1e-3 are normal (3e-4 was measured on an H100
  with random weights). 1e-2 leaves 10x headroom for trained weights and larger
  activations, while a broken graph (wrong cast, lost ``sequence_lens``, wrong layout) errs by O(1) and still fails.
* ``fp16-all``: 3e-2. The recurrence carries float16 rounding across T steps in both directions (error grows
  roughly with sqrt(T)); at T=128 with the tiny test model it measures below 1e-2, so 3e-2 still separates rounding
  from a wrong graph.

``max_abs`` (largest absolute difference) is reported for every output but not gated: logits have no fixed scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from runtime.spec import GRAPHS

PRECISIONS = ("fp32", "fp16", "fp16-all")
BATCH_AXIS = "batch"
TIME_AXIS = "time"


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph: file name, ordered input and output names, and the dynamic axes of each tensor.

    Attributes:
        name (str): "model", "cnn" or "bilstm".
        inputs (tuple[str, ...]): input names in feed order.
        outputs (tuple[str, ...]): output names in order.
        dynamic_axes (dict[str, dict[int, str]]): tensor name -> {axis: "batch" | "time"}.
    """

    name: str
    inputs: tuple
    outputs: tuple
    dynamic_axes: dict

    @property
    def filename(self) -> str:
        return f"{self.name}.onnx"

    @property
    def has_lstm(self) -> bool:
        return self.name in ("model", "bilstm")


@dataclass(frozen=True)
class Tolerance:
    """Gate for one precision: norm-based relative error per output must be <= ``rel``."""

    rel: float
    why: str = ""


@dataclass(frozen=True)
class Shape:
    """A verification case: batch, time and optional per-clip lengths (None: every clip is T long)."""

    batch: int
    time: int
    lengths: Optional[tuple] = None

    @property
    def label(self) -> str:
        s = f"B{self.batch}xT{self.time}"
        return s + (f" lengths={list(self.lengths)}" if self.lengths else "")


_BT = {0: BATCH_AXIS, 1: TIME_AXIS}


@dataclass(frozen=True)
class ExportSpec:
    """Everything the exporters and tests agree on. Use the module-level :data:`SPEC` instance."""

    default_opset: int = 17
    example_shape: tuple = (2, 5)
    graphs: dict = field(default_factory=lambda: {
        "model": GraphSpec("model", ("frames", "lengths"), ("frame_logits", "clip_logits"),
                           {"frames": _BT, "lengths": {0: BATCH_AXIS}, "frame_logits": _BT,
                            "clip_logits": {0: BATCH_AXIS}}),
        "cnn": GraphSpec("cnn", ("frames",), ("features",), {"frames": _BT, "features": _BT}),
        "bilstm": GraphSpec("bilstm", ("features", "lengths"), ("frame_logits", "clip_logits"),
                            {"features": _BT, "lengths": {0: BATCH_AXIS}, "frame_logits": _BT,
                             "clip_logits": {0: BATCH_AXIS}}),
    })
    tolerances: dict = field(default_factory=lambda: {
        "fp32": Tolerance(1e-4, "float32 end to end; only summation order differs"),
        "fp16": Tolerance(1e-2, "float16 CNN (unit roundoff 4.9e-4 over ~20 layers), float32 BiLSTM and heads"),
        "fp16-all": Tolerance(3e-2, "float16 everywhere; the recurrence accumulates rounding over T"),
    })
    # Default TensorRT profiles: low latency (one clip, any length up to 128) and throughput (big batches of short
    # clips). Written the way --profile takes them.
    default_profiles: tuple = ("batch=1:1:8,time=1:16:128", "batch=8:64:64,time=1:16:32")
    longest_time: int = 128  # longest T of the default profiles: fp16-all is verified there

    def graph(self, name: str) -> GraphSpec:
        """The :class:`GraphSpec` of ``name``.

        Raises:
            ValueError: unknown graph name (lists the valid ones).
        """
        if name not in self.graphs:
            raise ValueError(f"unknown graph {name!r}; valid choices: {', '.join(GRAPHS)}")
        return self.graphs[name]

    def tolerance(self, precision: str) -> Tolerance:
        """The :class:`Tolerance` for ``precision``.

        Raises:
            ValueError: unknown precision (lists the valid ones).
        """
        check_precision(precision)
        return self.tolerances[precision]

    def verification_shapes(self, precision: str, example_shape: Optional[tuple] = None) -> list:
        """Shapes the export is verified at, all different from the export example (B, T).

        T=1, a T four times the example's, a padded batch with mixed lengths (shortest 1, both directions must skip
        the padding), and for ``fp16-all`` a padded batch at the longest T of the default profile.
        """
        b0, t0 = example_shape or self.example_shape
        long_t = max(4 * t0, t0 + 3)
        shapes = [
            Shape(1, 1),
            Shape(b0 + 1, long_t),
            Shape(4, t0 + 7, (t0 + 7, 3, 1, t0 + 2)),
        ]
        if precision == "fp16-all":
            shapes.append(Shape(2, self.longest_time, (self.longest_time, self.longest_time // 2 + 5)))
        return [s for s in shapes if (s.batch, s.time) != (b0, t0)]


SPEC = ExportSpec()


def check_precision(precision: str) -> str:
    """Return ``precision`` if valid.

    Raises:
        ValueError: not one of :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid choices: {', '.join(PRECISIONS)}")
    return precision
