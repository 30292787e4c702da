"""What a runner accepts (:class:`InputSpec`) and what it knows about the model (:class:`ModelMetadata`).

Both are small frozen dataclasses that every backend fills in the same way, so the base runner can validate inputs
once for all backends and a user can ask any runner what it takes before feeding it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ._io import sha256_file
from .errors import RuntimeInputError

logger = logging.getLogger(__name__)

GRAPHS = ("model", "cnn", "bilstm")
METADATA_KEY = "cnn_bilstm_deploy"  # docs/ARCHITECTURE.md: the ONNX metadata property / engine report "metadata"
EXPORT_REPORT_NAME = "export_report.json"  # beside the graphs of an export folder; "sha256" maps file name -> digest
# Artifacts record the feature width F (``feature_dim``, measured from the network when exported). Those written
# before they did come from the only backbones of that time, whose widths are these.
LEGACY_FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


def check_class_names(class_names: Any, source: str) -> list:
    """The class names of a classifier, as strings: a list of at least 2 non-empty names.

    Raises:
        RuntimeInputError: not a list of non-empty names, or fewer than 2 (naming what was given).
    """
    if not isinstance(class_names, (list, tuple)) or not all(str(c) for c in class_names):
        raise RuntimeInputError(f"{source}: class_names must be a list of non-empty names, got {class_names!r}")
    names = [str(c) for c in class_names]
    if len(names) < 2:
        raise RuntimeInputError(f"{source}: a classifier needs at least 2 classes; got {len(names)} "
                                f"(class_names: {names})")
    return names


def _check_metadata_values(d: dict, frame_size: Any, source: str) -> None:
    """Refuse metadata no model could have: a frame size that is not two integers >= 1, a mean or std that is not
    three finite numbers, a std that is not positive."""
    if (not isinstance(frame_size, (list, tuple)) or len(frame_size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in frame_size)):
        raise RuntimeInputError(f"{source}: metadata frame_size must be (H, W), two integers >= 1, got "
                                f"{frame_size!r}")
    for key in ("mean", "std"):
        v = d[key]
        if (not isinstance(v, (list, tuple)) or len(v) != 3 or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
            raise RuntimeInputError(f"{source}: metadata {key} must be 3 finite numbers (R, G, B), got {v!r}")
    if min(d["std"]) <= 0:
        raise RuntimeInputError(f"{source}: metadata std must be > 0 for each channel (frames are divided by it), got "
                                f"{d['std']!r}")


def check_export_file(path) -> bool:
    """Compare an exported graph with the sha256 its folder's ``export_report.json`` records for it.

    A graph damaged inside (a bit flip, a partial overwrite) still parses and runs, so only a digest can tell.
    Nothing to compare (no report beside the file, an older report without digests, a file it does not list) is
    not an error: the check is skipped and False returned.

    Returns:
        bool: True when the file was checked and matched.

    Raises:
        RuntimeInputError: the file's digest differs from the recorded one.
    """
    path = Path(path)
    report_path = path.parent / EXPORT_REPORT_NAME
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        recorded = (report.get("sha256") or {}).get(path.name)
    except (OSError, ValueError, AttributeError) as e:
        if report_path.exists():
            logger.warning("%s is unreadable (%s); %s is not checked against it", report_path, e, path.name)
        return False
    if not recorded:
        return False
    actual = sha256_file(path)
    if actual != recorded:
        raise RuntimeInputError(f"{path} is damaged or was replaced after export: its sha256 is {actual[:16]}..., but "
                                f"{EXPORT_REPORT_NAME} beside it records {recorded[:16]}...; export the folder again: "
                                f"{reexport_command(path.parent, report)}")
    return True


def reexport_command(folder, report: Optional[dict] = None) -> str:
    """The command that writes the export ``folder`` again, whole (from its report's precision and source)."""
    report = report if isinstance(report, dict) else {}
    if report.get("precision") == "int8":
        return f"`python -m export.quantize {report.get('source') or 'FP32_EXPORT_DIR'} --out {folder} --force`"
    precision = report.get("precision") if report.get("precision") in ("fp32", "fp16", "fp16-all") else "fp32"
    return f"`python -m export.to_onnx CHECKPOINT --out {folder} --precision {precision} --force`"


@dataclass(frozen=True)
class ModelMetadata:
    """Model facts shared by every artifact (checkpoint, ONNX graph, engine report).

    Attributes:
        graph (str): which part the artifact serves, one of ``GRAPHS``.
        class_names (list[str]): C class names, index = logit position.
        mean (list[float]): per-channel RGB mean used by :func:`runtime.preprocess.preprocess_frames`.
        std (list[float]): per-channel RGB std.
        frame_size (tuple[int, int]): (H, W) the model takes.
        feature_dim (int): width F of the CNN feature.
        precision (str): precision of the artifact ("fp32", "fp16", ...). Defaults to "fp32".
        model_config (dict): the :class:`runtime.model.ModelConfig` as a dict. Defaults to {}.
        package_version (str): version of the package that wrote the artifact. Defaults to "unknown".
        extra (dict): any further keys of the artifact's metadata (exporter, checkpoint hash, ...). Defaults to {}.
    """

    graph: str
    class_names: list
    mean: list
    std: list
    frame_size: tuple
    feature_dim: int
    precision: str = "fp32"
    model_config: dict = field(default_factory=dict)
    package_version: str = "unknown"
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def backbone_summary(self) -> Optional[str]:
        """The backbone, its stem, feature width and starting weights in one line (None without a model config)."""
        c = self.model_config
        if not c.get("backbone"):
            return None
        return (f"{c['backbone']} ({c.get('stem', '?')} stem), feature width {self.feature_dim}; pretrained: "
                f"{c.get('pretrained', 'none')}")

    @classmethod
    def from_dict(cls, d: dict, source: str = "metadata") -> "ModelMetadata":
        """Build from the ``cnn_bilstm_deploy`` JSON dict written by the exporter.

        Raises:
            RuntimeInputError: keys missing or of the wrong kind; values no model has (fewer than 2 classes, a frame
                size that is not two integers >= 1, a mean/std that is not 3 finite numbers, a std <= 0).
        """
        if not isinstance(d, dict):
            raise RuntimeInputError(f"{source}: the {METADATA_KEY!r} metadata must be a JSON object, got {type(d)}")
        missing = [k for k in ("graph", "class_names", "mean", "std") if k not in d]
        if missing:
            raise RuntimeInputError(f"{source}: the {METADATA_KEY!r} metadata lacks keys {missing}; was it written by "
                                    "this package's exporter (python -m export.to_onnx)?")
        graph = str(d["graph"])
        if graph not in GRAPHS:
            raise RuntimeInputError(f"{source}: metadata graph {graph!r} is not one of {GRAPHS}")
        config = dict(d.get("model_config") or {})
        frame_size = d.get("frame_size") or config.get("frame_size")
        _check_metadata_values(d, frame_size, source)
        class_names = check_class_names(d["class_names"], source)
        backbone = config.get("backbone", "resnet34")
        feature_dim = d.get("feature_dim") or LEGACY_FEATURE_DIMS.get(backbone)
        if feature_dim is None:
            raise RuntimeInputError(f"{source}: metadata records no feature_dim for backbone {backbone!r}; export the "
                                    "model again with this package (python -m export.to_onnx)")
        known = {"graph", "class_names", "mean", "std", "frame_size", "precision", "model_config", "package_version",
                 "feature_dim"}
        return cls(
            graph=graph,
            class_names=class_names,
            mean=[float(x) for x in d["mean"]],
            std=[float(x) for x in d["std"]],
            frame_size=(int(frame_size[0]), int(frame_size[1])),
            feature_dim=int(feature_dim),
            precision=str(d.get("precision", "fp32")),
            model_config=config,
            package_version=str(d.get("package_version", "unknown")),
            extra={k: v for k, v in d.items() if k not in known},
        )

    @classmethod
    def from_json(cls, text: str, source: str = "metadata") -> "ModelMetadata":
        try:
            d = json.loads(text)
        except (TypeError, ValueError) as e:
            raise RuntimeInputError(f"{source}: the {METADATA_KEY!r} metadata is not valid JSON: {e}") from e
        return cls.from_dict(d, source)

    def check_same_model(self, other: "ModelMetadata", what: str) -> None:
        """Raise unless ``other`` (another stage's artifact) comes from the same model and checkpoint.

        Args:
            other (ModelMetadata): the other artifact's metadata.
            what (str): the two artifacts, for the message (e.g. "the cnn and bilstm runners").

        Raises:
            RuntimeInputError: feature width or class names differ, or both record checkpoints and they differ.
        """
        if self.feature_dim != other.feature_dim or self.class_names != other.class_names:
            raise RuntimeInputError(f"{what} come from different models (feature width or class names differ)")
        sha = [m.extra.get("checkpoint_sha256") for m in (self, other)]
        if all(sha) and sha[0] != sha[1]:
            raise RuntimeInputError(f"{what} were exported from different checkpoints (sha256 {sha[0][:12]}... vs "
                                    f"{sha[1][:12]}...); export both from the same one: `python -m export.to_onnx "
                                    "CHECKPOINT --out DIR --force` writes all three graphs of one checkpoint together")

    def with_graph(self, graph: str) -> "ModelMetadata":
        """The same metadata for another stage (a checkpoint serves all three)."""
        from dataclasses import replace

        if graph not in GRAPHS:
            raise RuntimeInputError(f"stage must be one of {GRAPHS}, got {graph!r}")
        return replace(self, graph=graph)


@dataclass(frozen=True)
class Profile:
    """One allowed (batch, time) box: ``min <= value <= max``; ``max=None`` means unbounded."""

    batch: tuple
    time: tuple

    def contains(self, batch: int, time: int) -> bool:
        return _in(batch, self.batch) and _in(time, self.time)

    def describe(self) -> str:
        return f"batch {_fmt(self.batch)}, time {_fmt(self.time)}"


def _in(v: int, r: tuple) -> bool:
    return r[0] <= v and (r[1] is None or v <= r[1])


def _fmt(r: tuple) -> str:
    return f"{r[0]}..{'inf' if r[1] is None else r[1]}"


@dataclass(frozen=True)
class InputSpec:
    """What a runner's ``infer`` accepts.

    Attributes:
        graph (str): "model" | "cnn" | "bilstm".
        input_name (str): "frames" (model, cnn) or "features" (bilstm).
        item_shape (tuple[int, ...]): the fixed trailing shape: (3, H, W) for frames, (F,) for features.
        dtype (str): element type the runner feeds its graph ("float32").
        takes_lengths (bool): whether ``lengths`` is an input (model, bilstm).
        profiles (tuple[Profile, ...]): allowed (batch, time) boxes; an input must fit one of them.
        output_names (tuple[str, ...]): keys of the dict ``infer`` returns.
        names (dict): every graph input name -> (dtype, shape with None for dynamic axes).
    """

    graph: str
    input_name: str
    item_shape: tuple
    dtype: str = "float32"
    takes_lengths: bool = True
    profiles: tuple = (Profile((1, None), (1, None)),)
    output_names: tuple = ("frame_logits", "clip_logits")
    names: dict = field(default_factory=dict)

    @classmethod
    def for_graph(cls, graph: str, metadata: ModelMetadata, profiles: Optional[Sequence[Profile]] = None) -> "InputSpec":
        """The spec of ``graph`` for a model described by ``metadata`` (unbounded batch/time unless ``profiles``)."""
        h, w = metadata.frame_size
        if graph in ("model", "cnn"):
            name, item = "frames", (3, h, w)
        elif graph == "bilstm":
            name, item = "features", (metadata.feature_dim,)
        else:
            raise RuntimeInputError(f"stage must be one of {GRAPHS}, got {graph!r}")
        takes_lengths = graph != "cnn"
        names = {name: ("float32", (None, None) + item)}
        if takes_lengths:
            names["lengths"] = ("int32", (None,))
        outputs = ("features",) if graph == "cnn" else ("frame_logits", "clip_logits")
        return cls(graph=graph, input_name=name, item_shape=item, takes_lengths=takes_lengths,
                   profiles=tuple(profiles) if profiles else (Profile((1, None), (1, None)),),
                   output_names=outputs, names=names)

    def check_io_names(self, inputs: Sequence[str], outputs: Sequence[str], source: str,
                       kind: str = "graph") -> None:
        """Raise unless an ONNX graph's or engine's input and output names are the ones docs/ARCHITECTURE.md gives
        for this graph.

        Args:
            inputs (Sequence[str]): the artifact's input names, in any order.
            outputs (Sequence[str]): its output names, in any order.
            source (str): the artifact, for the message (its path).
            kind (str): "graph" or "engine", for the message. Defaults to "graph".

        Raises:
            RuntimeInputError: a name missing or one too many.
        """
        want_in = [self.input_name] + (["lengths"] if self.takes_lengths else [])
        if sorted(inputs) != sorted(want_in) or sorted(outputs) != sorted(self.output_names):
            raise RuntimeInputError(f"{source}: a {self.graph} {kind} must have inputs {want_in} and outputs "
                                    f"{list(self.output_names)}, got {list(inputs)} and {list(outputs)}")

    @property
    def frame_size(self) -> Optional[tuple]:
        """(H, W) for frame inputs, None for feature inputs."""
        return tuple(self.item_shape[1:]) if self.input_name == "frames" else None

    @property
    def batch_range(self) -> tuple:
        """(min, max) over all profiles (max None = unbounded)."""
        return _union([p.batch for p in self.profiles])

    @property
    def time_range(self) -> tuple:
        return _union([p.time for p in self.profiles])

    def find_profile(self, batch: int, time: int) -> int:
        """Index of the first profile that holds (batch, time).

        Raises:
            RuntimeInputError: no profile holds it; the message lists the profiles and the export command that
                would build an engine covering the shape.
        """
        for i, p in enumerate(self.profiles):
            if p.contains(batch, time):
                return i
        boxes = "; ".join(f"profile {i}: {p.describe()}" for i, p in enumerate(self.profiles))
        hint = ""
        (b_lo, b_hi), (t_lo, t_hi) = self.batch_range, self.time_range
        if b_hi is not None and t_hi is not None:  # an engine: one profile over the old ranges and this shape
            b_range = f"{min(b_lo, batch)}:{batch}:{max(b_hi, batch)}"
            t_range = f"{min(t_lo, time)}:{time}:{max(t_hi, time)}"
            hint = (f". Rebuild the engine with a profile that covers it and every shape it took before, e.g. "
                    f"`python -m export.to_trt {self.graph}.onnx --out {self.graph}.engine --profile "
                    f"batch={b_range},time={t_range}`, or split the input")
        raise RuntimeInputError(f"{self.input_name} of batch {batch} and time {time} is outside what this "
                                f"{self.graph} runner accepts ({boxes}){hint}")


def _union(ranges: list) -> tuple:
    lo = min(r[0] for r in ranges)
    hi = None if any(r[1] is None for r in ranges) else max(r[1] for r in ranges)
    return (lo, hi)


def metadata_from_checkpoint(ckpt: Any, graph: str = "model") -> ModelMetadata:
    """ModelMetadata of a loaded :class:`runtime.checkpoint.Checkpoint`."""
    config = ckpt.config
    return ModelMetadata(
        graph=graph,
        class_names=list(ckpt.class_names),
        mean=list(ckpt.mean),
        std=list(ckpt.std),
        frame_size=tuple(config.frame_size),
        feature_dim=int(config.feature_dim),
        precision="fp32",
        model_config=config.to_dict(),
        package_version=ckpt.package_version,
    )
