"""What ``python -m runtime info`` prints: a runner's backend, stage, accepted shapes and metadata, or the same read
from a TensorRT engine's report (no GPU or TensorRT needed)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import RuntimeInputError


def describe(runner) -> list[str]:
    """Human-readable lines: backend and providers, stage, what ``infer`` accepts, and the model metadata."""
    providers = getattr(runner, "stage_providers", None) or getattr(runner, "provider", None)
    return _describe(f"{runner.backend_name}" + (f" ({providers})" if providers else ""), runner.input_spec,
                     runner.metadata)


def describe_engine_report(path: str | os.PathLike) -> list[str]:
    """The lines of :func:`describe` for a TensorRT engine, from its JSON report (no GPU or TensorRT needed), once
    the engine file's size and sha256 match the report: a report copied beside another file describes nothing."""
    from .backends.engine_report import check_engine_file, read_report
    from .spec import InputSpec, ModelMetadata, Profile

    if not Path(path).is_file():
        raise RuntimeInputError(f"{path} does not exist (or is not a file)")
    report = read_report(Path(path))
    check_engine_file(Path(path), report)  # before anything else is read from the report
    meta = ModelMetadata.from_dict(report["metadata"], f"{path}.json")  # says what is wrong and what is valid
    try:
        profiles = [Profile((int(p["axes"]["batch"][0]), int(p["axes"]["batch"][2])),
                            (int(p["axes"]["time"][0]), int(p["axes"]["time"][2]))) for p in report["profiles"]]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise RuntimeInputError(f"{path}.json lacks the metadata or profiles python -m export.to_trt writes "
                                f"({type(e).__name__}: {e}); rebuild the engine with it") from e
    trt = report.get("trt") or {}
    target = report.get("target") or {}
    compatible = " (version-compatible: the TensorRT lean runtime runs it too)" if trt.get("version_compatible") else ""
    header = (f"tensorrt engine, built by {trt.get('flavour')} {trt.get('version')}{compatible} for "
              f"{target.get('name') or 'compute capability ' + str(target.get('compute_capability'))} "
              "(read from its report: not loaded here)")
    return _describe(header, InputSpec.for_graph(meta.graph, meta, profiles), meta)


def _describe(backend: str, spec, meta) -> list[str]:
    lines = [f"backend      {backend}",
             f"stage        {spec.graph}",
             f"input        {spec.input_name}: {spec.dtype} (batch, time, {', '.join(map(str, spec.item_shape))})"
             + (", lengths: int32 (batch,)" if spec.takes_lengths else ""),
             "accepts      " + "; ".join(p.describe() for p in spec.profiles),
             f"outputs      {', '.join(spec.output_names)}",
             f"classes      {meta.num_classes}: {', '.join(meta.class_names)}",
             f"frame size   {meta.frame_size[0]}x{meta.frame_size[1]} (H x W); mean {meta.mean}, std {meta.std}",
             f"precision    {meta.precision}; written by package {meta.package_version}"]
    lines += [f"backbone     {meta.backbone_summary}"] if meta.backbone_summary else []
    if meta.extra.get("checkpoint_sha256"):
        lines.append(f"checkpoint   sha256 {meta.extra['checkpoint_sha256'][:16]}...")
    return lines
