"""A whole model's separate cnn and bilstm runners, opened like the model's runner.

Work that reuses frames across overlapping windows (a video's timeline) runs the CNN once per frame and the BiLSTM
once per window, so it needs the two stages apart. :func:`open_stages` finds them for a runner of the whole model:

| runner of the model | its stages |
|---|---|
| ONNX Runtime, ``DIR/model.onnx`` | ``DIR/cnn.onnx`` and ``DIR/bilstm.onnx`` (every export writes them), same options |
| PyTorch, a ``.pt`` checkpoint | the checkpoint's CNN and BiLSTM (``stage="cnn"`` / ``"bilstm"``), same options |
| TensorRT, ``DIR/NAME.engine`` | ``DIR/cnn.engine`` and ``DIR/bilstm.engine`` (same suffix), same TensorRT and GPU |
| Triton (a URL) | none: the server runs the whole model |

Each stage must come from the same checkpoint as the model (``ModelMetadata.check_same_model``).
:class:`WindowModel` holds the runners that classify a video's windows (:mod:`runtime.timeline`): the stages apart
where :func:`open_stages` finds them, else the whole model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from .base import BaseRunner
from .errors import RuntimeInputError

logger = logging.getLogger(__name__)

STAGES = ("cnn", "bilstm")


def open_stages(runner: BaseRunner) -> tuple:
    """The cnn and bilstm runners of the model ``runner`` runs, made with its options (not yet activated; the
    caller deactivates them).

    Args:
        runner (BaseRunner): a runner of the whole model (stage "model").

    Returns:
        tuple[BaseRunner, BaseRunner]: (cnn runner, bilstm runner).

    Raises:
        RuntimeInputError: the runner has no separate stages here, and why: another stage than the model, an export
            folder without the stage graphs or engines, stages of another model, a backend that runs the model
            whole (a served model).
    """
    if runner.stage != "model":
        raise RuntimeInputError(f"{runner.name} runs the {runner.stage} stage, not the whole model")
    backend = runner.backend_name
    if backend == "torch":
        stages = tuple(_torch_stage(runner, s) for s in STAGES)
    elif backend in ("onnxruntime", "tensorrt"):
        folder, suffix = Path(runner.path).parent, Path(runner.path).suffix
        missing = [f"{s}{suffix}" for s in STAGES if not (folder / f"{s}{suffix}").is_file()]
        if missing:
            raise RuntimeInputError(f"{folder} holds no {' or '.join(missing)} beside {Path(runner.path).name}")
        opener = _onnx_stage if backend == "onnxruntime" else _engine_stage
        stages = tuple(opener(runner, folder / f"{s}{suffix}") for s in STAGES)
    else:
        raise RuntimeInputError(f"the {backend} backend runs the whole model: it has no separate cnn and bilstm "
                                "stages")
    for stage, runner_of_stage in zip(STAGES, stages, strict=True):
        if runner_of_stage.stage != stage:
            raise RuntimeInputError(f"{getattr(runner_of_stage, 'path', runner_of_stage.name)} holds the "
                                    f"{runner_of_stage.stage} stage, not the {stage} stage")
        runner.metadata.check_same_model(runner_of_stage.metadata, f"{runner.name} and its {stage} stage")
    return stages


def _torch_stage(runner, stage: str) -> BaseRunner:
    from .backends.torch_backend.runner import TorchRunner

    # The loaded checkpoint is shared (not read again); its modules are the stages' modules, as for streaming.
    return TorchRunner(runner.checkpoint, device=runner.device, stage=stage, fast=runner.fast,
                       precision=runner.precision, cuda_graphs=runner.cuda_graphs,
                       channels_last=runner.channels_last, check_finite=runner.check_finite)


def _onnx_stage(runner, path: Path) -> BaseRunner:
    from .backends import load

    # The two sessions alternate on the same cores: spinning idle threads would steal them (as for streaming).
    options = {k: v for k, v in runner.load_options.items() if v is not None}
    return load(path, device=runner.device, backend="onnxruntime", **{**options, "allow_spinning": False})


def _engine_stage(runner, path: Path) -> BaseRunner:
    from .backends.tensorrt import TrtRunner

    # The model's TensorRT and CUDA: an engine another flavour built is refused by its report, as a load would.
    # No runtime cache: one file cannot hold two engines' kernels.
    return TrtRunner(path, device=runner.device_index, cuda_graphs=runner.cuda_graphs, trt_module=runner.tm,
                     cuda_api=runner.cuda, check_finite=runner.check_finite)


class WindowModel:
    """The runners that classify windows of a video: the split path (``frame_runner``, the cnn stage, once per frame;
    ``window_runner``, the bilstm stage, once per window) or the whole path (no frame runner; ``window_runner`` runs
    the model on each window's frames).

    Use :meth:`for_runner`; a model that opened its stages closes them in :meth:`close` (or as a context manager).

    Attributes:
        window_runner (BaseRunner): the bilstm stage (split) or the whole model.
        frame_runner (BaseRunner | None): the cnn stage (split), None on the whole path.
        whole (BaseRunner | None): on the split path, the whole model the stages came from (used for windows that
            share no frame, where splitting saves nothing); None if unknown.
        reason (str): why the whole path runs ("" on the split path).
    """

    def __init__(self, window_runner: BaseRunner, frame_runner: Optional[BaseRunner] = None, *, owns: bool = False,
                 reason: str = "", whole: Optional[BaseRunner] = None) -> None:
        self.window_runner, self.frame_runner = window_runner, frame_runner
        self.whole = whole if frame_runner is not None else None
        self.reason = reason
        self._owns = owns

    @classmethod
    def for_runner(cls, runner: Any, *, split: bool = True) -> "WindowModel":
        """The window model of a whole-model runner: its split stages (:func:`runtime.stages.open_stages`, owned by
        the result) or, without them or with ``split=False``, the runner itself on the whole path (logged once,
        with the reason). A ``(cnn_runner, bilstm_runner)`` pair runs split (the caller keeps them).

        Raises:
            RuntimeInputError: a runner of one stage, a pair that is not a cnn and a bilstm runner of one model.
        """
        if isinstance(runner, (tuple, list)):
            if len(runner) != 2 or not all(isinstance(r, BaseRunner) for r in runner) or \
                    (runner[0].stage, runner[1].stage) != ("cnn", "bilstm"):
                raise RuntimeInputError("a runner pair must be a tuple (cnn_runner, bilstm_runner) of runtime runners")
            runner[0].metadata.check_same_model(runner[1].metadata, "the cnn and bilstm runners")
            return cls(runner[1], runner[0])
        if not isinstance(runner, BaseRunner) or runner.stage != "model":
            what = f"the {runner.stage} stage" if isinstance(runner, BaseRunner) else type(runner).__name__
            raise RuntimeInputError(f"classifying a video's windows takes a whole model, not {what}")
        if not split:
            return cls(runner, reason="the whole path was asked for")
        try:
            cnn, bilstm = open_stages(runner)
        except RuntimeInputError as e:
            logger.warning("%s: windows run the whole model each (every frame's CNN once per window it lies in): %s",
                           runner.name, e)
            return cls(runner, reason=str(e))
        return cls(bilstm, cnn, owns=True, whole=runner)

    @property
    def split(self) -> bool:
        """Whether each frame's CNN runs once (the split path)."""
        return self.frame_runner is not None

    @property
    def metadata(self):
        return self.window_runner.metadata

    @property
    def frame_size(self) -> tuple:
        return tuple(self.metadata.frame_size)

    def check_window(self, frames: int) -> None:
        """Refuse windows longer than the window runner takes (an engine's or a served model's time range)."""
        hi = self.window_runner.input_spec.time_range[1]
        if hi is not None and frames > hi:
            raise RuntimeInputError(f"windows of {frames} frames are longer than {self.window_runner.name} takes: "
                                    f"clips of 1..{hi} frames; use windows of {hi} frames or fewer")

    def close(self) -> None:
        """Deactivate the stages this model opened (runners it was given are left to their owner)."""
        if self._owns:
            self.frame_runner.deactivate()
            self.window_runner.deactivate()

    def __enter__(self) -> "WindowModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
