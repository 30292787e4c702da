"""The Python-backend models a generated repository's ``model.py`` runs inside Triton Inference Server.

A repository of the ``python`` kind (``python -m export.to_triton SRC --kind python``) holds, per model, a one-line
``model.py`` shim (``from runtime.triton.python_model import ClipModel as TritonPythonModel``) and, beside it, a
copy of the export (``model.onnx``, ``cnn.onnx``, ``bilstm.onnx``, ``export_report.json``). The logic lives here, in
the package, where it is tested; the server's Python environment must have this package installed (``.[onnx]``).

- :class:`ClipModel` (``NAME``): whole clips. Triton's dynamic batcher hands ``execute`` requests of any T (the
  config's ``allow_ragged_batch`` on ``frames``); the CNN runs once over all their real frames, the BiLSTM once over
  the features, and the outputs are split per request (``model.onnx`` over them zero-padded to the longest when the
  export lacks the split graphs).
- :class:`StreamModel` (``NAME_stream``): one frame per request under Triton's sequence batcher. Each correlation ID
  has a :class:`runtime.streaming.StreamingClassifier` over the shared cnn and bilstm runners (its window of CNN
  features); the CNN runs once over all the frames of an ``execute``, the BiLSTM over each stream's window.

Bad input (a :class:`runtime.errors.RuntimeInputError`) answers the request concerned with Triton's ``INVALID_ARG``
(HTTP 400, gRPC ``INVALID_ARGUMENT``), carrying the runtime's message; the other requests of the batch still run.
``triton_python_backend_utils`` exists only inside the server, so it is imported in ``initialize``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..errors import RuntimeInputError
from ..inputs import pad_time
from ..spec import EXPORT_REPORT_NAME, check_export_file
from . import protocol as P

logger = logging.getLogger(__name__)

ORT_OPTIONS = {"providers": ["CPUExecutionProvider"]}  # the python kind serves CPU nodes


def _backend_utils():
    import triton_python_backend_utils as pb_utils  # only inside Triton's python backend stub

    return pb_utils


def _served(args: dict) -> tuple:
    """(model config dict, :class:`protocol.ServedModel`, version folder) from ``initialize``'s ``args``, the folder's
    graphs checked against the digests its ``export_report.json`` records.

    Raises:
        RuntimeInputError: a graph that is not the one recorded, with the fix for a repository (regenerating it;
            the runtime's own hint, exporting into the folder again, would leave it without its ``model.py``).
    """
    config = json.loads(args["model_config"])
    name = config.get("name") or args.get("model_name", "model")
    served = P.ServedModel.from_config(config, f"model {name!r}")
    folder = Path(args["model_repository"]) / str(args["model_version"])
    for graph in sorted(folder.glob("*.onnx")):
        try:
            check_export_file(graph)
        except RuntimeInputError as e:
            repo = Path(args["model_repository"]).parent
            raise RuntimeInputError(
                f"{graph} is not the graph {EXPORT_REPORT_NAME} beside it records (its sha256 differs): it was replaced "
                f"or damaged after the repository was generated; regenerate the repository from its export with "
                f"`python -m export.to_triton` (`python -m export.to_triton --check {repo}` prints the command with "
                f"its options), not by exporting into the version folder") from e
    return config, served, folder


def _input(pb_utils, request, name: str) -> np.ndarray:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise RuntimeInputError(f"the request has no {name!r} input")
    return tensor.as_numpy()


def _invalid(pb_utils, message: str, code: Optional[str] = None):
    code = getattr(pb_utils.TritonError, code, None) if code else None
    error = pb_utils.TritonError(message, code if code is not None else pb_utils.TritonError.INVALID_ARG)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


class ClipModel:
    """Whole-clip model: ``frames`` (B, T, 3, H, W) float32 and ``lengths`` (B,) int32 in, ``frame_logits``
    (B, T, C) and ``clip_logits`` (B, C) out, on ONNX Runtime (CPU).

    With the export's split graphs in the version folder (``cnn.onnx`` and ``bilstm.onnx``: the python kind copies
    them when the export has them), one ``execute`` runs the CNN once over the real frames of all its requests
    (``frames[b, :lengths[b]]``, no padding frames) and the BiLSTM once over their features, zero-padded to the
    longest request's T, with the lengths; each request gets its own (B, T, ...) slice. The repository's config sets
    ``allow_ragged_batch`` on ``frames``, so Triton batches requests of different T together. Without the split
    graphs (e.g. an int8 export) it runs ``model.onnx`` once over all its requests, zero-padded to the longest.
    """

    def initialize(self, args: dict) -> None:
        from runtime.backends import load

        self.pb = _backend_utils()
        _config, self.served, folder = _served(args)
        # model.onnx always: its input spec validates each request (check_input). With the split graphs, its session
        # is released at once and made again only for a batch they refuse: one copy of the weights per stub.
        self.runner = load(folder / "model.onnx", **ORT_OPTIONS)
        self.cnn = self.bilstm = None
        if (folder / "cnn.onnx").is_file() and (folder / "bilstm.onnx").is_file():
            options = {**ORT_OPTIONS, "allow_spinning": False}  # the sessions alternate on the same cores
            cnn = load(folder / "cnn.onnx", **options)
            bilstm = load(folder / "bilstm.onnx", **options)
            self.runner.metadata.check_same_model(cnn.metadata, f"{folder}'s model.onnx and cnn.onnx")
            self.runner.metadata.check_same_model(bilstm.metadata, f"{folder}'s model.onnx and bilstm.onnx")
            cnn.activate()
            bilstm.activate()
            self.cnn, self.bilstm = cnn, bilstm
            self.runner.deactivate()  # frees the session load() made; a batch the split graphs refuse makes it again
        else:
            self.runner.activate()
        logger.info("%s: serving %s (%s) for clips of 1..%d frames, %s", args.get("model_name"), folder,
                    self.runner.provider, self.served.max_time,
                    "split graphs (cnn over real frames only)" if self.split
                    else "model.onnx over the requests padded to the longest")

    @property
    def split(self) -> bool:
        """Whether ``execute`` runs the split graphs (cnn.onnx then bilstm.onnx) over requests of any T."""
        return self.cnn is not None

    def execute(self, requests: list) -> list:
        pb = self.pb
        responses: list = [None] * len(requests)
        items = []  # (index, frames, lengths) of the valid requests
        for i, request in enumerate(requests):
            try:
                frames = _input(pb, request, P.FRAMES)
                lengths = _input(pb, request, P.LENGTHS)
                if frames.ndim != 5 or np.size(lengths) != frames.shape[0]:
                    raise RuntimeInputError(f"frames must be (B, T, 3, H, W) with one length per clip, got frames "
                                            f"{tuple(frames.shape)} and lengths {tuple(np.shape(lengths))}")
                if frames.shape[1] > self.served.max_time:  # what the repository advertises, as an engine would
                    raise RuntimeInputError(f"clips of {frames.shape[1]} frames are longer than this model serves: "
                                            f"at most {self.served.max_time} (time buckets "
                                            f"{list(self.served.time_buckets)}); split longer clips")
                lengths = np.reshape(lengths, (-1,))
                # each request checked alone, so that a bad one cannot fail the batch
                self.runner.check_input(frames, lengths, check_finite=self.runner.check_finite)
            except RuntimeInputError as e:
                responses[i] = _invalid(pb, str(e))
                continue
            items.append((i, frames, lengths))
        if self.split:
            if items:
                self._run_split(items, responses)
            return responses
        if items:
            self._run_group(items, responses)
        return responses

    def _run_split(self, items: list, responses: list) -> None:
        """The CNN once over every real frame of ``items`` (checked requests), the BiLSTM once over their features
        zero-padded to the longest request's T; on a refusal, each request alone through model.onnx."""
        lengths = np.concatenate([ln for _, _, ln in items]).astype(np.int32)
        real = np.concatenate([f[b, :n] for _, f, ln in items for b, n in enumerate(ln.tolist())])
        t_max = max(f.shape[1] for _, f, _ in items)  # steps beyond a length come out as model.onnx gives them
        try:
            features = self.cnn.infer(real[None], check_finite=False)["features"][0]  # (frames, F)
            padded = np.zeros((lengths.shape[0], t_max, features.shape[-1]), dtype=features.dtype)
            steps = np.arange(t_max)[None, :] < lengths[:, None]  # (clips, t_max), row-major = the order of real
            padded[steps] = features
            out = self.bilstm.infer(padded, lengths, check_finite=False)
        except RuntimeInputError as e:
            logger.warning("the split graphs refused a batch of %d request(s) (%s); running each alone", len(items), e)
            self._run_group(items, responses, batch=False)
            return
        start = 0
        for i, frames, _ in items:
            b, t = frames.shape[:2]
            responses[i] = self._response(out, start, start + b, t)
            start += b

    def _run_group(self, items: list, responses: list, batch: bool = True) -> None:
        """One model.onnx ``infer`` over the clips of ``items``, zero-padded to the longest request's T (exact: the
        lengths go with them); when it refuses them, each request alone, so that only the requests at fault get the
        error."""
        if batch and len(items) > 1:
            t_max = max(f.shape[1] for _, f, _ in items)
            try:
                out = self.runner.infer(np.concatenate([pad_time(f, t_max) for _, f, _ in items]),
                                        np.concatenate([ln for _, _, ln in items]))
            except RuntimeInputError:
                out = None
            if out is not None:
                start = 0
                for i, frames, _ in items:
                    end = start + frames.shape[0]
                    responses[i] = self._response(out, start, end, frames.shape[1])
                    start = end
                return
        for i, frames, lengths in items:
            try:
                responses[i] = self._response(self.runner.infer(frames, lengths), 0, frames.shape[0])
            except RuntimeInputError as e:
                responses[i] = _invalid(self.pb, str(e))

    def _response(self, out: dict, start: int, end: int, steps: Optional[int] = None):
        pb = self.pb
        frame_logits = out["frame_logits"][start:end]
        if steps is not None:
            frame_logits = frame_logits[:, :steps]
        return pb.InferenceResponse(output_tensors=[
            pb.Tensor(P.FRAME_LOGITS, np.ascontiguousarray(frame_logits, dtype=np.float32)),
            pb.Tensor(P.CLIP_LOGITS, np.ascontiguousarray(out["clip_logits"][start:end], dtype=np.float32))])

    def finalize(self) -> None:
        for runner in (getattr(self, "runner", None), getattr(self, "cnn", None), getattr(self, "bilstm", None)):
            if runner is not None:
                runner.deactivate()


class _Stream:
    __slots__ = ("classifier", "last_seen")

    def __init__(self, classifier, now: float) -> None:
        self.classifier = classifier
        self.last_seen = now


class StreamModel:
    """Streaming model: one frame per request under Triton's sequence batcher, a window of CNN features per
    correlation ID.

    - ``START`` = 1 begins a stream (an existing window of that ID is reset); ``END`` = 1 answers the frame, then
      drops the window; entries with ``READY`` = 0 are the sequence batcher's fillers and are skipped (answered with
      zeros Triton throws away).
    - A window idle longer than ``idle_seconds`` (from the repository's metadata, the same as the sequence batcher's
      ``max_sequence_idle_microseconds``) is dropped by the model itself at the next ``execute``: Triton never tells
      the model that it let a sequence go.
    - At most ``max_streams`` windows live at once (config parameter ``max_streams``). A ``START`` beyond that, after
      the idle windows are dropped, is **refused** (``UNAVAILABLE``, saying so), never by evicting a live stream:
      the client that is refused knows at once, whereas an evicted one would find out only at its next frame.
    - A frame of an unknown or expired correlation ID without ``START`` gets ``INVALID_ARG``: the stream expired or
      never started, and the client must start a new one.

    Args:
        clock (callable): seconds, monotonic; tests pass their own. Defaults to ``time.monotonic``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._streams: OrderedDict = OrderedDict()  # corrid -> _Stream, least recently used first
        self._lock = threading.Lock()  # execute may be called from several threads (decoupled/async models)

    def initialize(self, args: dict) -> None:
        from runtime.backends import load

        self.pb = _backend_utils()
        config, self.served, folder = _served(args)
        if self.served.role != P.ROLE_STREAM:
            raise RuntimeInputError(f"model {config.get('name')!r} is a {self.served.role} model, not a stream model")
        self.window = int(self.served.window)
        self.idle_seconds = float(self.served.idle_seconds)
        raw = ((config.get("parameters") or {}).get(P.MAX_STREAMS_PARAMETER) or {}).get("string_value")
        self.max_streams = int(raw) if raw else P.DEFAULT_MAX_STREAMS
        options = {**ORT_OPTIONS, "allow_spinning": False}  # two sessions alternate on the same cores
        self.cnn = load(folder / "cnn.onnx", **options)
        self.bilstm = load(folder / "bilstm.onnx", **options)
        self.cnn.metadata.check_same_model(self.bilstm.metadata, f"{folder}'s cnn.onnx and bilstm.onnx")
        self.cnn.activate()
        self.bilstm.activate()
        logger.info("%s: streams of window %d, idle timeout %.1f s, at most %d live", args.get("model_name"),
                    self.window, self.idle_seconds, self.max_streams)

    # --- the windows -------------------------------------------------------------------------------------------------
    @property
    def live_streams(self) -> int:
        return len(self._streams)

    def _expire_idle(self, now: float) -> None:
        stale = [cid for cid, s in self._streams.items() if now - s.last_seen > self.idle_seconds]
        for cid in stale:
            del self._streams[cid]
        if stale:
            logger.info("dropped %d stream(s) idle for more than %.1f s", len(stale), self.idle_seconds)

    def _stream_for(self, corrid: int, start: bool, now: float):
        """The stream of ``corrid``, new or reset on ``start``; or (None, error response) when there is none."""
        from ..streaming import StreamingClassifier

        stream = self._streams.get(corrid)
        if start:
            if stream is None and len(self._streams) >= self.max_streams:
                return None, _invalid(self.pb, f"the server holds {self.max_streams} live streams, its limit "
                                               f"(max_streams); none is idle beyond {self.idle_seconds:g} s. End "
                                               "finished streams (END) or retry later", "UNAVAILABLE")
            classifier = StreamingClassifier((self.cnn, self.bilstm), window=self.window)
            stream = self._streams[corrid] = _Stream(classifier, now)
        elif stream is None:
            return None, _invalid(self.pb, f"stream {corrid} expired (idle for more than {self.idle_seconds:g} s) or "
                                           "never started; start a new stream (its first frame with START)")
        stream.last_seen = now
        self._streams.move_to_end(corrid)
        return stream, None

    # --- execute -------------------------------------------------------------------------------------------------
    def execute(self, requests: list) -> list:
        with self._lock:
            return self._execute(requests)

    def _execute(self, requests: list) -> list:
        pb = self.pb
        now = self._clock()
        self._expire_idle(now)
        responses: list = [None] * len(requests)
        todo = []  # (index, stream, cnn input, end)
        for i, request in enumerate(requests):
            try:
                ready = _flag(_input(pb, request, P.READY))
                if not ready:
                    responses[i] = self._filler()
                    continue
                corrid = int(np.reshape(_input(pb, request, P.CORRID), (-1,))[0])
                start, end = _flag(_input(pb, request, P.START)), _flag(_input(pb, request, P.END))
                frame = _input(pb, request, P.FRAME)
                if frame.shape[:1] != (1,):
                    raise RuntimeInputError(f"a stream request carries one frame (1, 3, H, W), got {frame.shape}")
            except RuntimeInputError as e:
                responses[i] = _invalid(pb, str(e))
                continue
            stream, error = self._stream_for(corrid, start, now)
            if error is not None:
                responses[i] = error
                continue
            try:
                todo.append((i, corrid, stream, stream.classifier.frame_input(frame[0]), end))
            except RuntimeInputError as e:
                responses[i] = _invalid(pb, f"stream {corrid}: {e}")
                if start:  # a refused first frame leaves no stream behind
                    self._streams.pop(corrid, None)
        if todo:
            # Each frame's CNN once, all of this execute's frames in one call; then each window's BiLSTM.
            features = self.cnn.infer(np.concatenate([x for _, _, _, x, _ in todo]), check_finite=False)["features"]
            for k, (i, corrid, stream, _x, end) in enumerate(todo):
                result = stream.classifier.push_feature(features[k, 0])
                responses[i] = pb.InferenceResponse(output_tensors=[
                    pb.Tensor(P.FRAME_LOGITS, result.frame_logits[None]),
                    pb.Tensor(P.CLIP_LOGITS, result.clip_logits[None]),
                    pb.Tensor(P.FRAMES_SEEN, np.array([[result.frames_seen]], dtype=np.int32)),
                    pb.Tensor(P.WINDOW_FRAMES, np.array([[result.window_frames]], dtype=np.int32))])
                if end:
                    self._streams.pop(corrid, None)
        return responses

    def _filler(self):
        c = self.bilstm.metadata.num_classes
        zeros = np.zeros((1, c), dtype=np.float32)
        none = np.zeros((1, 1), dtype=np.int32)
        return self.pb.InferenceResponse(output_tensors=[
            self.pb.Tensor(P.FRAME_LOGITS, zeros), self.pb.Tensor(P.CLIP_LOGITS, zeros),
            self.pb.Tensor(P.FRAMES_SEEN, none), self.pb.Tensor(P.WINDOW_FRAMES, none)])

    def finalize(self) -> None:
        self._streams.clear()
        for runner in (getattr(self, "cnn", None), getattr(self, "bilstm", None)):
            if runner is not None:
                runner.deactivate()


def _flag(value: Any) -> bool:
    return bool(np.reshape(value, (-1,))[0]) if np.size(value) else False
