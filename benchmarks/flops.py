"""FLOPs of a workload and the peak FLOP/s of a device: the compute floor the report draws under every latency.

Nothing here imports torch at module level, so ``benchmarks.report`` stays cheap.
"""

from __future__ import annotations

import functools

from benchmarks.workloads import STREAM_WINDOW, check_workload

# Stated or measured dense peaks used for the compute floor, matched by substring of the device name (first hit wins).
# The H100 and CPU figures were measured on the project's machines (fp16 matmul at 8192^3; ONNX Runtime fp32 on 2
# AVX-512 cores); the others are vendor datasheet dense fp16 tensor-core figures.
PEAKS: tuple[tuple[str, float, str], ...] = (
    ("H200", 732e12, "H100's measured fp16 matmul peak (732 TFLOP/s; H200 has the same SMs)"),
    ("H100", 732e12, "measured fp16 matmul peak (8192^3) on an H100 80GB HBM3"),
    ("A100", 312e12, "stated A100 fp16 dense tensor-core peak"),
    ("L40S", 362e12, "stated L40S fp16 dense tensor-core peak"),
    ("L4", 121e12, "stated L4 fp16 dense tensor-core peak"),
    ("cpu", 260e9, "measured ~260 GFLOP/s fp32 (ONNX Runtime, 2 AVX-512 cores of the dev machine)"),
)


def stated_peak(device_name_: str) -> tuple[float, str, str]:
    """The peak FLOP/s used for the compute floor of a device.

    Args:
        device_name_ (str): the device name recorded in a result (``torch.cuda.get_device_name`` or the CPU name).

    Returns:
        tuple: (FLOP/s, the matched key, where the number comes from). Any non-matching name falls back to "cpu".
    """
    low = device_name_.lower()
    for key, flops, source in PEAKS:
        if key.lower() in low:
            return flops, key, source
    key, flops, source = next(p for p in PEAKS if p[0] == "cpu")
    return flops, key, source


@functools.lru_cache(maxsize=None)
def cnn_flops_per_frame(config) -> int:
    """FLOPs (2 x MACs) of the CNN on one frame, counted by ``FlopCounterMode`` on the meta device (no compute)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from runtime.model import build_backbone

    with torch.device("meta"):
        net = build_backbone(config).eval()  # training-mode BatchNorm refuses one value per channel (1x1 maps)
        x = torch.empty(1, 3, *config.frame_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    return int(counter.get_total_flops())


def bilstm_flops(config, batch: int, time_steps: int) -> int:
    """FLOPs of the BiLSTM and both heads, analytically (the flop counter does not see cuDNN/ATen LSTM kernels).

    Per step, direction and layer an LSTM does 4 gate matmuls: 2 * 4H * (I + H) FLOPs (elementwise work ignored);
    layer 0 reads I = F, later layers I = 2H. The frame head is a (2H -> C) linear per frame, the clip head per clip.
    """
    h, f = config.hidden_size, config.feature_dim
    per_step = 0
    for layer in range(config.num_layers):
        inp = f if layer == 0 else 2 * h
        per_step += 2 * (2 * 4 * h * (inp + h))  # two directions
    heads = batch * time_steps * 2 * (2 * h) * config.num_classes + batch * 2 * (2 * h) * config.num_classes
    return batch * time_steps * per_step + heads


def workload_flops(config, workload: str, batch: int, time_steps: int, window: int = STREAM_WINDOW) -> int:
    """FLOPs of one call of a workload at (B, T); for ``stream`` one push = B new frames + a BiLSTM over the window."""
    check_workload(workload)
    cnn = cnn_flops_per_frame(config)
    if workload == "model":
        return batch * time_steps * cnn + bilstm_flops(config, batch, time_steps)
    if workload == "cnn":
        return batch * time_steps * cnn
    if workload == "bilstm":
        return bilstm_flops(config, batch, time_steps)
    return batch * cnn + bilstm_flops(config, batch, window)
