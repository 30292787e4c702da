"""The remote streaming session: a stream model served by Triton, with the API of a local stream.

    import runtime
    with runtime.open_stream("grpc://triton-host:8001/cnn_bilstm_stream") as stream:    # or http://...:8000/...
        result = stream.push(frame)                       # a runtime.StreamResult, as in process
        for index, result in stream.feed("video.mp4", stride=2): ...

``tritonclient`` (the ``serve`` extra) is imported when a session is opened, not with :mod:`runtime`. Errors are
those of :mod:`runtime.triton.client`.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np

from ..errors import RemoteServerError, RuntimeInputError
from ..inputs import check_flag, to_numpy
from ..stream_base import BaseStream, StreamResult
from . import protocol as P
from .client import DEFAULT_TIMEOUT, RemoteModel, new_correlation_id

logger = logging.getLogger(__name__)


class RemoteStream(RemoteModel, BaseStream):
    """A streaming session on a Triton server's stream model: what ``runtime.open_stream("grpc://HOST:PORT/NAME_stream")``
    returns, with the ``push``/``feed``/``reset``/``close`` and :class:`runtime.StreamResult` of a local stream.

    The session is a Triton sequence: a random non-zero 63-bit correlation ID, ``START`` on the first frame, ``END``
    when it is reset or closed. The window (its length is the served model's: ``window``) lives on the server, so every
    frame of a session must reach the same server (route by correlation ID behind a load balancer). A session idle for
    longer than the model's ``idle_seconds`` is dropped by the server; its next frame raises a RuntimeInputError that
    says so, and :meth:`reset` starts a new one. After :meth:`close`, ``push`` and ``feed`` are refused (a push would
    start a server-side sequence that nothing ends). One session is one stream: not thread-safe.

    Args:
        url (str): ``grpc://HOST[:PORT]/NAME_stream`` or ``http://...``.
        window (int | None): must equal the served model's window when given (it is fixed by the repository).
        resize, check_finite (bool): as for :class:`runtime.streaming.StreamingClassifier` (checked here, before
            sending).
        timeout (float): seconds each request may take. Defaults to 30.

    Raises:
        RuntimeInputError: a malformed URL, a model the server does not serve, a whole-clip model, another window.
        RemoteServerError: the server cannot be reached, or did not answer within ``timeout``.
    """

    def __init__(self, url: str, *, window: Optional[int] = None, resize: bool = False, check_finite: bool = True,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        check_flag(resize, "resize")
        check_flag(check_finite, "check_finite")
        self.resize, self.check_finite = bool(resize), bool(check_finite)
        self._started = False
        _config, self.served = self._connect(url, timeout, P.ROLE_STREAM)
        self.window = int(self.served.window)
        if window is not None and window != self.window:
            self._close_wires()
            raise RuntimeInputError(f"{self.url} streams over a window of {self.window} frames (set when its "
                                    f"repository was generated), not {window!r}; leave window out or pass "
                                    f"{self.window}")
        self.idle_seconds = self.served.idle_seconds
        self.metadata = self.served.model_metadata(str(self.url)).with_graph("bilstm")
        self.frame_size = tuple(self.metadata.frame_size)
        self.correlation_id = new_correlation_id()
        self._count = 0

    def _send(self, x: np.ndarray, *, end: bool) -> dict:
        outputs = (P.FRAME_LOGITS, P.CLIP_LOGITS, P.FRAMES_SEEN, P.WINDOW_FRAMES)
        start = not self._started
        # Refused without START: Triton or the model no longer knows the sequence (idle timeout, or a restart).
        expired = None if start else (
            f"{self.url}: stream session {self.correlation_id} expired (idle for more than {self.idle_seconds:g} s) "
            "or the server lost it, so its window is gone; call reset() to start a new stream")
        out = self._call(lambda w: w.infer({P.FRAME: x}, outputs, sequence_id=self.correlation_id,
                                           sequence_start=start, sequence_end=end), "run the stream model",
                         refused=expired)
        self._started = not end
        return out

    def push(self, frame: Any) -> StreamResult:
        """Send one frame and return the newest frame's and the window's prediction.

        Args:
            frame (np.ndarray | torch.Tensor): normalised float32 (3, H, W), or raw uint8 (H, W, 3).

        Returns:
            StreamResult: as :meth:`runtime.streaming.StreamingClassifier.push` returns it.

        Raises:
            RuntimeInputError: a closed session, a bad frame (nothing is sent), a frame the server refused, an expired
                session.
            RemoteServerError: the server cannot be reached, failed, or did not answer within the timeout.
        """
        self._check_open()
        x = np.ascontiguousarray(to_numpy(self.frame_input(frame))[0])  # (1, 3, H, W): one frame of a sequence
        out = self._send(x, end=False)
        self._count = int(np.asarray(out[P.FRAMES_SEEN]).reshape(-1)[0])
        window_frames = int(np.asarray(out[P.WINDOW_FRAMES]).reshape(-1)[0])
        return StreamResult.from_logits(out[P.FRAME_LOGITS][0], out[P.CLIP_LOGITS][0], self.metadata.class_names,
                                        self._count, window_frames)

    def _end(self) -> None:
        """End the server's sequence (END rides on a zero frame: every request carries one), if one was started."""
        if not self._started:
            return
        try:
            self._send(np.zeros((1, 3) + self.frame_size, np.float32), end=True)
        except (RuntimeInputError, RemoteServerError) as e:  # expired already, or the server is gone: nothing to end
            logger.debug("ending stream %d: %s", self.correlation_id, e)
        self._started = False

    def reset(self) -> None:
        """End the stream's sequence on the server and start a new one (new correlation ID) with the next frame."""
        self._end()
        self.correlation_id = new_correlation_id()
        self._count = 0

    def _close(self) -> None:
        """End the session on the server and close the connection."""
        self._end()
        self._close_wires()

    def __repr__(self) -> str:
        return f"RemoteStream({str(self.url)!r}, correlation_id={self.correlation_id}, frames_seen={self._count})"
