"""What a TensorRT build holds: the ONNX graph's float16 use, the parsed network's layers and dtypes, the engine
inspector's view where this machine can deserialize the plan, and the check that the network kept the precision
the graph asked for (strongly typed: a float16 graph must yield HALF layers, else the build fails loudly instead of
leaving a silent FP32 engine)."""

from __future__ import annotations

import logging

from export.errors import PrecisionCheckError
from export.trt_build import LOOP_LAYER_TYPES, normalize_engine_information
from runtime.trt_compat import dtype_name, make_logger

logger = logging.getLogger(__name__)


def _onnx_node_description(model_proto, index: int) -> str:
    nodes = model_proto.graph.node
    if 0 <= index < len(nodes):
        n = nodes[index]
        return f"ONNX node #{index} name={n.name!r} op={n.op_type!r} inputs={list(n.input)}"
    return f"ONNX node #{index} (no such node; the graph has {len(nodes)})"


def parser_errors(parser, model_proto) -> list:
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = int(err.node()) if hasattr(err, "node") else -1
        desc = err.desc() if hasattr(err, "desc") else str(err)
        where = _onnx_node_description(model_proto, node) if node >= 0 else "no ONNX node (graph-level error)"
        out.append(f"{where}: {desc} (code {err.code()})" if hasattr(err, "code") else f"{where}: {desc}")
    return out


def graph_half_usage(model_proto) -> dict:
    """Where the ONNX graph itself asks for float16: ``{"any": bool, "lstm": bool}``.

    This, not the export precision label, is what the built network must honour: ``bilstm.onnx`` of an ``fp16``
    export is all float32 (only the CNN is fp16), while ``fp16-all`` runs the LSTM nodes on float16 weights.
    """
    import onnx

    half = onnx.TensorProto.FLOAT16
    half_inits = {i.name for i in model_proto.graph.initializer if i.data_type == half}
    casts = any(n.op_type == "Cast" and any(a.name == "to" and a.i == half for a in n.attribute)
                for n in model_proto.graph.node)
    lstm = any(n.op_type == "LSTM" and len(n.input) > 1 and n.input[1] in half_inits for n in model_proto.graph.node)
    return {"any": bool(casts or half_inits), "lstm": lstm}


def inspect_network(tm, network) -> dict:
    """Describe a parsed network: I/O tensors (shape with -1 for dynamic axes), layers with type and output dtypes."""
    def tensor(t, mode):
        return {"name": t.name, "mode": mode, "dtype": dtype_name(t.dtype), "shape": [int(d) for d in t.shape]}

    io = [tensor(network.get_input(i), "INPUT") for i in range(network.num_inputs)]
    io += [tensor(network.get_output(i), "OUTPUT") for i in range(network.num_outputs)]
    layers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        layers.append({
            "name": layer.name,
            "type": layer.type.name,
            "output_dtypes": [dtype_name(o.dtype) for o in outs if o is not None],
        })
    return {"io_tensors": io, "layers": layers}


def summarize_layers(layers: list, dtype_key: str = "output_dtypes") -> dict:
    """``{layer type: {dtype: count}}`` over layers (network inspection form)."""
    out: dict = {}
    for layer in layers:
        for dt in layer.get(dtype_key) or ["NONE"]:
            d = out.setdefault(layer["type"] or "UNKNOWN", {})
            d[dt] = d.get(dt, 0) + 1
    return out


def check_network_precision(network_info: dict, half_usage: dict, precision: str = "") -> dict:
    """Check the network's layer dtypes match what the graph asked for (:func:`graph_half_usage`).

    Graph with float16: some layers and every convolution output HALF. float16 LSTM (``fp16-all``): the loop layers
    carry HALF too. Graph without float16: no HALF at all. Returns a summary dict; raises
    :class:`PrecisionCheckError` when the check fails.
    """
    layers = network_info["layers"]
    conv = [dt for layer in layers if layer["type"] == "CONVOLUTION" for dt in layer["output_dtypes"]]
    loop_float = [dt for layer in layers if layer["type"] in LOOP_LAYER_TYPES for dt in layer["output_dtypes"]
                  if dt in ("HALF", "FLOAT")]
    half_layers = sum(1 for layer in layers if "HALF" in layer["output_dtypes"])
    summary = {"precision": precision, "graph_asks_half": half_usage["any"], "lstm_half": half_usage["lstm"],
               "half_layers": half_layers, "convolution_dtypes": sorted(set(conv)),
               "loop_float_dtypes": sorted(set(loop_float))}
    if half_usage["any"]:
        if half_layers == 0:
            raise PrecisionCheckError(
                f"the graph asked for {precision} but the strongly typed network has no HALF layer: the engine would "
                "silently run in FP32. Re-export with `python -m export.to_onnx --precision fp16`."
            )
        if conv and set(conv) != {"HALF"}:
            raise PrecisionCheckError(f"{precision} graph, but convolutions output {sorted(set(conv))}, not only HALF")
    if half_usage["lstm"] and "HALF" not in loop_float:
        raise PrecisionCheckError("the graph's LSTM is float16, but the TensorRT loop layers carry no HALF tensor")
    if not half_usage["any"] and half_layers:
        raise PrecisionCheckError(f"the graph is float32, but {half_layers} network layers output HALF")
    summary["ok"] = True
    return summary


def try_engine_inspection(tm, blob, host_code: bool = False) -> dict:
    """Deserialize the plan and read the engine inspector, where this machine can (a supported GPU).

    ``host_code``: the plan embeds a lean runtime (version-compatible), which TensorRT loads only when allowed to.
    """
    trt = tm.trt
    # Failure is expected without a supported GPU and is reported in the result, so keep TensorRT's errors quiet.
    trt_logger = make_logger(tm, "error", collect=True, forward=False)
    try:
        trt_runtime = trt.Runtime(trt_logger)
        if host_code:
            trt_runtime.engine_host_code_allowed = True
        engine = trt_runtime.deserialize_cuda_engine(blob)
    except Exception as e:  # some versions raise instead of returning None
        engine, exc = None, f"{type(e).__name__}: {e}"
    else:
        exc = None
    if engine is None:
        msgs = trt_logger.errors() if hasattr(trt_logger, "errors") else []
        reason = exc or ("; ".join(msgs[:3]) if msgs else "deserialize_cuda_engine returned None")
        if "compute capability" in reason.lower():
            reason = f"this GPU is not supported by {tm.describe()}: {reason}"
        return {"available": False, "reason": reason}
    io = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        io.append({"name": name, "mode": engine.get_tensor_mode(name).name,
                   "dtype": dtype_name(engine.get_tensor_dtype(name)),
                   "shape": [int(d) for d in engine.get_tensor_shape(name)]})
    inspector = engine.create_engine_inspector()
    info = normalize_engine_information(tm, inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    return {"available": True, "io_tensors": io, "layers": info["layers"],
            "num_optimization_profiles": int(engine.num_optimization_profiles)}


def check_engine_precision(engine_info: dict, half_usage: dict, precision_check: dict) -> None:
    """Where the engine could be inspected: count its HALF tensors into ``precision_check``; none in a graph that
    asks for float16 means an FP32 engine, which raises :class:`PrecisionCheckError`."""
    if not engine_info["available"]:
        logger.info("engine not inspected on this machine (%s); the report uses the network definition",
                    engine_info["reason"])
        return
    engine_half = sum(1 for layer in engine_info["layers"] for t in layer["outputs"] if t["dtype"] == "HALF")
    precision_check["engine_half_tensors"] = engine_half
    if half_usage["any"] and engine_half == 0:
        raise PrecisionCheckError("engine inspector shows no HALF tensor although the graph asks for float16: "
                                  "the engine is FP32")
