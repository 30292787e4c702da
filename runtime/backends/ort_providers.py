"""Which ONNX Runtime execution providers a session gets: the best available, or the caller's list checked."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import RuntimeInputError

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# A plugin EP: not in get_available_providers() until registered; runtime.backends.openvino runs it.
OPENVINO = "OpenVINOExecutionProvider"


def import_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise RuntimeInputError("the ONNX Runtime backend needs onnxruntime: `pip install onnxruntime` (CPU) or "
                                "`pip install onnxruntime-gpu` (CUDA; never both)") from e
    return ort


def choose_providers(available: Sequence[str], device: Optional[str], requested: Optional[Sequence] = None) -> list:
    """The provider list to create a session with.

    Args:
        available (Sequence[str]): ``onnxruntime.get_available_providers()``.
        device (str | None): "cpu" keeps only the CPU EP; "cuda"/"cuda:N" needs a GPU EP; None takes the best.
        requested (Sequence | None): explicit providers (names or (name, options) tuples); checked against
            ``available``. Defaults to None.

    Returns:
        list: providers in priority order, always ending with the CPU EP.

    Raises:
        RuntimeInputError: a requested provider is not available, or a CUDA device without a GPU EP.
    """
    dev = device_name(device)
    if requested is not None:
        if isinstance(requested, str) or not isinstance(requested, (list, tuple)):
            raise RuntimeInputError(f"providers must be a list of provider names (or (name, options) pairs), got "
                                    f"{requested!r}; e.g. providers=['CPUExecutionProvider']")
        names = [split_provider(p)[0] for p in requested]
        variants = [n for n in names if str(n).startswith(OPENVINO + ".")]
        if variants:
            raise RuntimeInputError(f"use {OPENVINO!r}, not {variants}: the runner picks the plugin's CPU device, sets "
                                    "its precision and keeps the BiLSTM on the CPU EP")
        if OPENVINO in names and any(n not in (OPENVINO, "CPUExecutionProvider") for n in names):
            raise RuntimeInputError(f"{OPENVINO} runs on the CPU and combines only with CPUExecutionProvider, got "
                                    f"{names}")
        missing = [n for n in names if n not in available and n != OPENVINO]  # a plugin: registered when used
        if missing:
            plugin = "" if OPENVINO in available else f" (and {OPENVINO} through the onnxruntime-ep-openvino plugin)"
            raise RuntimeInputError(f"providers {missing} are not available in this onnxruntime; available: "
                                    f"{list(available)}{plugin}")
        gpu = [n for n in names if n in GPU_PROVIDERS]
        if (dev == "cpu" and gpu) or (dev is not None and dev.startswith("cuda") and not gpu):
            raise RuntimeInputError(f"device {dev!r} contradicts providers {names}; give one of them (device='cpu' "
                                    "means CPUExecutionProvider only, device='cuda' needs a GPU provider)")
        return list(requested)
    if dev == "cpu":
        return ["CPUExecutionProvider"]
    chosen = [p for p in PREFERRED if p in available]
    if dev is not None and dev.startswith("cuda"):
        if not any(p != "CPUExecutionProvider" for p in chosen):
            raise RuntimeInputError(f"device {dev!r} asked for, but this onnxruntime has no GPU provider (available: "
                                    f"{list(available)}); install onnxruntime-gpu or use device='cpu'")
        device_id = int(dev.split(":")[1]) if ":" in dev else 0
        chosen = [(p, {"device_id": device_id}) if p != "CPUExecutionProvider" else p for p in chosen]
    return chosen or ["CPUExecutionProvider"]


def split_provider(entry) -> tuple:
    """``"Name"`` or ``("Name", {options})`` -> (name, options dict or None)."""
    if isinstance(entry, (tuple, list)):
        return entry[0], (dict(entry[1]) if len(entry) > 1 and entry[1] is not None else None)
    return entry, None


def device_name(device) -> Optional[str]:
    """None, "cpu", "cuda" or "cuda:N" for a device that passed :func:`runtime.inputs.check_device` (an int N is
    CUDA device N, as for the other backends)."""
    if device is None:
        return None
    if isinstance(device, (int, np.integer)) and not isinstance(device, bool):
        return f"cuda:{int(device)}"
    return str(device)


def gpu_device_id(providers: Sequence) -> Optional[int]:
    """The CUDA device a session of ``providers`` runs on (its first GPU provider's ``device_id``, else 0), or None
    without a GPU provider."""
    for p in providers:
        name, options = split_provider(p)
        if name in GPU_PROVIDERS:
            return int((options or {}).get("device_id", 0))
    return None


def names_openvino(providers) -> bool:
    """Whether a ``providers=`` argument (checked or not) asks for the OpenVINO provider."""
    if not isinstance(providers, (list, tuple)):
        return False
    return any((p[0] if isinstance(p, (tuple, list)) and p else p) == OPENVINO for p in providers)
