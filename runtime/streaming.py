"""Live-video classification: one frame in, the newest frame's and the window's prediction out.

Each :meth:`StreamingClassifier.push` runs the CNN stage on the new frame only (batch 1, T 1) and writes its feature
into a ring buffer; the BiLSTM stage then runs over the last ``min(n, window)`` features. The per-frame cost is one
frame of CNN plus one BiLSTM pass over the window, never a window of CNN. Because the BiLSTM is bidirectional, the
result after N pushes equals the full model on the same last ``window`` frames.

The ring buffer holds each feature twice (at ``i`` and ``i + window``), so the last k features are always one
contiguous slice: no copy or roll per frame.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .base import BaseRunner, softmax
from .errors import RuntimeInputError
from .inputs import _non_finite_steps, check_count, check_flag, is_torch, to_numpy
from .preprocess import preprocess_frames

logger = logging.getLogger(__name__)

# Every push reruns the BiLSTM over the whole window and the ring buffer holds 2 x window features, so the window is
# bounded: 4096 frames is minutes of video at 30 fps, far beyond what a BiLSTM step per frame can keep up with.
MAX_WINDOW = 4096


@dataclass
class StreamResult:
    """The prediction after one :meth:`StreamingClassifier.push`.

    Attributes:
        frame_logits (np.ndarray): (C,) scores of the newest frame (BiLSTM over the window, last step).
        clip_logits (np.ndarray): (C,) scores of the window as a clip.
        frame_label (str): best class of the newest frame.
        frame_prob (float): its softmax probability.
        clip_label (str): best class of the window.
        clip_prob (float): its softmax probability.
        frames_seen (int): frames pushed since the start or the last :meth:`StreamingClassifier.reset`.
        window_frames (int): frames the window held for this result, ``min(frames_seen, window)``.
    """

    frame_logits: np.ndarray
    clip_logits: np.ndarray
    frame_label: str
    frame_prob: float
    clip_label: str
    clip_prob: float
    frames_seen: int
    window_frames: int

    @classmethod
    def from_logits(cls, frame_logits, clip_logits, class_names: Sequence[str], frames_seen: int,
                    window_frames: int) -> "StreamResult":
        """The result of one frame's (C,) and the window's (C,) logits: float32, with each one's best class."""
        frame_logits = np.asarray(frame_logits, dtype=np.float32)
        clip_logits = np.asarray(clip_logits, dtype=np.float32)
        fi, fp = _softmax_top1(frame_logits)
        ci, cp = _softmax_top1(clip_logits)
        return cls(frame_logits, clip_logits, class_names[fi], fp, class_names[ci], cp, frames_seen, window_frames)


def _softmax_top1(logits: np.ndarray) -> tuple:
    p = softmax(logits)
    i = int(p.argmax())
    return i, float(p[i])


def raw_frame_input(frame, frame_size: tuple, mean: Sequence[float], std: Sequence[float], resize: bool,
                    made_by: str = "the stream"):
    """One raw uint8 (H, W, 3) frame -> normalised float32 (1, 1, 3, H, W), checked as a stream takes it: RGB of the
    model's frame size, or any size with ``resize`` (which the refusal says to set when ``made_by`` is created)."""
    shape = tuple(frame.shape)
    h, w = frame_size
    if len(shape) != 3 or shape[-1] != 3:
        raise RuntimeInputError(f"a raw frame must be uint8 ({h}, {w}, 3) (H, W, RGB), got shape {shape}")
    if shape[:2] != (h, w) and not resize:
        raise RuntimeInputError(f"raw frames are {shape[0]}x{shape[1]} (H x W) but the model takes {h}x{w}; "
                                f"resize them in your decoder or create {made_by} with resize=True")
    return preprocess_frames(frame, mean, std, frame_size, resize=resize)


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
            from .backends.torch_backend import TorchRunner
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


class StreamingClassifier:
    """Classify a live stream frame by frame with the separate cnn and bilstm stages.

    Args:
        runner_or_path: a ``.pt`` checkpoint (PyTorch stages), an export directory holding ``cnn.onnx`` +
            ``bilstm.onnx`` (or ``cnn.engine`` + ``bilstm.engine``; engines win under ``backend="auto"``), or a
            tuple ``(cnn_runner, bilstm_runner)`` of runners you made (they are activated here, but you close them); or
            the ``grpc://HOST:PORT/NAME_stream`` (``http://``) URL of a stream model served by Triton, which gives a
            :class:`runtime.triton.client.RemoteStream` (``window`` then only checked against the served one).
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
    stream: it is not thread-safe (use one per stream and thread).

    Raises:
        RuntimeInputError: a bad window (not an integer, beyond :data:`MAX_WINDOW`), a resize or check_finite that
            is not a bool, runners of the wrong stages or of different models, a window outside what the bilstm
            runner accepts, or anything :func:`runtime.load` rejects.
    """

    def __new__(cls, runner_or_path: Any = None, *args, **kwargs):
        """A ``grpc://`` or ``http://`` URL streams through a session on a Triton server instead (same ``push``,
        ``reset``, ``close`` and results): see :class:`runtime.triton.client.RemoteStream`."""
        from .triton.client import RemoteStream, is_remote_url

        if is_remote_url(runner_or_path):
            return RemoteStream.from_streaming_args(runner_or_path, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, runner_or_path: Any, window: int = 16, device=None, backend: str = "auto", *,
                 resize: bool = False, check_finite: bool = True, **options) -> None:
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

    @property
    def frames_seen(self) -> int:
        """Frames pushed since the start or the last :meth:`reset`."""
        return self._count

    def reset(self) -> None:
        """Forget every frame (a new stream starts; it may bring frames of another kind or device)."""
        self._count = 0
        self._buf = None

    def _to_input(self, frame: Any):
        """One frame -> (1, 1, 3, H, W) float32 (numpy or torch, as given)."""
        dtype = str(getattr(frame, "dtype", "")).replace("torch.", "")
        if dtype == "uint8":
            m = self.cnn.metadata
            return raw_frame_input(frame, self.frame_size, m.mean, m.std, self.resize, "the StreamingClassifier")
        if not (is_torch(frame) or isinstance(frame, np.ndarray)):
            raise RuntimeInputError(f"a frame must be a numpy array or torch tensor, got {type(frame).__name__}")
        if tuple(frame.shape) != (3,) + self.frame_size:
            raise RuntimeInputError(f"a frame must be normalised float32 (3, {self.frame_size[0]}, "
                                    f"{self.frame_size[1]}) or raw uint8 ({self.frame_size[0]}, {self.frame_size[1]}, "
                                    f"3), got shape {tuple(frame.shape)} dtype {dtype}")
        return frame[None, None]

    def _check_finite(self, x: Any) -> None:
        """Refuse a float32 frame holding NaN/Inf, with the runners' own one-pass scan (other dtypes are refused by the
        cnn runner's dtype check)."""
        if str(x.dtype).replace("torch.", "") != "float32":
            return
        if _non_finite_steps(x, None, is_torch(x)) is not None:
            raise RuntimeInputError(f"the pushed frame (frame {self._count + 1} of the stream) holds NaN or Inf; "
                                    "frames must be finite. Nothing was added to the window; check_finite=False skips "
                                    "this check for callers that guarantee finite frames")

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
        x = self.frame_input(frame)
        # Checked here once, for the frame the caller gave: the runners need not check it (or its feature) again.
        return self.push_feature(self.cnn.infer(x, check_finite=False)["features"][0, 0])

    def frame_input(self, frame: Any):
        """Check one frame as :meth:`push` does and return the cnn stage's input for it, (1, 1, 3, H, W) float32.

        A caller that runs the cnn stage itself (the Triton stream model batches it over many streams' frames) then
        hands the feature to :meth:`push_feature`.

        Raises:
            RuntimeInputError: as :meth:`push`; nothing changes in the window.
        """
        raw = str(getattr(frame, "dtype", "")).endswith("uint8")  # normalised from uint8 here: finite by construction
        x = self._to_input(frame)
        if self.check_finite and not raw:
            self._check_finite(x)
        return x

    def push_feature(self, feat: Any) -> StreamResult:
        """Add one frame's CNN feature (F,) (the cnn stage's output for :meth:`frame_input`'s result) to the window,
        run the BiLSTM over the window and classify, as :meth:`push` does."""
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

    def feed(self, source: Any, stride: int = 1) -> Iterator[tuple[int, StreamResult]]:
        """Push every ``stride``-th frame of a video file or of any iterable of frames, yielding as it goes.

        Args:
            source: a video file path (``str`` or ``os.PathLike``; decoded by :mod:`runtime.video` in one pass, its
                frames resized to the model's frame size as training resizes them) or an open
                :class:`runtime.video.VideoReader` (the same, left open), or an iterable of frames that :meth:`push`
                takes (uint8 (H, W, 3) or normalised float32 (3, H, W)).
            stride (int): push frames ``0, stride, 2 stride, ...``; the others are skipped (for a video, decoded but
                never converted or resized). The window then spans ``window x stride`` source frames. Defaults to 1.

        Yields:
            tuple[int, StreamResult]: the source frame's index and the result after pushing it.

        Raises:
            RuntimeInputError: a bad stride, a bad video (see :mod:`runtime.video`), or a frame :meth:`push` refuses.
        """
        check_count(stride, "stride")
        from .video import VideoReader, opened_video

        if isinstance(source, (str, os.PathLike, VideoReader)):
            with opened_video(source, self.frame_size) as reader:
                for index, frame in reader.iter_frames(stride):
                    yield index, self.push(frame)
            return
        for index, frame in enumerate(source):
            if index % stride == 0:
                yield index, self.push(frame)

    def close(self) -> None:
        """Deactivate the runners this classifier created (runners passed in are left to their owner)."""
        if self._owns:
            self.cnn.deactivate()
            self.bilstm.deactivate()

    def __enter__(self) -> "StreamingClassifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
