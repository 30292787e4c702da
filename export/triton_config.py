"""``config.pbtxt`` on Triton's own schema, ``tritonclient.grpc.model_config_pb2.ModelConfig``: a config is a
``ModelConfig`` message written with protobuf's ``text_format`` and read back with it, so a misspelt field or enum
name is refused by Triton's definition, with its line. Also the ``python -m export.to_triton`` command that writes a
repository again with the options its configs record (the fix a damaged repository's errors suggest)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from export.errors import ExportError
from runtime.triton import protocol as P

CONFIG_NAME = "config.pbtxt"


def model_config_class():
    """``tritonclient.grpc.model_config_pb2.ModelConfig`` (the ``serve`` extra), with a clear error without it."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise ExportError("checking Triton model configs needs tritonclient (with its grpc part): pip install "
                          "'cnn-bilstm-deploy[serve]' (tritonclient[http,grpc])") from e
    return model_config_pb2.ModelConfig


def config_text(config) -> str:
    """The ``config.pbtxt`` text of a ``ModelConfig`` message, in the layout of Triton's docs: fields in the order the
    schema declares them (name, backend, max_batch_size, input, output, ...), lists of numbers on one line."""
    from google.protobuf import text_format

    return text_format.MessageToString(config, use_index_order=True, use_short_repeated_primitives=True,
                                       as_utf8=True)


def parse_config(text: str, label: str):
    """Parse ``config.pbtxt`` text with Triton's schema.

    Returns:
        tuple: (``ModelConfig`` or None, list of errors as ``LABEL:LINE:COL: message; valid ...``).
    """
    from google.protobuf import text_format

    cls = model_config_class()
    try:
        return text_format.Parse(text, cls()), []
    except text_format.ParseError as e:
        line, col = e.GetLine(), e.GetColumn()
        msg = re.sub(r"^\d+:\d+ : ", "", str(e)).rstrip(".")
        return None, [f"{label}:{line or 1}:{col or 1}: {msg}; {_valid_hint(msg, cls)}"]


def _valid_hint(msg: str, cls) -> str:
    """What is valid where the parser stopped, from the schema's descriptor pool: the fields of the message it was
    in (and the closest name), or the enum's values."""
    import difflib

    pool = cls.DESCRIPTOR.file.pool
    try:
        m = re.search(r'Message type "([\w.]+)" has no field named "(\w+)"', msg)
        if m:
            names = [f.name for f in pool.FindMessageTypeByName(m.group(1)).fields]
            close = difflib.get_close_matches(m.group(2), names, n=1)
            return (f"did you mean {close[0]!r}? " if close else "") + f"valid fields: {', '.join(names)}"
        m = re.search(r'Enum type "([\w.]+)" has no value named (\w+)', msg)
        if m:
            return f"valid values: {', '.join(v.name for v in pool.FindEnumTypeByName(m.group(1)).values)}"
    except KeyError:  # a name the pool does not know: fall through to the general hint
        pass
    return "the syntax is protobuf's text format (Triton's docs: model_configuration.md)"


# --- the command that writes a repository again -----------------------------------------------------------------------


def regenerate_command(repo) -> str:
    """The ``python -m export.to_triton`` command that writes ``repo`` again, whole, with the options its configs
    record, and what its SRC is (the repository does not record where it was made from).

    Returns:
        str: e.g. ``python -m export.to_triton SRC --out REPO --kind python --max-batch-size 8 ... --force``
        (SRC: ...)``; with placeholders where the configs cannot be read.
    """
    repo = Path(repo)
    models = {}
    for folder in sorted(p for p in repo.iterdir() if p.is_dir()) if repo.is_dir() else []:
        try:
            config, _errors = parse_config((folder / CONFIG_NAME).read_text(encoding="utf-8"), str(folder))
            param = config.parameters.get(P.METADATA_PARAMETER) if config is not None else None
            served = P.ServedModel.from_json(param.string_value if param is not None else "", str(folder))
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        models.setdefault(served.role, (config, served))
    if P.ROLE_CLIP not in models:
        return f"`python -m export.to_triton SRC --out {shlex.quote(str(repo))} --kind KIND --force` (SRC: the ONNX " \
               "export folder or engine it was made from, KIND and the other options as it was made)"
    config, served = models[P.ROLE_CLIP]
    args = ["python", "-m", "export.to_triton", "SRC", "--out", str(repo), *_clip_args(config, served),
            *_stream_args(models.get(P.ROLE_STREAM), served.kind, config.HasField("dynamic_batching")), "--force"]
    what = "the engine (with its ENGINE.json report)" if served.kind == P.KIND_TENSORRT else "the ONNX export folder"
    checkpoint = str(served.metadata.get("checkpoint_sha256") or "")[:16]
    return (f"`{shlex.join(args)}` (SRC: {what} it was made from"
            + (f", of the checkpoint with sha256 {checkpoint}...)" if checkpoint else ")"))


def _clip_args(config, served) -> list:
    args = ["--kind", served.kind]
    if config.name != P.DEFAULT_MODEL_NAME:
        args += ["--name", config.name]
    args += ["--max-batch-size", str(config.max_batch_size), "--max-time", str(served.max_time)]
    if config.instance_group:
        group = config.instance_group[0]
        kind = type(group).Kind.Name(group.kind)
        args += ["--instances", str(group.count), "--instance-kind", "gpu" if kind == "KIND_GPU" else "cpu"]
    if config.HasField("dynamic_batching"):
        args += ["--max-queue-delay-us", str(config.dynamic_batching.max_queue_delay_microseconds)]
        if config.dynamic_batching.preferred_batch_size:
            args += ["--preferred-batch-sizes", ",".join(map(str, config.dynamic_batching.preferred_batch_size))]
    else:
        args.append("--no-dynamic-batching")
    if any(a.name == "tensorrt" for a in config.optimization.execution_accelerators.gpu_execution_accelerator):
        args.append("--ort-tensorrt-fp16")
    return args


def _stream_args(stream, kind: str, clip_batching: bool) -> list:
    if kind != P.KIND_PYTHON:
        return []
    if stream is None:
        return ["--no-stream"]
    config, served = stream
    sb = config.sequence_batching
    param = config.parameters.get(P.MAX_STREAMS_PARAMETER)
    args = ["--stream-window", str(served.window), "--stream-idle-seconds", repr(served.idle_seconds),
            "--stream-max-batch-size", str(config.max_batch_size)]
    if param is not None:
        args += ["--max-streams", param.string_value]
    if not clip_batching:  # the one queue-delay option sets the stream model's too
        args += ["--max-queue-delay-us", str(sb.oldest.max_queue_delay_microseconds)]
    return args
