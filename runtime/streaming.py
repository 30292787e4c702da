"""Live-video classification: one frame in, the newest frame's and the window's prediction out.

Each :meth:`StreamingClassifier.push` runs the CNN stage on the new frame only (batch 1, T 1) and writes its feature
into a ring buffer; the BiLSTM stage then runs over the last ``min(n, window)`` features. The per-frame cost is one
frame of CNN plus one BiLSTM pass over the window, never a window of CNN. Because the BiLSTM is bidirectional, the
result after N pushes equals the full model on the same last ``window`` frames.

The ring buffer holds each feature twice (at ``i`` and ``i + window``), so the last k features are always one
contiguous slice: no copy or roll per frame.

:func:`open_stream` is the factory for streams: a checkpoint, an export folder or a runner pair gives a
:class:`StreamingClassifier`; the URL of a stream model served by Triton gives a
:class:`runtime.triton.remote_stream.RemoteStream`. Both push, feed, reset and close alike (:mod:`runtime.stream_base`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .base import BaseRunner
from .errors import RuntimeInputError
from .inputs import check_count, check_flag, is_torch, to_numpy
from .stream_base import BaseStream, StreamResult

logger = logging.getLogger(__name__)

# Every push reruns the BiLSTM over the whole window and the ring buffer holds 2 x window features, so the window is
# bounded: 4096 frames is minutes of video at 30 fps, far beyond what a BiLSTM step per frame can keep up with.
MAX_WINDOW = 4096


def _find_pair(folder: Path, backend: str) -> tuple:
    if backend == "torch":
        raise RuntimeInputError(f"{folder} is an export folder (ONNX graphs or engines); the torch backend runs a .pt "
                                "checkpoint: pass the checkpoint, or backend='auto'/'onnxruntime'/'tensorrt'")
    engines = [(folder / f"cnn{s}", folder / f"bilstm{s}") for s in (".engine", ".plan")]
    onnx = (folder / "cnn.onnx", folder / "bilstm.onnx")
    if backend in ("auto", "tensorrt"):
        for pair in engines:
            if pair[0].is_file() and pair[1].is_file():
                return pair
        if backend == "tensorrt":
            raise RuntimeInputError(f"{folder} holds no cnn.engine + bilstm.engine (or .plan) pair; build them with "
                                    "`python -m export.to_trt DIR/cnn.onnx` and `... DIR/bilstm.onnx`")
    if backend in ("auto", "onnxruntime") and onnx[0].is_file() and onnx[1].is_file():
        return onnx
    raise RuntimeInputError(f"{folder} holds neither cnn.onnx + bilstm.onnx nor a cnn/bilstm engine pair; export them "
                            "with `python -m export.to_onnx CHECKPOINT --out DIR`")


def _open_stages(runner_or_path: Any, device, backend: str, options: dict) -> tuple:
    """(cnn runner, bilstm runner, whether the classifier owns them) for what :class:`StreamingClassifier` was given."""
    from .backends import check_options, load

    owns = True
    if isinstance(runner_or_path, (tuple, list)):
        if len(runner_or_path) != 2 or not all(isinstance(r, BaseRunner) for r in runner_or_path):
            raise RuntimeInputError("a runner pair must be a tuple (cnn_runner, bilstm_runner) of runtime runners")
        cnn, bilstm = runner_or_path
        owns = False
    elif isinstance(runner_or_path, BaseRunner):
        source = getattr(runner_or_path, "path", None)
        hint = (f"StreamingClassifier({str(Path(source).parent)!r}) (the folder of {Path(source).name})"
                if source is not None else "the checkpoint path")
        raise RuntimeInputError(f"streaming needs separate cnn and bilstm runners, got one {runner_or_path.stage} "
                                f"runner; pass {hint}, or a (cnn_runner, bilstm_runner) pair")
    elif isinstance(runner_or_path, (str, os.PathLike)):
        path = Path(runner_or_path)
        if path.is_dir():
            if options.get("runtime_cache") is not None:
                # One file for two engines: each stage would overwrite the other's kernels at deactivation.
                raise RuntimeInputError("runtime_cache names one file, but streaming runs two engines; load "
                                        "them with a cache each and pass the pair: StreamingClassifier(("
                                        "runtime.load(DIR/cnn.engine, runtime_cache=A), "
                                        "runtime.load(DIR/bilstm.engine, runtime_cache=B)))")
            cnn_path, bilstm_path = _find_pair(path, backend)
            if cnn_path.suffix == ".onnx":
                # The two sessions alternate on the same cores: spinning idle threads would steal them.
                options = {"allow_spinning": False, **options}
            cnn = load(cnn_path, device=device, backend=backend, **options)
            bilstm = load(bilstm_path, device=device, backend=backend, **options)
        elif path.suffix.lower() in (".pt", ".pth"):
            from .backends.torch_backend.runner import TorchRunner
            from .checkpoint import CheckpointError, load_checkpoint

            if backend not in ("auto", "torch"):
                raise RuntimeInputError(f"a checkpoint runs on the torch backend, not {backend!r}")
            check_options("torch", options)
            try:
                ckpt = load_checkpoint(path)  # once, shared by both stages
            except CheckpointError as e:
                raise RuntimeInputError(str(e)) from e
            cnn = TorchRunner(ckpt, device=device, stage="cnn", **options)
            bilstm = TorchRunner(ckpt, device=device, stage="bilstm", **options)
        elif path.is_file() and path.suffix.lower() in (".onnx", ".engine", ".plan"):
            raise RuntimeInputError(f"streaming runs the separate cnn and bilstm graphs, not {path.name}; pass the "
                                    f"folder that holds them: StreamingClassifier({str(path.parent)!r})")
        else:
            raise RuntimeInputError(f"{path} is neither a .pt checkpoint nor an export directory (with cnn.onnx + "
                                    "bilstm.onnx or cnn/bilstm engines)")
    else:
        raise RuntimeInputError(f"StreamingClassifier takes a path or a (cnn_runner, bilstm_runner) tuple, got "
                                f"{type(runner_or_path).__name__}")
    return cnn, bilstm, owns


class StreamingClassifier(BaseStream):
    """Classify a live stream frame by frame with the separate cnn and bilstm stages.

    Args:
        runner_or_path: a ``.pt`` checkpoint (PyTorch stages), an export directory holding ``cnn.onnx`` +
            ``bilstm.onnx`` (or ``cnn.engine`` + ``bilstm.engine``; engines win under ``backend="auto"``), or a
            tuple ``(cnn_runner, bilstm_runner)`` of runners you made (they are activated here, but you close them).
            A stream model served by Triton is opened with :func:`open_stream`.
        window (int): frames the BiLSTM looks back over, 1..:data:`MAX_WINDOW` (4096) and within the bilstm
            runner's profiles (an engine's time range). Defaults to 16.
        device (str | None): passed to :func:`runtime.load` for paths. Defaults to None.
        backend (str): passed to :func:`runtime.load`; for a directory it also picks engines or ONNX.
            Defaults to "auto".
        resize (bool): resize raw uint8 frames of another size to the model's frame size (as
            :func:`runtime.preprocess_frames` does) instead of rejecting them. Defaults to False.
        check_finite (bool): refuse a float frame holding NaN/Inf in :meth:`push` (one pass over the frame), before
            anything runs or the window changes; False skips it for callers that guarantee finite frames. This
            setting governs the stream's calls, whatever the runners' own setting. Defaults to True.
        **options: more :func:`runtime.load` options for both stages (e.g. ``fast``, ``providers``).

    Frames may come as numpy arrays or torch tensors, mixed: the ring buffer keeps the kind (and device) of the
    first frame after the start or a :meth:`reset`, and later features are moved to it. One classifier is one
    stream: it is not thread-safe (use one per stream and thread). After :meth:`close`, ``push`` and ``feed`` are
    refused, as for a served stream.

    Raises:
        RuntimeInputError: a URL (served streams open with :func:`open_stream`), a bad window (not an integer,
            beyond :data:`MAX_WINDOW`), a resize or check_finite that is not a bool, runners of the wrong stages or of
            different models, a window outside what the bilstm runner accepts, or anything :func:`runtime.load`
            rejects.
    """

    def __init__(self, runner_or_path: Any, window: int = 16, device=None, backend: str = "auto", *,
                 resize: bool = False, check_finite: bool = True, **options) -> None:
        from .triton.client import is_remote_url

        if is_remote_url(runner_or_path):
            raise RuntimeInputError(f"{runner_or_path} is served by Triton; StreamingClassifier runs a model in this "
                                    f"process: open the served stream with runtime.open_stream({runner_or_path!r})")
        check_count(window, "window")
        if window > MAX_WINDOW:  # before the 2 x window feature buffer exists (10**9 frames would ask for TiBs)
            raise RuntimeInputError(f"window must be an integer in 1..{MAX_WINDOW} (every push reruns the BiLSTM over "
                                    f"the whole window), got {window}")
        check_flag(resize, "resize")
        check_flag(check_finite, "check_finite")
        self.window = int(window)
        self.resize = bool(resize)
        self.check_finite = bool(check_finite)
        cnn, bilstm, self._owns = _open_stages(runner_or_path, device, backend, options)
        if cnn.stage != "cnn" or bilstm.stage != "bilstm":
            raise RuntimeInputError(f"need a cnn and a bilstm runner, got stages ({cnn.stage!r}, {bilstm.stage!r})")
        cnn.metadata.check_same_model(bilstm.metadata, "the cnn and bilstm runners")
        cnn.input_spec.find_profile(1, 1)
        bilstm.input_spec.find_profile(1, 1)
        bilstm.input_spec.find_profile(1, self.window)
        self.cnn, self.bilstm = cnn, bilstm
        self.metadata = bilstm.metadata
        self.frame_size = tuple(cnn.metadata.frame_size)
        self._buf = None
        self._count = 0
        cnn.activate()
        bilstm.activate()

    def reset(self) -> None:
        """Forget every frame (a new stream starts; it may bring frames of another kind or device)."""
        self._count = 0
        self._buf = None

    def push(self, frame: Any) -> StreamResult:
        """Add one frame and classify the newest frame and the window.

        Args:
            frame (np.ndarray | torch.Tensor): normalised float32 (3, H, W), or raw uint8 (H, W, 3) (normalised here
                with the model's mean/std; another size is an error unless the classifier was made with
                ``resize=True``).

        Returns:
            StreamResult: the newest frame's and the window's prediction.

        Raises:
            RuntimeInputError: a frame of the wrong shape, size or dtype, or one holding NaN/Inf (unless the
                classifier was made with ``check_finite=False``); a refused frame leaves the window as it was.
        """
        self._check_open()
        x = self.frame_input(frame)
        # Checked here once, for the frame the caller gave: the runners need not check it (or its feature) again.
        return self.push_feature(self.cnn.infer(x, check_finite=False)["features"][0, 0])

    def push_feature(self, feat: Any) -> StreamResult:
        """Add one frame's CNN feature (F,) (the cnn stage's output for :meth:`frame_input`'s result) to the window,
        run the BiLSTM over the window and classify, as :meth:`push` does.

        A caller that runs the cnn stage itself (the Triton stream model batches it over many streams' frames) checks
        each frame with :meth:`frame_input` and hands its feature here."""
        self._check_open()
        w = self.window
        if self._buf is None or self._count == 0:  # the first frame of a stream sets the buffer's kind and device
            if is_torch(feat):
                import torch

                self._buf = torch.zeros((2 * w, feat.shape[0]), dtype=feat.dtype, device=feat.device)
            else:
                self._buf = np.zeros((2 * w, feat.shape[0]), dtype=np.float32)
        elif is_torch(self._buf):  # a frame of another kind or device joins the same window
            import torch

            feat = torch.as_tensor(feat).to(self._buf.device)
        elif is_torch(feat):
            feat = to_numpy(feat)
        i = self._count % w
        self._buf[i] = feat
        self._buf[i + w] = feat
        self._count += 1
        k = min(self._count, w)
        end = i + w + 1
        out = self.bilstm.infer(self._buf[end - k:end][None], check_finite=False)
        frame_logits, clip_logits = out["frame_logits"][0, -1], out["clip_logits"][0]
        if is_torch(frame_logits):  # one device -> host copy (and one synchronisation) for both
            import torch

            both = to_numpy(torch.stack([frame_logits, clip_logits]))
            frame_logits, clip_logits = both[0], both[1]
        return StreamResult.from_logits(frame_logits, clip_logits, self.metadata.class_names, self._count, k)


    def _close(self) -> None:
        """Deactivate the runners this classifier created (runners passed in are left to their owner)."""
        if self._owns:
            self.cnn.deactivate()
            self.bilstm.deactivate()


def open_stream(source: Any, window: Optional[int] = None, device=None, backend: str = "auto", *,
                resize: bool = False, check_finite: bool = True, **options) -> BaseStream:
    """Open a stream over a model: in this process, or a session on a stream model served by Triton.

    Args:
        source: a ``.pt`` checkpoint, an export folder or a ``(cnn_runner, bilstm_runner)`` pair (see
            :class:`StreamingClassifier`); or ``grpc://HOST:PORT/NAME_stream`` / ``http://...``, a stream model of a
            repository written by ``python -m export.to_triton --kind python``.
        window (int | None): frames the BiLSTM looks back over. None: 16 in process, the served model's window for a
            URL (fixed by its repository; a window given for a URL must equal it). Defaults to None.
        device (str | None): passed to :func:`runtime.load`; for a URL it must be left out. Defaults to None.
        backend (str): passed to :func:`runtime.load`; for a URL it must be left "auto". Defaults to "auto".
        resize (bool): resize raw uint8 frames of another size to the model's. Defaults to False.
        check_finite (bool): refuse a float frame holding NaN/Inf before it runs or is sent. Defaults to True.
        **options: :func:`runtime.load` options for both stages; for a URL only ``timeout`` (seconds per request).

    Returns:
        BaseStream: a :class:`StreamingClassifier`, or for a URL a
        :class:`runtime.triton.remote_stream.RemoteStream`; both ``push``, ``feed``, ``reset`` and ``close``.

    Raises:
        RuntimeInputError: what :class:`StreamingClassifier` or ``RemoteStream`` refuses; for a URL a device, a
            backend or an option other than ``timeout``.
        runtime.errors.RemoteServerError: a URL whose server cannot be reached or does not answer in time.
    """
    from .triton.client import is_remote_url

    if not is_remote_url(source):
        return StreamingClassifier(source, 16 if window is None else window, device, backend, resize=resize,
                                   check_finite=check_finite, **options)
    if device is not None or backend != "auto":
        raise RuntimeInputError(f"{source} is served by Triton: device and backend are the server's choice; leave "
                                f"them out (got device={device!r}, backend={backend!r})")
    unknown = sorted(set(options) - {"timeout"})
    if unknown:
        raise RuntimeInputError(f"unknown options {unknown} for a served stream; valid options: timeout")
    from .triton.remote_stream import RemoteStream

    return RemoteStream(source, window=window, resize=resize, check_finite=check_finite, **options)
