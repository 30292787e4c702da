"""The machine a benchmark ran on: usable cores, CPU and device names, library versions, and the device to use.

Nothing here imports torch at module level, so ``benchmarks.report`` stays cheap.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any, Optional, Sequence


class GpuUnavailableError(RuntimeError):
    """A CUDA device was asked for where torch sees no CUDA GPU (the benchmark CLIs exit 3: cannot run here)."""


class Unavailable(Exception):
    """A contender or artifact cannot be made here (missing library, no GPU, ...); the message is the skip reason."""


def command_line(module: str, argv: Optional[Sequence[str]]) -> str:
    """The command that ran, as a user types it, for a result's record: ``python -m MODULE ARGS`` (arguments
    shell-quoted where needed).

    Args:
        module (str): the CLI's module, e.g. ``benchmarks.decode``.
        argv (Sequence[str], optional): what ``main`` was given; None for this process's ``sys.argv[1:]``.
    """
    import shlex
    import sys

    return shlex.join(["python", "-m", module, *map(str, sys.argv[1:] if argv is None else argv)])


def load_average() -> Optional[list[float]]:
    """The 1, 5 and 15-minute load averages now, rounded to 0.01; None where the OS has none. Above the core count,
    other processes shared the machine with a measurement (its latencies are then inflated and noisy)."""
    if not hasattr(os, "getloadavg"):
        return None
    return [round(v, 2) for v in os.getloadavg()]


def usable_cpus() -> int:
    """Cores this process may run on: its affinity set, which a container or ``taskset`` limits, unlike
    ``os.cpu_count()`` (the host's cores)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def process_tree_cpu_s(pid: Optional[int]) -> Optional[float]:
    """User + system CPU seconds of process ``pid`` and its living descendants (Linux ``/proc``); None where there
    is none, or it is gone."""
    tick, total, todo, seen = os.sysconf("SC_CLK_TCK"), 0.0, [pid] if pid else [], set()
    while todo:
        p = todo.pop()
        seen.add(p)
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15 of stat(5))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split() if int(c) not in seen]
        except (OSError, IndexError, ValueError):
            if p == pid:
                return None
    return total if pid else None


def cpu_name() -> str:
    """CPU model name and usable core count, e.g. ``Intel(R) Xeon(R) Processor (2 cores)``."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({usable_cpus()} cores)"


def device_name(device: str) -> str:
    """Human name of a torch device string (``cpu`` or ``cuda[:i]``)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def tensorrt_version() -> str:
    """``tensorrt X``, ``tensorrt_rtx X`` or ``not installed``."""
    for module in ("tensorrt", "tensorrt_rtx"):
        try:
            mod = __import__(module)
            return f"{module} {getattr(mod, '__version__', '?')}"
        except Exception:  # ImportError, or a stub package failing at import
            continue
    return "not installed"


def check_bench_device(device: Optional[str]) -> str:
    """The device to benchmark on: ``device`` checked, or for None CUDA when available, else the CPU.

    Raises:
        ValueError: not "cpu", "cuda" or "cuda:N" (:class:`runtime.RuntimeInputError`).
        GpuUnavailableError: CUDA asked for, but torch sees no CUDA GPU.
    """
    import torch

    from runtime.inputs import check_device

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise GpuUnavailableError(f"--device {device}, but torch sees no CUDA GPU here; use --device cpu")
    return str(device)


def environment(device: str) -> dict[str, Any]:
    """Versions and device facts recorded with every benchmark, the date and the load average now.

    Args:
        device (str): ``cpu`` or ``cuda[:i]``.

    Returns:
        dict: device, device_name, torch, cuda, cudnn, tf32 flags, onnxruntime (+ providers), tensorrt, python, ...,
        ``date`` (UTC) and ``load_average_1min`` (when this was called).
    """
    from datetime import datetime, timezone

    load = load_average()
    return {**_static_environment(device), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_average_1min": load[0] if load else None}


@functools.lru_cache(maxsize=None)
def _static_environment(device: str) -> dict[str, Any]:
    import numpy as np
    import torch

    from runtime._version import __version__

    env: dict[str, Any] = {
        "device": device,
        "device_name": device_name(device),
        "host_cpu": cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none (CPU build)",
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "package": __version__,
        "torch_threads": torch.get_num_threads(),
        "tensorrt": tensorrt_version(),
    }
    if device.startswith("cuda"):
        env.update(_cuda_facts(device))
    env.update(_optional_versions())
    return env


def _cuda_facts(device: str) -> dict[str, Any]:
    import torch

    return {"tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "gpu_memory_gb": round(torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30, 1)}


def _optional_versions() -> dict[str, Any]:
    """onnxruntime (always, "not installed" when absent), its OpenVINO plugin and pytest-benchmark (when present)."""
    from importlib.metadata import PackageNotFoundError, version

    facts: dict[str, Any] = {}
    try:
        import onnxruntime as ort

        facts["onnxruntime"] = ort.__version__
        facts["onnxruntime_providers"] = list(ort.get_available_providers())
    except ImportError:
        facts["onnxruntime"] = "not installed"
    try:  # the OpenVINO plugin EP (the ort-openvino-* contenders)
        facts["onnxruntime_ep_openvino"] = version("onnxruntime-ep-openvino")
    except PackageNotFoundError:
        pass
    try:
        import pytest_benchmark

        facts["pytest_benchmark"] = pytest_benchmark.__version__
    except ImportError:
        pass
    return facts
