"""What a Triton model repository and its clients agree on: model names, tensor names, dtypes and dims, time buckets
and the metadata the repository carries in each ``config.pbtxt``.

The generator (``python -m export.to_triton``), the checker, the server-side Python models and the client all take
these names from here, so a repository and a client can never disagree on them.

Whole-clip model ``NAME`` (``max_batch_size`` > 0, so Triton's batch dimension is the clip):

- input ``frames`` ``TYPE_FP32`` dims ``[-1, 3, H, W]``; input ``lengths`` ``TYPE_INT32`` dims ``[1]`` reshaped to
  ``[]`` (the client sends ``[B, 1]``, the model sees ``[B]``);
- outputs ``frame_logits`` ``TYPE_FP32`` ``[-1, C]`` and ``clip_logits`` ``TYPE_FP32`` ``[C]``.

Triton batches only requests of equal shape, so a client pads each clip with zeros to its time bucket
(:func:`time_buckets`, :func:`bucket_for`) and sends the true length: padding is exact in every backend.

Streaming model ``NAME_stream`` (python kind, sequence batcher): controls ``START``/``END``/``READY``
(``TYPE_INT32`` ``[1]``) and ``CORRID`` (``TYPE_UINT64`` ``[1]``), input ``frame`` ``[3, H, W]``, outputs
``frame_logits`` ``[C]``, ``clip_logits`` ``[C]``, ``frames_seen`` and ``window_frames`` (``TYPE_INT32`` ``[1]``).

Metadata: ``parameters { key: "cnn_bilstm_deploy" value: { string_value: "<JSON>" } }``, the JSON being
:meth:`ServedModel.to_json`; a client reads it from the server's model-config endpoint (:meth:`ServedModel.from_config`).
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import RuntimeInputError
from ..spec import METADATA_KEY, ModelMetadata

DEFAULT_MODEL_NAME = "cnn_bilstm"
STREAM_SUFFIX = "_stream"
METADATA_PARAMETER = METADATA_KEY  # the config.pbtxt parameter that holds the JSON of ServedModel
MAX_STREAMS_PARAMETER = "max_streams"  # the stream model's config parameter: live windows it keeps at most

KIND_TENSORRT, KIND_ONNXRUNTIME, KIND_PYTHON = "tensorrt", "onnxruntime", "python"
KINDS = (KIND_TENSORRT, KIND_ONNXRUNTIME, KIND_PYTHON)
ROLE_CLIP, ROLE_STREAM = "clip", "stream"
ROLES = (ROLE_CLIP, ROLE_STREAM)

# Tensor names. The whole-clip model's are the graphs' own (docs/ARCHITECTURE.md).
FRAMES, LENGTHS, FRAME_LOGITS, CLIP_LOGITS = "frames", "lengths", "frame_logits", "clip_logits"
FRAME, FRAMES_SEEN, WINDOW_FRAMES = "frame", "frames_seen", "window_frames"
START, END, READY, CORRID = "START", "END", "READY", "CORRID"

# Sequence-batcher controls of the streaming model: tensor name -> (control kind, data type).
STREAM_CONTROLS = {
    START: ("CONTROL_SEQUENCE_START", "TYPE_INT32"),
    END: ("CONTROL_SEQUENCE_END", "TYPE_INT32"),
    READY: ("CONTROL_SEQUENCE_READY", "TYPE_INT32"),
    CORRID: ("CONTROL_SEQUENCE_CORRID", "TYPE_UINT64"),
}

# Triton data types used here -> numpy dtype names (for both directions of the wire).
NUMPY_DTYPES = {"TYPE_FP32": "float32", "TYPE_FP16": "float16", "TYPE_INT32": "int32", "TYPE_INT64": "int64",
                "TYPE_UINT64": "uint64", "TYPE_BOOL": "bool"}

# Streaming defaults shared by the generator and the server-side model (the window is StreamingClassifier's).
DEFAULT_WINDOW = 16
DEFAULT_IDLE_SECONDS = 60.0
DEFAULT_MAX_STREAMS = 1024

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_model_name(name: Any) -> str:
    """Return ``name`` if it can name a Triton model (and its folder), else raise.

    Raises:
        RuntimeInputError: not a string of letters, digits, ``_``, ``.`` or ``-`` (1..128, not starting with a
            punctuation character).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise RuntimeInputError(f"model name {name!r} is not valid: use 1..128 letters, digits, '_', '.' or '-', "
                                "starting with a letter or digit (it names the model's folder and its URL)")
    return name


def stream_model_name(name: str) -> str:
    """The streaming model's name for the whole-clip model ``name`` (``cnn_bilstm`` -> ``cnn_bilstm_stream``)."""
    return check_model_name(name) + STREAM_SUFFIX


def time_buckets(min_t: int, max_t: int) -> list:
    """The time lengths a client pads clips to: powers of two within ``[min_t, max_t]``, plus ``max_t`` itself when
    it is not one. ``(1, 16)`` -> ``[1, 2, 4, 8, 16]``, ``(1, 20)`` -> ``[1, 2, 4, 8, 16, 20]``.

    Raises:
        RuntimeInputError: bounds that are not integers with ``1 <= min_t <= max_t``.
    """
    for v, what in ((min_t, "min_t"), (max_t, "max_t")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise RuntimeInputError(f"{what} must be an integer >= 1, got {v!r}")
    if min_t > max_t:
        raise RuntimeInputError(f"time range {min_t}..{max_t} is empty: min_t must be <= max_t")
    buckets, p = [], 1
    while p <= max_t:
        if p >= min_t:
            buckets.append(p)
        p *= 2
    if not buckets or buckets[-1] != max_t:
        buckets.append(max_t)
    return buckets


def bucket_for(t: int, buckets) -> int:
    """The smallest bucket ``>= t``: the time length a clip of ``t`` frames is padded to.

    Raises:
        RuntimeInputError: ``t`` is not an integer in ``1..max(buckets)`` (the message names the valid range).
    """
    buckets = sorted(int(b) for b in buckets)
    if not buckets:
        raise RuntimeInputError("no time buckets: the served model's metadata lists none")
    try:
        if isinstance(t, bool):
            raise TypeError
        t = operator.index(t)  # int or numpy integer
    except TypeError:
        raise RuntimeInputError(f"a clip's length must be an integer, got {t!r}") from None
    if t < 1 or t > buckets[-1]:
        raise RuntimeInputError(f"a clip of {t} frames is outside what the served model accepts: 1..{buckets[-1]} "
                                f"frames (time buckets {buckets}); split longer clips")
    for b in buckets:
        if b >= t:
            return b
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a served model, as its ``config.pbtxt`` declares it.

    Attributes:
        name (str): tensor name.
        data_type (str): Triton data type (``"TYPE_FP32"``...).
        dims (tuple): dims without the batch dimension, ``-1`` for a dynamic one.
        reshape (tuple | None): the shape the model sees instead of ``dims`` (``()`` for ``lengths``), or None.
    """

    name: str
    data_type: str
    dims: tuple
    reshape: Optional[tuple] = None

    @property
    def numpy_dtype(self) -> str:
        return NUMPY_DTYPES[self.data_type]


def clip_inputs(frame_size) -> tuple:
    """Inputs of the whole-clip model for frames of ``frame_size`` (H, W)."""
    h, w = (int(v) for v in frame_size)
    return (TensorSpec(FRAMES, "TYPE_FP32", (-1, 3, h, w)), TensorSpec(LENGTHS, "TYPE_INT32", (1,), reshape=()))


def clip_outputs(num_classes: int) -> tuple:
    """Outputs of the whole-clip model with ``num_classes`` classes."""
    c = int(num_classes)
    return (TensorSpec(FRAME_LOGITS, "TYPE_FP32", (-1, c)), TensorSpec(CLIP_LOGITS, "TYPE_FP32", (c,)))


def stream_inputs(frame_size) -> tuple:
    """Inputs of the streaming model (its controls are :data:`STREAM_CONTROLS`, declared in sequence_batching)."""
    h, w = (int(v) for v in frame_size)
    return (TensorSpec(FRAME, "TYPE_FP32", (3, h, w)),)


def stream_outputs(num_classes: int) -> tuple:
    """Outputs of the streaming model: the newest frame's and the window's logits, and the window's counts."""
    c = int(num_classes)
    return (TensorSpec(FRAME_LOGITS, "TYPE_FP32", (c,)), TensorSpec(CLIP_LOGITS, "TYPE_FP32", (c,)),
            TensorSpec(FRAMES_SEEN, "TYPE_INT32", (1,)), TensorSpec(WINDOW_FRAMES, "TYPE_INT32", (1,)))


@dataclass(frozen=True)
class ServedModel:
    """The JSON a repository's ``config.pbtxt`` carries under the ``cnn_bilstm_deploy`` parameter.

    Attributes:
        metadata (dict): the model's metadata as the export's ``model.onnx`` metadata property (or the engine
            report's ``metadata``) holds it.
        kind (str): one of :data:`KINDS`.
        role (str): ``"clip"`` (whole clips) or ``"stream"`` (one frame per request, sequence batcher).
        time_buckets (tuple): the time lengths clients pad to (clip role); ``(window,)`` for the stream role.
        min_time (int): the smallest T the model runs.
        max_time (int): the largest T the model runs.
        window (int | None): frames the stream model's BiLSTM looks back over (stream role only).
        idle_seconds (float | None): a stream idle longer than this is dropped (stream role only).
    """

    metadata: dict
    kind: str
    role: str
    time_buckets: tuple
    min_time: int
    max_time: int
    window: Optional[int] = None
    idle_seconds: Optional[float] = None

    def to_dict(self) -> dict:
        d = {"metadata": self.metadata, "kind": self.kind, "role": self.role, "time_buckets": list(self.time_buckets),
             "min_time": self.min_time, "max_time": self.max_time}
        if self.role == ROLE_STREAM:
            d.update(window=self.window, idle_seconds=self.idle_seconds)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def model_metadata(self, source: str = "served model") -> ModelMetadata:
        """The model's :class:`runtime.spec.ModelMetadata` (class names, mean, std, frame size...)."""
        return ModelMetadata.from_dict(self.metadata, source)

    @classmethod
    def from_dict(cls, d: Any, source: str = "served model") -> "ServedModel":
        """Build from the parsed JSON, checking every key.

        Raises:
            RuntimeInputError: not an object, a key missing or of the wrong kind.
        """
        if not isinstance(d, dict):
            raise RuntimeInputError(f"{source}: the {METADATA_PARAMETER!r} parameter must hold a JSON object, got "
                                    f"{type(d).__name__}")
        missing = [k for k in ("metadata", "kind", "role", "time_buckets", "min_time", "max_time") if k not in d]
        if d.get("role") == ROLE_STREAM:
            missing += [k for k in ("window", "idle_seconds") if k not in d]
        if missing:
            raise RuntimeInputError(f"{source}: the {METADATA_PARAMETER!r} parameter lacks {missing}; was the "
                                    "repository written by `python -m export.to_triton`?")
        if d["kind"] not in KINDS:
            raise RuntimeInputError(f"{source}: kind {d['kind']!r} is not one of {list(KINDS)}")
        if d["role"] not in ROLES:
            raise RuntimeInputError(f"{source}: role {d['role']!r} is not one of {list(ROLES)}")
        if not isinstance(d["metadata"], dict):
            raise RuntimeInputError(f"{source}: 'metadata' must be a JSON object (the model's metadata)")
        try:
            buckets = tuple(_int(b) for b in d["time_buckets"])
            min_t, max_t = _int(d["min_time"]), _int(d["max_time"])
            window = _int(d["window"]) if d.get("window") is not None else None
            idle = float(d["idle_seconds"]) if d.get("idle_seconds") is not None else None
        except (TypeError, ValueError) as e:
            raise RuntimeInputError(f"{source}: time_buckets, min_time, max_time and window must be integers, "
                                    f"idle_seconds a number ({e})") from e
        if not buckets or list(buckets) != sorted(set(buckets)) or not 1 <= min_t <= max_t or buckets[-1] > max_t:
            raise RuntimeInputError(f"{source}: time_buckets {list(buckets)} must be increasing, non-empty and within "
                                    f"min_time..max_time {min_t}..{max_t} (with 1 <= min_time <= max_time)")
        return cls(metadata=d["metadata"], kind=d["kind"], role=d["role"], time_buckets=buckets, min_time=min_t,
                   max_time=max_t, window=window, idle_seconds=idle)

    @classmethod
    def from_json(cls, text: str, source: str = "served model") -> "ServedModel":
        try:
            d = json.loads(text)
        except (TypeError, ValueError) as e:
            raise RuntimeInputError(f"{source}: the {METADATA_PARAMETER!r} parameter is not valid JSON: {e}") from e
        return cls.from_dict(d, source)

    @classmethod
    def from_config(cls, config: dict, source: str = "served model") -> "ServedModel":
        """Read it from a model config as JSON: what tritonclient's HTTP ``get_model_config()`` returns, or the gRPC
        one's ``as_json=True`` answer (``{"config": {...}}``).

        Raises:
            RuntimeInputError: the config has no ``cnn_bilstm_deploy`` parameter (a model this package did not
                generate) or it is malformed.
        """
        if isinstance(config, dict) and "config" in config and "parameters" not in config:
            config = config["config"]
        params = (config or {}).get("parameters") or {}
        value = params.get(METADATA_PARAMETER)
        text = value.get("string_value") if isinstance(value, dict) else None
        if not text:
            raise RuntimeInputError(f"{source}: its config has no {METADATA_PARAMETER!r} parameter, so it was not "
                                    "generated by `python -m export.to_triton` (which records the model's metadata "
                                    "there)")
        return cls.from_json(text, source)


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{v!r} is not an integer")
    return v
