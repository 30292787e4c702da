"""The files a Triton repository is made from and serves: the SRC of ``python -m export.to_triton`` (an ONNX export
folder or an engine with its report), what a version folder's model file declares (metadata, I/O, the engine's
optimization profiles), whether it is still the file its report records, and which (batch, time) shapes the engine's
profiles hold."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from export.errors import ExportError
from runtime.errors import RuntimeInputError
from runtime.spec import EXPORT_REPORT_NAME, Profile, check_export_file
from runtime.triton import protocol as P

KIND_CHOICES = ("auto",) + P.KINDS
# ONNX TensorProto element types and TensorRT dtype names -> Triton data types.
ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 6: "TYPE_INT32", 7: "TYPE_INT64", 13: "TYPE_UINT64", 9: "TYPE_BOOL"}
TRT_TO_TRITON = {"FLOAT": "TYPE_FP32", "HALF": "TYPE_FP16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
                 "BOOL": "TYPE_BOOL"}
SPLIT_GRAPHS = ("cnn.onnx", "bilstm.onnx")


@dataclass
class Source:
    """A resolved SRC: its kind, the model's metadata, the files each model's version folder gets (name -> source
    path) and the engine's profiles (None for ONNX)."""

    path: Path
    kind: str
    metadata: dict
    clip_files: dict
    stream_files: dict = field(default_factory=dict)
    profiles: Optional[list] = None
    notes: list = field(default_factory=list)  # what the user must know to serve it (engine flavour, version)


def resolve_source(src, kind: str = "auto", stream: bool = True) -> Source:
    """Read SRC: an engine with its report, or an ONNX export folder (or its ``model.onnx``).

    Raises:
        ExportError: a missing or unrecognised SRC, a kind it cannot serve, a damaged or mismatched file.
    """
    if kind not in KIND_CHOICES:
        raise ExportError(f"--kind {kind!r} is not one of {', '.join(KIND_CHOICES)}")
    src = Path(src)
    if not src.exists():
        raise ExportError(f"SRC {src} does not exist; give an ONNX export folder (onnx/fp32, onnx/fp16, onnx/int8) "
                          "or an engine with its ENGINE.json report")
    engine = None
    if src.is_file() and src.suffix.lower() in (".engine", ".plan"):
        engine = src
    elif src.is_file() and src.suffix.lower() == ".onnx":
        if src.name != "model.onnx":
            raise ExportError(f"{src} is the {src.stem} graph; a repository serves model.onnx (whole clips), and the "
                              f"python kind's stream model runs the folder's cnn.onnx and bilstm.onnx: pass the export "
                              f"folder {src.parent}")
        src = src.parent
    elif src.is_dir() and not (src / "model.onnx").is_file():
        found = [src / n for n in ("model.engine", "model.plan") if (src / n).is_file()]
        if not found:
            raise ExportError(f"{src} holds neither model.onnx (an export of `python -m export.to_onnx`) nor "
                              "model.engine/model.plan; give an ONNX export folder or an engine with its report")
        engine = found[0]
    elif not src.is_dir():
        raise ExportError(f"SRC {src} is neither an ONNX export folder nor an .engine/.plan file")
    if engine is not None:
        if kind not in ("auto", P.KIND_TENSORRT):
            raise ExportError(f"--kind {kind} serves an ONNX export folder, but {engine} is a TensorRT engine; pass "
                              "the export folder the engine was built from, or --kind tensorrt")
        return _engine_source(engine)
    if kind == P.KIND_TENSORRT:
        raise ExportError(f"--kind tensorrt serves an engine, but {src} is an ONNX export folder; build one with "
                          f"`python -m export.to_trt {src / 'model.onnx'} --out model.engine` and pass it")
    return _onnx_source(src, P.KIND_ONNXRUNTIME if kind == "auto" else kind, stream)


def _engine_source(engine: Path) -> Source:
    from runtime.backends.engine_report import check_engine_file, read_report, report_path_for

    try:
        report = read_report(engine)
        check_engine_file(engine, report)
    except RuntimeInputError as e:
        raise ExportError(str(e)) from e
    graph = report["metadata"].get("graph")
    if graph != "model":
        raise ExportError(f"{engine} was built from the {graph} graph; a repository serves whole clips: build the "
                          "engine from model.onnx (`python -m export.to_trt DIR/model.onnx --out model.engine`)")
    profiles = engine_profiles(report)
    if not profiles:
        raise ExportError(f"{report_path_for(engine)} records no batch/time optimization profiles")
    return Source(engine, P.KIND_TENSORRT, report["metadata"],
                  {"model.plan": engine, "model.plan.json": report_path_for(engine)}, profiles=profiles,
                  notes=[engine_serving_note(engine, report.get("trt") or {})])


def engine_serving_note(engine: Path, trt: dict) -> str:
    """What serving ``engine`` needs, from its report's ``trt`` record: Triton's tensorrt backend deserializes a plan
    with the full TensorRT of its own release, so the versions must match, and a TensorRT-RTX plan does not load."""
    flavour, version = trt.get("flavour", "tensorrt"), trt.get("version", "unknown")
    if flavour != "tensorrt":
        return (f"{engine.name} was built by {flavour} {version}; Triton's tensorrt backend runs plans of full "
                f"TensorRT only, so this repository is for checking, not serving: rebuild the engine with full "
                f"TensorRT of the Triton release that will serve it (`python -m export.to_trt model.onnx --out "
                f"model.engine` where `tensorrt` is installed, e.g. in that release's container), then regenerate")
    return (f"{engine.name} was built with TensorRT {version}: serve it with the Triton release whose container ships "
            f"TensorRT {version} (Triton's release notes list it); another TensorRT version refuses the plan")


def _onnx_source(folder: Path, kind: str, stream: bool) -> Source:
    from export.onnx_graph import read_metadata

    # The python kind's clip model runs the split graphs when the export has them (the CNN over real frames only),
    # model.onnx otherwise; its stream model needs them.
    with_split = kind == P.KIND_PYTHON and (stream or all((folder / n).is_file() for n in SPLIT_GRAPHS))
    names = ["model.onnx"] + (list(SPLIT_GRAPHS) if with_split else [])
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        hint = " (or pass --no-stream to serve whole clips only)" if kind == P.KIND_PYTHON else ""
        raise ExportError(f"{folder} lacks {missing}; export the folder with `python -m export.to_onnx CHECKPOINT "
                          f"--out DIR`{hint}")
    try:
        for n in names:
            check_export_file(folder / n)  # a damaged graph still parses: compare it with the export's digest
    except RuntimeInputError as e:
        raise ExportError(str(e)) from e
    metadata = read_metadata(folder / "model.onnx")
    if metadata is None:
        raise ExportError(f"{folder / 'model.onnx'} lacks the {P.METADATA_PARAMETER!r} metadata; export it with "
                          "`python -m export.to_onnx CHECKPOINT --out DIR`")
    report = [EXPORT_REPORT_NAME] if (folder / EXPORT_REPORT_NAME).is_file() else []
    files = {n: folder / n for n in names + report}
    stream_files = {n: folder / n for n in list(SPLIT_GRAPHS) + report} if with_split and stream else {}
    return Source(folder, kind, metadata, files, stream_files)


# --- what a version folder's model file declares -------------------------------------------------------------------


@dataclass
class Artifact:
    """What a version folder's model file declares: its metadata, its I/O (name -> (Triton dtype, dims without the
    batch dimension, -1 dynamic)) and its (batch, time) profiles (None: unbounded, as an ONNX graph)."""

    metadata: dict
    inputs: dict
    outputs: dict
    profiles: Optional[list]
    source: str


def onnx_artifact(path: Path) -> Artifact:
    """Read an ONNX graph's metadata and I/O (weights are not loaded).

    Raises:
        ExportError: unreadable, or without this package's metadata.
    """
    import onnx

    from export.onnx_graph import read_metadata

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ExportError(f"{path} is not a readable ONNX file: {type(e).__name__}: {e}") from e
    meta = read_metadata(proto)
    if meta is None:
        raise ExportError(f"{path} lacks the {P.METADATA_PARAMETER!r} metadata; export it with "
                          "`python -m export.to_onnx CHECKPOINT --out DIR`")
    inits = {i.name for i in proto.graph.initializer}

    def io(values):
        out = {}
        for vi in values:
            if vi.name in inits:
                continue
            t = vi.type.tensor_type
            dims = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in t.shape.dim]
            out[vi.name] = (ONNX_TO_TRITON.get(t.elem_type, f"ONNX type {t.elem_type}"), tuple(dims[1:]))
        return out

    return Artifact(meta, io(proto.graph.input), io(proto.graph.output), None, str(path))


def engine_artifact(report_path: Path) -> Artifact:
    """Read an engine report's metadata, I/O tensors and profiles.

    Raises:
        ExportError: unreadable, or not a report of ``python -m export.to_trt``.
    """
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportError(f"{report_path} is not a readable engine report: {e}") from e
    if not isinstance(report, dict) or not isinstance(report.get("metadata"), dict):
        raise ExportError(f"{report_path} is not an engine report of `python -m export.to_trt` (no 'metadata')")
    ins, outs = {}, {}
    for t in report.get("io_tensors") or []:
        entry = (TRT_TO_TRITON.get(t["dtype"], t["dtype"]), tuple(int(d) for d in t["shape"][1:]))
        (ins if t["mode"] == "INPUT" else outs)[t["name"]] = entry
    return Artifact(report["metadata"], ins, outs, engine_profiles(report), str(report_path))


def replaced_files(files: dict, engine: Optional[str] = None) -> list:
    """The version folder's model files that are no longer what their reports record: each graph against the sha256
    ``export_report.json`` beside it records, and ``engine`` (its file name, for the tensorrt kind) against its
    report's size and sha256. Such a file still parses, and may pass every other check, but the python model
    refuses to load it, and the other kinds would serve another model than the config describes.

    Args:
        files (dict): the version folder's file names -> paths.
        engine (str | None): the engine's file name (its report is ``NAME.json``). Defaults to None.

    Returns:
        list[str]: one sentence per such file (empty when all match or nothing records them).
    """
    from runtime.backends.engine_report import check_engine_file

    found = []
    for name in sorted(files):
        path = Path(files[name])
        try:
            if name.endswith(".onnx"):
                check_export_file(path)
            elif name == engine and f"{name}.json" in files:
                check_engine_file(path, json.loads(Path(files[f"{name}.json"]).read_text(encoding="utf-8")))
        except RuntimeInputError:
            report = EXPORT_REPORT_NAME if name.endswith(".onnx") else f"{name}.json"
            found.append(f"{path} is not the file {report} beside it records (its sha256 differs): it was replaced "
                         "or damaged after the repository was generated")
        except (OSError, ValueError) as e:
            found.append(f"{path} cannot be checked against {name}.json: {e}")
    return found


# --- the engine's optimization profiles ------------------------------------------------------------------------------


def engine_profiles(report: dict) -> list:
    """The (batch, time) boxes of an engine report's optimization profiles."""
    out = []
    for p in report.get("profiles") or []:
        axes = p.get("axes") or {}
        b, t = axes.get("batch"), axes.get("time")
        if b and t:
            out.append(Profile((int(b[0]), int(b[-1])), (int(t[0]), int(t[-1]))))
    return out


def uncovered(profiles: list, max_batch_size: int, buckets) -> list:
    """The (batch, time) pairs with batch in 1..max_batch_size and time in ``buckets`` that no profile holds."""
    return [(b, t) for t in buckets for b in range(1, max_batch_size + 1)
            if not any(p.contains(b, t) for p in profiles)]


def largest_batch(profiles: list, buckets) -> int:
    """The largest max_batch_size (up to 4096) whose every batch the profiles hold at every time bucket; 0: none."""
    best = 0
    while best < 4096 and not uncovered(profiles, best + 1, buckets):
        best += 1
    return best


def describe_coverage(profiles: list, max_batch_size: int, buckets) -> str:
    """What would fit: the largest max_batch_size at these buckets, the longest bucket at this max_batch_size."""
    best_b = largest_batch(profiles, buckets)
    fitting = [t for t in buckets if not uncovered(profiles, max_batch_size, [t])]
    profs = "; ".join(f"profile {i}: {p.describe()}" for i, p in enumerate(profiles))
    longest = f"time up to {max(fitting)}" if fitting else "no time bucket at all"
    return (f"the engine's profiles ({profs}) hold every batch up to {best_b} at these time buckets, and at "
            f"max_batch_size {max_batch_size} {longest}")
