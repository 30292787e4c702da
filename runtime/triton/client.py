"""The remote runner (the remote streaming session is :mod:`runtime.triton.remote_stream`): the same API as a local
runner, served by Triton.

    import runtime
    with runtime.load("grpc://triton-host:8001/cnn_bilstm") as runner:       # or http://triton-host:8000/...
        out = runner.infer(frames, lengths)                                   # as a local runner
    with runtime.open_stream("grpc://triton-host:8001/cnn_bilstm_stream") as stream:
        result = stream.push(frame)                                           # a runtime.StreamResult

Both read the served model's config and the metadata the repository carries in it (``python -m export.to_triton``
writes it), so they know the classes, frame size, normalisation, batch and time limits without the export files.
The runner pads each batch's clips with zeros to their time bucket and sends the true ``lengths`` (exact: padding
never reaches the real outputs), so requests of different lengths share the server's batches. A model whose config
sets ``allow_ragged_batch`` on ``frames`` (the python kind's, which pads a batch itself) gets each clip unpadded:
Triton batches requests of any length for it, and nothing is sent or checked twice.

``tritonclient`` (the ``serve`` extra) is imported when a runner or session is made, not with :mod:`runtime`.

Errors: bad input refused by the client (the same checks as a local runner) or by the model on the server (Triton's
``INVALID_ARG``) raise :class:`runtime.RuntimeInputError`, with the server's message; so do a model the server does not
serve and a batch or time outside what the repository accepts. A server that cannot be reached, is not ready, takes
longer than ``timeout`` or fails the request raises :class:`runtime.errors.RemoteServerError` (a ``ConnectionError``).
Nothing waits longer than ``timeout``.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..base import BaseRunner
from ..errors import RemoteServerError, RuntimeInputError
from ..inputs import check_flag, pad_time, to_numpy
from ..spec import InputSpec, Profile
from . import protocol as P

logger = logging.getLogger(__name__)

SCHEMES = {"grpc": 8001, "http": 8000}  # scheme -> Triton's default port
TLS_SCHEMES = ("grpcs", "https")  # recognised as URLs, to refuse them as such (not taken for file paths)
DEFAULT_TIMEOUT = 30.0  # seconds, for every request
# Statuses of a request the model (or Triton) refused as invalid: HTTP 400, gRPC INVALID_ARGUMENT.
_INVALID = {"400", "StatusCode.INVALID_ARGUMENT"}
_NOT_FOUND_HINTS = ("unknown model", "is not found", "not found")


def is_remote_url(value: Any) -> bool:
    """Whether ``value`` is a ``grpc://`` or ``http://`` model URL (what :func:`runtime.load` and
    :func:`runtime.open_stream` hand to this module) rather than a file path; ``grpcs://`` and ``https://`` count too,
    so that :meth:`ModelURL.parse` refuses them as TLS URLs instead of a file check saying they do not exist."""
    return (isinstance(value, str) and "://" in value
            and value.split("://", 1)[0].lower() in tuple(SCHEMES) + TLS_SCHEMES)


@dataclass(frozen=True)
class ModelURL:
    """A parsed ``grpc://HOST[:PORT]/NAME`` or ``http://HOST[:PORT]/NAME`` (ports default to Triton's 8001/8000)."""

    scheme: str
    address: str  # HOST:PORT, as tritonclient takes it
    model: str

    @classmethod
    def parse(cls, url: Any) -> "ModelURL":
        """Raises: RuntimeInputError: not a URL of that form (the message shows the valid form)."""
        form = "grpc://HOST:PORT/MODEL or http://HOST:PORT/MODEL"
        if not isinstance(url, str):
            raise RuntimeInputError(f"a model URL must be a string {form}, got {type(url).__name__}")
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in TLS_SCHEMES:
            raise RuntimeInputError(f"{url!r}: TLS URLs ({scheme}://) are not supported; a served model's URL is "
                                    f"{form}: reach the server over plain gRPC or HTTP (a trusted network, or a local "
                                    "tunnel such as `ssh -L` or stunnel that carries the TLS)")
        if scheme not in SCHEMES:
            raise RuntimeInputError(f"{url!r}: unsupported scheme {parts.scheme!r}; a served model's URL is {form}")
        try:
            port = parts.port or SCHEMES[scheme]
        except ValueError as e:
            raise RuntimeInputError(f"{url!r}: bad port ({e}); a served model's URL is {form}") from None
        host = parts.hostname
        model = parts.path.strip("/")
        if not host or not model or "/" in model or parts.query or parts.fragment or parts.username:
            raise RuntimeInputError(f"{url!r} is not a model URL: expected {form} (one model name, nothing after it)")
        P.check_model_name(model)
        return cls(scheme, f"[{host}]:{port}" if ":" in host else f"{host}:{port}", model)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}/{self.model}"


def _check_timeout(timeout: Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 86400:
        raise RuntimeInputError(f"timeout must be a number of seconds in (0, 86400], got {timeout!r}")
    return float(timeout)


class _Wire:
    """One tritonclient client (HTTP or gRPC) behind one interface. Not thread-safe (tritonclient's clients are not):
    a runner keeps one per thread."""

    def __init__(self, url: ModelURL, timeout: float) -> None:
        self.url, self.timeout = url, timeout
        if url.scheme == "grpc":
            import tritonclient.grpc as tc
        else:
            import tritonclient.http as tc
        self.tc = tc
        if url.scheme == "grpc":
            self.client = tc.InferenceServerClient(url.address)
        else:
            self.client = tc.InferenceServerClient(url.address, connection_timeout=timeout, network_timeout=timeout)

    def _deadline(self) -> dict:
        return {"client_timeout": self.timeout} if self.url.scheme == "grpc" else {}

    def config(self) -> dict:
        if self.url.scheme == "grpc":
            return self.client.get_model_config(self.url.model, as_json=True, **self._deadline())["config"]
        return self.client.get_model_config(self.url.model)

    def model_ready(self) -> bool:
        return self.client.is_model_ready(self.url.model, **self._deadline())

    def models(self) -> list:
        """Names of the models in the server's repository (for messages)."""
        index = self.client.get_model_repository_index(**({"as_json": True} if self.url.scheme == "grpc" else {}),
                                                        **self._deadline())
        entries = index.get("models", []) if isinstance(index, dict) else index
        return sorted(e.get("name", "?") for e in entries)

    def infer(self, arrays: dict, outputs: tuple, **sequence) -> dict:
        from tritonclient.utils import np_to_triton_dtype

        inputs = []
        for name, a in arrays.items():
            tensor = self.tc.InferInput(name, list(a.shape), np_to_triton_dtype(a.dtype))
            tensor.set_data_from_numpy(a)
            inputs.append(tensor)
        requested = [self.tc.InferRequestedOutput(n) for n in outputs]
        result = self.client.infer(self.url.model, inputs, outputs=requested, **sequence, **self._deadline())
        return {n: result.as_numpy(n) for n in outputs}

    def close(self) -> None:
        try:
            self.client.close()
        except Exception as e:  # closing a broken connection must not hide why it broke
            logger.debug("closing the tritonclient client of %s: %s", self.url, e)


def _status(e: BaseException) -> str:
    status = getattr(e, "status", None)
    return str(status() if callable(status) else status or "")


def _message(e: BaseException) -> str:
    message = getattr(e, "message", None)
    text = message() if callable(message) else None
    return (text or str(e) or type(e).__name__).strip()


def translate_error(e: BaseException, url: ModelURL, what: str, timeout: float) -> Exception:
    """The runtime's error for a tritonclient or socket exception ``e`` raised while doing ``what``.

    Returns:
        Exception: :class:`RuntimeInputError` for input the server refused as invalid (its message kept), otherwise
        :class:`RemoteServerError` saying what failed (unreachable, timed out, the model's process unhealthy...).
    """
    status, msg = _status(e), _message(e)
    if status in _INVALID:
        return RuntimeInputError(f"{url}: the server refused the request: {msg}")
    if status == "StatusCode.DEADLINE_EXCEEDED" or isinstance(e, TimeoutError) or "timed out" in msg.lower():
        return RemoteServerError(f"{url}: no answer within the timeout of {timeout:g} s while trying to {what} "
                                 f"({msg}); the server is overloaded or stuck: check it with `python -m runtime ping "
                                 f"{url}`, or pass a longer timeout")
    if isinstance(e, ConnectionError) or (status == "StatusCode.UNAVAILABLE" and "connect" in msg.lower()):
        return RemoteServerError(f"{url}: cannot reach the server to {what} ({msg}); is tritonserver running "
                                 f"there and listening for {url.scheme} on {url.address}?")
    if "unknown model" in msg.lower() or "no available versions" in msg.lower():
        return RemoteServerError(f"{url}: the model is not loaded on the server now ({msg}); load it again (see "
                                 "docs/runtime.md), or check the server's log for why it is not")
    if "not healthy" in msg.lower():
        return RemoteServerError(f"{url}: the server cannot run the model ({msg}); its model process died and Triton "
                                 "does not restart it: unload and load the model again (see docs/runtime.md)")
    return RemoteServerError(f"{url}: the server failed to {what}: {f'{status}: ' if status else ''}{msg}")


class RemoteModel:
    """What the runner and the stream session (:mod:`runtime.triton.remote_stream`) share: the URL, the timeout, the
    served model's config and errors."""

    def _connect(self, url: Any, timeout: Any, role: Optional[str]) -> tuple:
        """Parse, read the config and check the role (None: either). Returns (config dict, ServedModel)."""
        self.url = ModelURL.parse(url)
        self.timeout = _check_timeout(timeout)
        self._wires, self._wires_lock, self._local = [], threading.Lock(), threading.local()
        try:
            config = self._call(lambda w: w.config(), "read the model's config", missing_model=True)
            served = P.ServedModel.from_config(config, str(self.url))
            if role is not None and served.role != role:
                if served.role == P.ROLE_STREAM:
                    raise RuntimeInputError(f"{self.url} is a streaming model (one frame per request); stream through "
                                            f"it with runtime.open_stream({str(self.url)!r})")
                raise RuntimeInputError(f"{self.url} is a whole-clip model; run it with runtime.load("
                                        f"{str(self.url)!r}), or stream through its streaming model "
                                        f"({self.url.model}{P.STREAM_SUFFIX})")
        except BaseException:
            self._close_wires()
            raise
        return config, served

    def _wire(self) -> _Wire:
        wire = getattr(self._local, "wire", None)
        if wire is None:
            try:
                wire = _Wire(self.url, self.timeout)
            except ImportError as e:
                raise ImportError(f"serving through {self.url} needs tritonclient: pip install "
                                  f"'cnn-bilstm-deploy[serve]' ({e})") from e
            self._local.wire = wire
            with self._wires_lock:
                self._wires.append(wire)
        return wire

    def _call(self, fn, what: str, *, missing_model: bool = False, refused: Optional[str] = None):
        """``fn(wire)``, with tritonclient's and the socket's exceptions turned into the runtime's (see
        :func:`translate_error`); ``refused`` replaces the start of an INVALID_ARG message (the server's follows)."""
        wire = self._wire()  # first: without tritonclient, its ImportError says which extra to install
        from tritonclient.utils import InferenceServerException

        try:
            return fn(wire)
        except Exception as e:  # tritonclient's, the socket's, geventhttpclient's own (a reset connection...)
            if isinstance(e, (RuntimeInputError, RemoteServerError)):
                raise
            if not isinstance(e, (InferenceServerException, OSError)):
                logger.debug("%s: %s from tritonclient", self.url, type(e).__name__, exc_info=True)
            msg = _message(e)
            if missing_model and any(h in msg.lower() for h in _NOT_FOUND_HINTS):
                raise RuntimeInputError(f"{self.url}: the server does not serve a model {self.url.model!r} "
                                        f"(it has: {', '.join(self._served_models()) or 'none'}): {msg}") from e
            if refused and _status(e) in _INVALID:
                raise RuntimeInputError(f"{refused} (the server said: {msg})") from e
            raise translate_error(e, self.url, what, self.timeout) from e

    def _served_models(self) -> list:
        try:
            return self._wire().models()
        except Exception:  # only for the message
            return []

    def _close_wires(self) -> None:
        with self._wires_lock:
            wires, self._wires = self._wires, []
        for wire in wires:
            wire.close()
        self._local = threading.local()


def _allows_ragged_frames(config: dict) -> bool:
    """Whether the served config's ``frames`` input sets ``allow_ragged_batch`` (HTTP's JSON or gRPC's as_json)."""
    config = config.get("config", config) if isinstance(config, dict) else {}
    for tensor in config.get("input") or []:
        if tensor.get("name") == P.FRAMES:
            return bool(tensor.get("allow_ragged_batch", tensor.get("allowRaggedBatch", False)))
    return False


class TritonRunner(RemoteModel, BaseRunner):
    """A runner whose model runs on a Triton server: ``runtime.load("grpc://HOST:PORT/NAME")`` or ``http://``.

    Args:
        url (str): ``grpc://HOST[:PORT]/NAME`` or ``http://HOST[:PORT]/NAME``, a whole-clip model of a repository
            written by ``python -m export.to_triton``.
        timeout (float): seconds each request (and reading the config here) may take. Defaults to 30.
        check_finite (bool): refuse NaN/Inf at real steps before sending (as every runner does). Defaults to True.

    ``input_spec`` accepts batches of 1..``max_batch_size`` clips (the served model's) and 1..the largest time
    bucket frames; ``metadata`` is the served model's. ``infer`` may be called from several threads at once (each
    thread has its own connection). Making the runner contacts the server (to read the config), so a server that is
    down fails here, within ``timeout``.

    Raises:
        RuntimeInputError: a malformed URL or timeout, a model the server does not serve, a streaming model, a model
            without this package's metadata.
        RemoteServerError: the server cannot be reached, or did not answer within ``timeout``.
    """

    backend_name = "triton"
    _serialize = False  # stateless requests; tritonclient's clients are per thread

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT, check_finite: bool = True) -> None:
        check_flag(check_finite, "check_finite")
        config, self.served = self._connect(url, timeout, P.ROLE_CLIP)
        self.max_batch_size = int(config.get("max_batch_size") or 0)
        if self.max_batch_size < 1:
            raise RuntimeInputError(f"{self.url}: max_batch_size is {self.max_batch_size}, but a whole-clip model "
                                    "batches clips (max_batch_size > 0); regenerate it with python -m export.to_triton")
        self.time_buckets = tuple(self.served.time_buckets)
        self.ragged = _allows_ragged_frames(config)
        metadata = self.served.model_metadata(str(self.url)).with_graph("model")
        spec = InputSpec.for_graph("model", metadata, [Profile((1, self.max_batch_size), (1, self.time_buckets[-1]))])
        super().__init__(metadata, spec, check_finite=check_finite, name=f"triton:{self.url}")

    def check_input(self, x: Any, lengths: Any = None, *, check_finite: bool = True):
        """As every runner's, with the served model's limits named (they are set by its repository)."""
        shape = getattr(x, "shape", None)
        if shape is not None and len(shape) == 5:
            b, t = int(shape[0]), int(shape[1])
            if not 1 <= b <= self.max_batch_size:
                raise RuntimeInputError(f"a batch of {b} clips is outside what {self.url} takes: "
                                        f"1..{self.max_batch_size} clips per request (its max_batch_size); split the "
                                        "batch")
            if not 1 <= t <= self.time_buckets[-1]:
                raise RuntimeInputError(f"clips of {t} frames are outside what {self.url} takes: "
                                        f"1..{self.time_buckets[-1]} frames (its time buckets "
                                        f"{list(self.time_buckets)}); split longer clips")
        return super().check_input(x, lengths, check_finite=check_finite)

    def activate_impl(self) -> None:
        pass  # connections open per thread on first use

    def infer_impl(self, feed) -> dict:
        x = to_numpy(feed.x) if feed.is_torch else feed.x
        b, t = feed.batch, feed.time
        if not self.ragged:
            x = pad_time(x, P.bucket_for(t, self.time_buckets))
        lengths = feed.lengths_or_full().astype(np.int32).reshape(b, 1)
        out = self._call(lambda w: w.infer({P.FRAMES: x, P.LENGTHS: lengths}, (P.FRAME_LOGITS, P.CLIP_LOGITS)),
                         "run the model")
        return {"frame_logits": np.ascontiguousarray(out[P.FRAME_LOGITS][:, :t]),
                "clip_logits": out[P.CLIP_LOGITS]}

    def deactivate_impl(self) -> None:
        self._close_wires()

    def release_idle_impl(self) -> None:
        self._close_wires()


def new_correlation_id() -> int:
    """A random non-zero 63-bit correlation ID (0 means "no sequence" to Triton)."""
    return secrets.randbits(63) or 1


def ping(url: str, timeout: float = 10.0) -> str:
    """Send one real inference to a served model and say how it went: the liveness probe.

    Triton keeps answering ready after a python model's process died, so only an inference tells. A whole-clip
    model gets a zero clip of its smallest time bucket; a stream model one zero frame in a fresh sequence, with START
    and END on it.

    Returns:
        str: one line saying what answered and how fast.

    Raises:
        RuntimeInputError | RemoteServerError: what went wrong, in one line, within about ``timeout``.
    """
    started = time.perf_counter()
    probe = RemoteModel()
    try:
        _config, served = probe._connect(url, timeout, None)
        h, w = served.model_metadata(str(probe.url)).frame_size
        if served.role == P.ROLE_CLIP:
            t = served.time_buckets[0]
            arrays = {P.FRAMES: np.zeros((1, t, 3, h, w), np.float32), P.LENGTHS: np.full((1, 1), t, np.int32)}
            probe._call(lambda wire: wire.infer(arrays, (P.CLIP_LOGITS,)), "run the model")
            what = f"a zero clip of {t} frame{'s' if t > 1 else ''}"
        else:
            frame = {P.FRAME: np.zeros((1, 3, h, w), np.float32)}
            probe._call(lambda wire: wire.infer(frame, (P.CLIP_LOGITS,), sequence_id=new_correlation_id(),
                                                sequence_start=True, sequence_end=True), "run the stream model")
            what = "one zero frame in a fresh sequence"
    finally:
        if getattr(probe, "_wires", None) is not None:
            probe._close_wires()
    return f"{probe.url} answered {what} in {(time.perf_counter() - started) * 1000:.1f} ms"

