"""TensorRT optimisation profiles in terms of ``batch`` and ``time``, mapped onto each graph's real inputs
(``frames``/``features``/``lengths``); fixed axes come from the graph."""

from __future__ import annotations

import re

from export.errors import ProfileError
from export.spec import BATCH_AXIS, SPEC, TIME_AXIS

PROFILE_AXES = (BATCH_AXIS, TIME_AXIS)


def parse_profile(text: str) -> dict:
    """``"batch=1:1:8,time=1:16:128"`` -> ``{"batch": (1, 1, 8), "time": (1, 16, 128)}``.

    Raises:
        ProfileError: malformed text, non-positive numbers, min <= opt <= max violated, unknown or repeated axis.
    """
    if not isinstance(text, str) or not text.strip():
        raise ProfileError(f"empty profile; expected e.g. {SPEC.default_profiles[0]!r}")
    out = {}
    for part in text.split(","):
        m = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*=\s*(\d+)\s*:\s*(\d+)\s*:\s*(\d+)\s*", part)
        if not m:
            raise ProfileError(
                f"bad profile entry {part.strip()!r} in {text!r}; expected AXIS=MIN:OPT:MAX entries separated by "
                f"commas, e.g. {SPEC.default_profiles[0]!r} (axes: {', '.join(PROFILE_AXES)})"
            )
        name, lo, opt, hi = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
        if name not in PROFILE_AXES:
            raise ProfileError(
                f"unknown profile axis {name!r} in {text!r}; valid axes: {', '.join(PROFILE_AXES)} (they are mapped "
                "onto the graph inputs: frames/features (batch, time, ...), lengths (batch,))"
            )
        if name in out:
            raise ProfileError(f"axis {name!r} given twice in profile {text!r}")
        if lo < 1:
            raise ProfileError(f"{name} min must be >= 1, got {lo} in {text!r}")
        if not lo <= opt <= hi:
            raise ProfileError(f"{name}={lo}:{opt}:{hi} in {text!r} violates min <= opt <= max")
        out[name] = (lo, opt, hi)
    return out


def onnx_inputs(model_proto) -> dict:
    """Graph inputs as ``{name: [dim, ...]}`` where a dim is an int (fixed) or a str (symbolic name)."""
    inits = {i.name for i in model_proto.graph.initializer}
    out = {}
    for vi in model_proto.graph.input:
        if vi.name in inits:
            continue
        dims = []
        for d in vi.type.tensor_type.shape.dim:
            dims.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?"))
        out[vi.name] = dims
    return out


def _describe_inputs(inputs: dict) -> str:
    return "; ".join(f"{n} ({', '.join(str(d) for d in dims)})" for n, dims in inputs.items())


def resolve_profile(profile: dict, inputs: dict) -> dict:
    """Map a ``{"batch": (min, opt, max), "time": ...}`` profile onto the graph's inputs.

    Entries may also be given per input name (``{"frames": [(min shape), (opt), (max)]}``) for graphs that do not
    use the ``batch``/``time`` axis names.

    Returns:
        dict: ``{input_name: [min_shape, opt_shape, max_shape]}`` (lists of ints).

    Raises:
        ProfileError: an axis the graph needs is missing, an axis or input name the graph does not have (the message
            lists the real input names and their axes), or a symbolic dim that is neither batch nor time.
    """
    axes_in_graph = {d for dims in inputs.values() for d in dims if isinstance(d, str)}
    unknown = [k for k in profile if k not in PROFILE_AXES and k not in inputs]
    if unknown:
        raise ProfileError(
            f"profile names {unknown} that this graph does not have; its inputs are {_describe_inputs(inputs)} "
            f"and the profile axes are {', '.join(sorted(axes_in_graph & set(PROFILE_AXES)))}"
        )
    unused = [k for k in profile if k in PROFILE_AXES and k not in axes_in_graph]
    if unused:
        raise ProfileError(
            f"profile sets axis {unused} but no input of this graph has it; inputs: {_describe_inputs(inputs)}"
        )
    resolved = {}
    for name, dims in inputs.items():
        if name in profile:  # explicit per-input shapes
            shapes = [list(map(int, s)) for s in profile[name]]
            if len(shapes) != 3 or any(len(s) != len(dims) for s in shapes):
                raise ProfileError(f"input {name!r} needs three shapes of rank {len(dims)} (min, opt, max)")
            resolved[name] = shapes
            continue
        shapes = [[], [], []]
        for d in dims:
            if isinstance(d, int):
                for s in shapes:
                    s.append(d)
            elif d in profile:
                for s, v in zip(shapes, profile[d], strict=True):
                    s.append(int(v))
            else:
                raise ProfileError(
                    f"input {name!r} has dynamic axis {d!r} that the profile does not set; give {d}=MIN:OPT:MAX "
                    f"(inputs: {_describe_inputs(inputs)})"
                )
        resolved[name] = shapes
    for name, (lo, opt, hi) in resolved.items():
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
            raise ProfileError(f"input {name!r}: shapes {lo} / {opt} / {hi} violate min <= opt <= max")
    return resolved


# TensorRT-RTX 1.7.1 (measured here with the tiny model) calls a profile "not self-consistent" when, at its shapes, any
# tensor of the network would hold more than 2**40 elements ("tensor volume exceeds 1099511627776"), warns, and builds
# an engine anyway: batch=1:1:8192,time=1:16:8192 passes (conv1's output, 64x16x16 per frame, holds exactly 2**40), and
# time=1:16:8193 is refused. So such profiles are refused before the build.
MAX_TENSOR_VOLUME = 1 << 40


def network_tensor_shapes(network) -> list:
    """``[(name, dims)]`` of a parsed TensorRT network's inputs and layer outputs (-1: a dynamic dimension)."""
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        tensors += [layer.get_output(j) for j in range(layer.num_outputs)]
    return [(t.name, [int(d) for d in t.shape]) for t in tensors if t is not None]


def describe_profile(profile: dict) -> str:
    """``{"batch": (1, 1, 8), "time": (1, 16, 128)}`` -> ``"batch=1:1:8,time=1:16:128"`` (per-input shapes as given)."""
    return ",".join(f"{k}={':'.join(map(str, v))}" if k in PROFILE_AXES else f"{k}={list(v)}"
                    for k, v in profile.items())


def check_network_volumes(parsed: list, resolved: list, inputs: dict, network, limit: int = MAX_TENSOR_VOLUME) -> None:
    """Refuse profiles at whose largest shapes a tensor of the parsed network would exceed ``limit`` elements.

    A tensor's dynamic dimensions come from the inputs' batch and time (the CNN's activations fold them into one), so
    its largest volume is bounded by its fixed dimensions' product times the largest batch x time the profile lets in.

    Args:
        parsed (list[dict]): the profiles as given (for the message).
        resolved (list[dict]): the same mapped onto the inputs (:func:`resolve_profile`).
        inputs (dict): the graph's inputs (:func:`onnx_inputs`).
        network: the parsed TensorRT network (``INetworkDefinition``).
        limit (int): elements a tensor may hold. Defaults to :data:`MAX_TENSOR_VOLUME`.

    Raises:
        ProfileError: the first such profile, its largest tensor, and the largest batch x time that fits.
    """
    dynamic = [(name, dims) for name, dims in network_tensor_shapes(network) if any(d < 0 for d in dims)]
    if not dynamic:
        return
    name, dims = max(dynamic, key=lambda t: _fixed_volume(t[1]))
    per_step = _fixed_volume(dims)
    for i, (given, shapes) in enumerate(zip(parsed, resolved, strict=True)):
        steps = max(_dynamic_volume(inputs[n], s[2]) for n, s in shapes.items())
        if per_step * steps > limit:
            shown = ", ".join("N" if d < 0 else str(d) for d in dims)
            raise ProfileError(
                f"profile {i} ({describe_profile(given)}) is not self-consistent for TensorRT: at its largest shapes "
                f"(batch x time = {steps:,}) tensor {name} [{shown}] would hold {per_step * steps:,} elements, beyond "
                f"TensorRT's limit of {limit:,} per tensor; keep batch x time at most {limit // per_step:,}")


def _fixed_volume(dims) -> int:
    volume = 1
    for d in dims:
        volume *= d if d >= 0 else 1
    return volume


def _dynamic_volume(dims, shape) -> int:
    """The product of ``shape``'s values at the graph input's symbolic (batch/time) positions."""
    volume = 1
    for d, v in zip(dims, shape, strict=True):
        volume *= v if isinstance(d, str) else 1
    return volume


def refuse_inconsistent(builder: str, messages: list, parsed: list) -> None:
    """TensorRT warns that a profile is not self-consistent (a shape its network cannot hold) and builds anyway; an
    engine, its report and a repository would then promise shapes the engine cannot run. Refuse it in TensorRT's
    words (whatever else the builder means by it: the volume check above covers what was measured).

    Args:
        builder (str): the TensorRT flavour and version, for the message.
        messages (list[str]): what the builder logged (warnings and errors).
        parsed (list[dict]): the profiles as given.

    Raises:
        ProfileError: the builder said so.
    """
    said = [text for text in messages if "not self-consistent" in text]
    if said:
        words = said[0].split(" In ")[0]  # TensorRT's sentence, without its source location
        raise ProfileError(f"{builder} found the optimization profiles {'; '.join(map(describe_profile, parsed))} not "
                           f"self-consistent ({words}); no engine written: narrow the --profile ranges")
