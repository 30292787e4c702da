"""What every exported ONNX graph carries and must satisfy: the ``cnn_bilstm_deploy`` metadata property, the LSTM
surgery (``lengths`` wired into ``sequence_lens``) and the structure and I/O checks of ``docs/ARCHITECTURE.md``."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Optional

from export.errors import ExportError
from export.spec import SPEC
from runtime._io import sha256_bytes, sha256_file
from runtime._version import __version__
from runtime.spec import METADATA_KEY

# --- graph surgery and structure checks --------------------------------------------------------------------------


def wire_sequence_lens(model_proto, lengths_name: str = "lengths") -> int:
    """Feed the graph input ``lengths_name`` into input 4 (``sequence_lens``) of every ONNX ``LSTM`` node.

    Missing optional inputs before index 4 get the empty-name placeholder. Returns the number of nodes wired.

    Raises:
        ExportError: no such graph input, or an LSTM already has another ``sequence_lens``.
    """
    import onnx

    inputs = {i.name: i for i in model_proto.graph.input}
    if lengths_name not in inputs:
        raise ExportError(f"graph has no input {lengths_name!r}; inputs are {sorted(inputs)}")
    if inputs[lengths_name].type.tensor_type.elem_type != onnx.TensorProto.INT32:
        raise ExportError(f"graph input {lengths_name!r} must be int32 to serve as LSTM sequence_lens")
    wired = 0
    for node in model_proto.graph.node:
        if node.op_type != "LSTM":
            continue
        while len(node.input) < 5:
            node.input.append("")
        if node.input[4] not in ("", lengths_name):
            raise ExportError(f"LSTM node {node.name!r} already has sequence_lens {node.input[4]!r}")
        node.input[4] = lengths_name
        wired += 1
    return wired


def check_lstm_structure(model_proto, num_layers: int, lengths_name: Optional[str] = "lengths") -> list:
    """Check the BiLSTM stayed native: ``num_layers`` bidirectional ``LSTM`` nodes, no Loop/Scan.

    Args:
        model_proto (onnx.ModelProto): the graph.
        num_layers (int): expected LSTM node count.
        lengths_name (str | None): when given, every LSTM's ``sequence_lens`` must be this graph input.

    Returns:
        list[dict]: per LSTM node its name, direction, hidden size and sequence_lens input.

    Raises:
        ExportError: any deviation, naming what was found.
    """
    import onnx

    nodes = list(model_proto.graph.node)
    loops = [n.op_type for n in nodes if n.op_type in ("Loop", "Scan")]
    if loops:
        raise ExportError(f"the graph contains {loops}: the LSTM was unrolled or lowered to a loop, not native")
    found = []
    for n in nodes:
        if n.op_type != "LSTM":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        direction = attrs.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else str(direction)
        seq = n.input[4] if len(n.input) > 4 else ""
        found.append({"name": n.name, "direction": direction, "hidden_size": int(attrs.get("hidden_size", 0)),
                      "layout": int(attrs.get("layout", 0)), "sequence_lens": seq})
    if len(found) != num_layers:
        raise ExportError(f"expected {num_layers} native ONNX LSTM nodes (one per layer), found {len(found)}")
    for f in found:
        if f["direction"] != "bidirectional":
            raise ExportError(f"LSTM node {f['name']!r} has direction {f['direction']!r}, expected bidirectional")
        if lengths_name is not None and f["sequence_lens"] != lengths_name:
            raise ExportError(
                f"LSTM node {f['name']!r} has sequence_lens {f['sequence_lens']!r}, expected the graph input "
                f"{lengths_name!r} (padded clips would not be exact)"
            )
    return found


def check_graph_io(proto, graph: str) -> None:
    """Graph I/O names and dtypes as the spec says; batch and time are symbolic (not fixed numbers)."""
    import onnx

    gspec = SPEC.graph(graph)
    ins = [i.name for i in proto.graph.input]
    outs = [o.name for o in proto.graph.output]
    if tuple(ins) != gspec.inputs or tuple(outs) != gspec.outputs:
        raise ExportError(f"{graph}.onnx has inputs {ins} and outputs {outs}; expected {gspec.inputs} and "
                          f"{gspec.outputs}")
    for vi in list(proto.graph.input) + list(proto.graph.output):
        tt = vi.type.tensor_type
        want = onnx.TensorProto.INT32 if vi.name == "lengths" else onnx.TensorProto.FLOAT
        if tt.elem_type != want:
            raise ExportError(f"{graph}.onnx tensor {vi.name!r} has dtype {onnx.TensorProto.DataType.Name(tt.elem_type)}"
                              f", expected {onnx.TensorProto.DataType.Name(want)}")
        for axis, name in gspec.dynamic_axes.get(vi.name, {}).items():
            dim = tt.shape.dim[axis]
            if dim.HasField("dim_value"):
                raise ExportError(f"{graph}.onnx tensor {vi.name!r} axis {axis} ({name}) is fixed to "
                                  f"{dim.dim_value}; it must be dynamic")


# --- metadata ------------------------------------------------------------------------------------------------------


def build_metadata(ckpt, graph: str, precision: str, opset: int, checkpoint_sha256: str) -> dict:
    """The ``cnn_bilstm_deploy`` metadata dict of ARCHITECTURE.md for one graph."""
    import onnx
    import torch

    return {
        "graph": graph,
        "class_names": list(ckpt.class_names),
        "frame_size": list(ckpt.config.frame_size),
        "mean": [float(x) for x in ckpt.mean],
        "std": [float(x) for x in ckpt.std],
        "feature_dim": int(ckpt.config.feature_dim),
        "precision": precision,
        "model_config": ckpt.config.to_dict(),
        "package_version": __version__,
        "exporter": {"torch": torch.__version__, "onnx": onnx.__version__, "opset": int(opset)},
        "checkpoint_sha256": checkpoint_sha256,
    }


def set_metadata(model_proto, metadata: dict) -> None:
    """Store ``metadata`` as JSON under the ``cnn_bilstm_deploy`` metadata property (replacing an old one)."""
    kept = [p for p in model_proto.metadata_props if p.key != METADATA_KEY]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(kept)
    prop = model_proto.metadata_props.add()
    prop.key = METADATA_KEY
    prop.value = json.dumps(metadata, sort_keys=True)


def read_metadata(model) -> Optional[dict]:
    """The ``cnn_bilstm_deploy`` metadata of an ONNX file or ``ModelProto`` (None when absent).

    Raises:
        ExportError: the file is not a loadable ONNX model, or the property is not valid JSON.
    """
    import onnx

    if not hasattr(model, "metadata_props"):
        try:
            model = onnx.load(str(model), load_external_data=False)
        except Exception as e:
            raise ExportError(f"{model} is not a readable ONNX file: {type(e).__name__}: {e}") from e
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            try:
                return json.loads(p.value)
            except json.JSONDecodeError as e:
                raise ExportError(f"metadata property {METADATA_KEY!r} is not valid JSON: {e}") from e
    return None


def checkpoint_sha256(ckpt) -> str:
    import torch

    if ckpt.path is not None and Path(ckpt.path).is_file():
        return sha256_file(ckpt.path)
    buf = io.BytesIO()  # an in-memory Checkpoint: hash its weights instead
    torch.save({k: v.detach().cpu() for k, v in ckpt.model.state_dict().items()}, buf)
    return sha256_bytes(buf.getvalue())
