"""The files a benchmark run needs from its checkpoint: ONNX exports per precision, the int8 export, TensorRT engines.

Each is built (or taken from a given folder) once per run and cached under a typed key.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import time
from pathlib import Path
from typing import NamedTuple, Optional

from benchmarks.environment import Unavailable

logger = logging.getLogger(__name__)

# The random clips export.quantize calibrates on when no int8 folder is given: not the timed pools' seeds.
CALIBRATION_SEED = 12345
# One TensorRT profile spans the suite's whole default grid.
ENGINE_PROFILE = "batch=1:1:64,time=1:16:128"


# Cache keys, one type per kind of artifact (each kind has its own dict).
class ExportKey(NamedTuple):
    precision: str  # the model/cnn/bilstm ONNX graphs at fp32, fp16 or int8


class EngineKey(NamedTuple):
    graph: str  # the TensorRT engine of model, cnn or bilstm


def export_checkpoint_sha256(folder: Path) -> tuple[Optional[str], str]:
    """(checkpoint sha256, where it was read) of an export folder: its ``export_report.json``, else the metadata of
    its ``model.onnx``; (None, "") when neither records one (nothing to compare)."""
    from runtime.spec import EXPORT_REPORT_NAME

    try:
        recorded = json.loads((folder / EXPORT_REPORT_NAME).read_text(encoding="utf-8")).get("checkpoint_sha256")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded:
        return str(recorded), EXPORT_REPORT_NAME
    model = folder / "model.onnx"
    if not model.is_file() or importlib.util.find_spec("onnxruntime") is None:  # then its contenders are skipped
        return None, ""
    from runtime.backends import load

    runner = load(model, device="cpu")  # reads (and checks) the graph's metadata; never activated
    recorded = runner.metadata.extra.get("checkpoint_sha256")
    runner.deactivate()
    return (str(recorded), "model.onnx metadata") if recorded else (None, "")


class Artifacts:
    """The exports and engines of one checkpoint, built under ``workdir`` on first use.

    Args:
        checkpoint (Path): the ``.pt`` checkpoint under test.
        workdir (Path): where exports (one folder per precision) and engines go.
        frame_size (tuple[int, int]): the model's (H, W), for the int8 calibration clips.
        onnx_dir (Path, optional): already exported fp32 graphs of the checkpoint. Defaults to None.
        int8_dir (Path, optional): an ``export.quantize`` folder of the checkpoint (calibrated on real data) to use
            instead of quantizing on N(0,1) frames. Defaults to None.

    Raises:
        ValueError: a given folder records another checkpoint's sha256.
    """

    def __init__(self, checkpoint: Path, workdir: Path, frame_size: tuple[int, int], *,
                 onnx_dir: Optional[Path] = None, int8_dir: Optional[Path] = None) -> None:
        self.checkpoint = Path(checkpoint)
        self.workdir = Path(workdir)
        self.frame_size = tuple(frame_size)
        self._exports: dict[ExportKey, Path] = {}
        self._engines: dict[EngineKey, Path] = {}
        for precision, folder in (("fp32", onnx_dir), ("int8", int8_dir)):
            if folder:
                self._check_export_source(Path(folder))
                self._exports[ExportKey(precision)] = Path(folder)
        self.int8_external = int8_dir is not None

    @functools.cached_property
    def checkpoint_sha256(self) -> str:
        from runtime._io import sha256_file

        return sha256_file(self.checkpoint)

    def _check_export_source(self, folder: Path) -> None:
        """Refuse an export folder of another checkpoint, by the checkpoint sha256 its export records (otherwise its
        graphs fail later on a frame size or class count, or are timed against the wrong baseline).

        Raises:
            ValueError: the folder records another checkpoint's sha256, naming both.
        """
        recorded, source = export_checkpoint_sha256(folder)
        if recorded is not None and recorded != self.checkpoint_sha256:
            raise ValueError(f"{folder} was exported from another checkpoint: its {source} records checkpoint sha256 "
                             f"{recorded[:16]}..., but {self.checkpoint} has {self.checkpoint_sha256[:16]}...; pass "
                             f"the export of this checkpoint (python -m export.to_onnx {self.checkpoint} --out DIR)")

    def onnx_dir(self, precision: str) -> Path:
        """Folder with model/cnn/bilstm ONNX graphs of the checkpoint at a precision (exported once, cached).

        int8 is quantized from the fp32 export, calibrated on seeded N(0,1) clips (the distribution the benchmark
        feeds), with the agreement gate off (the random-weight reference model has no accuracy to keep); padding exactness and the cnn + bilstm composition are still gated by export.quantize.

        Raises:
            Unavailable: the export modules (or onnx, onnxscript) are not installed.
        """
        key = ExportKey(precision)
        if key not in self._exports:
            folder = self._quantize() if precision == "int8" else self._export(precision)
            self._exports[key] = folder
        return self._exports[key]

    def _export(self, precision: str) -> Path:
        try:
            from export.to_onnx import export_onnx
        except ImportError as e:
            raise Unavailable(f"export.to_onnx is not importable ({e}); cannot build ONNX graphs") from e
        t0 = time.perf_counter()
        try:
            result = export_onnx(self.checkpoint, self.workdir / f"onnx-{precision}", precision=precision, force=True)
        except ImportError as e:  # onnx / onnxscript missing on a bare machine
            raise Unavailable(f"ONNX export needs a module that is not installed: {e}") from e
        logger.info("exported %s ONNX graphs in %.1f s", precision, time.perf_counter() - t0)
        return Path(result.paths["model"]).parent

    def _quantize(self) -> Path:
        import numpy as np

        from export.quantize import quantize_export

        rng = np.random.default_rng(CALIBRATION_SEED)
        clips = rng.standard_normal((24, 8, 3, *self.frame_size)).astype(np.float32)
        t0 = time.perf_counter()
        result = quantize_export(self.onnx_dir("fp32"), self.workdir / "onnx-int8", clips[:16],
                                 clips[16:], min_agreement=0.0, force=True,
                                 data_description=f"N(0,1) frames, seed {CALIBRATION_SEED}")
        logger.info("quantized int8 ONNX graphs in %.1f s", time.perf_counter() - t0)
        return Path(result.paths["model"]).parent

    @functools.cached_property
    def int8_gate(self) -> dict:
        """The agreement facts of the given int8 export, read once per run (it hashes the checkpoint).

        Raises:
            ValueError: the export has no readable report, did not pass its gate, or is of another checkpoint.
        """
        from runtime.spec import EXPORT_REPORT_NAME

        folder = self._exports[ExportKey("int8")]
        try:
            report = json.loads((folder / EXPORT_REPORT_NAME).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{folder} has no readable {EXPORT_REPORT_NAME}; write the int8 export with python -m "
                             f"export.quantize ({e})") from e
        if report.get("precision") != "int8" or not report.get("ok"):
            raise ValueError(f"{folder}/{EXPORT_REPORT_NAME} is not a passed int8 export (precision "
                             f"{report.get('precision')!r}, ok {report.get('ok')!r})")
        if report.get("checkpoint_sha256") != self.checkpoint_sha256:
            raise ValueError(f"{folder} was quantized from another checkpoint than {self.checkpoint}")
        v = report.get("verification", {})
        return {"int8_clip_agreement": v.get("clip_agreement"), "int8_verified_clips": v.get("clips"),
                "int8_data": report.get("quantization", {}).get("data")}

    def engine(self, graph: str) -> Path:
        """The TensorRT engine of a graph, built from the fp16 export on first use.

        The fp16 graph (fp16 CNN, fp32 BiLSTM): a strongly typed network takes its precision from the graph, so an
        fp32 graph would give an fp32 engine.

        Raises:
            Unavailable: export.to_trt is not importable.
        """
        key = EngineKey(graph)
        if key not in self._engines:
            try:
                from export.to_trt import build_engine
            except ImportError as e:
                raise Unavailable(f"export.to_trt.build_engine is not importable ({e})") from e
            path = self.workdir / "trt" / f"{graph}.engine"
            if not path.exists():
                build_engine(self.onnx_dir("fp16") / f"{graph}.onnx", path, profiles=[ENGINE_PROFILE])
            self._engines[key] = path
        return self._engines[key]
