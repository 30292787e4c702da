"""Options and session fixtures of the latency suite.

Options (all optional):
    --bench-batch 1,8,64        batch sizes B (default 1,8,64 on CUDA; 1,8 on CPU, where B=64,T=64 takes minutes)
    --bench-time 1,16,64        clip lengths T (default 1,16,64 on CUDA; 1,16 on CPU)
    --bench-workload ...        subset of model,cnn,bilstm,stream (default: all)
    --bench-contender ...       subset of the contenders (default: all but torch-compile); the runtime's fast path
                                also as a variant, runtime-fast+fp16-all
    --bench-checkpoint PATH     any checkpoint (default: the reference model, random weights, seeded)
    --bench-onnx-dir DIR        already exported fp32 graphs of that checkpoint (default: exported once per session)
    --bench-compile             add the torch.compile contender (compiles per shape: minutes on a GPU)
    --bench-compile-mode MODE   torch.compile mode (default reduce-overhead)
    --bench-smoke               CI mode: tiny model, B=1, T in {1,4}
    --bench-device DEVICE       cpu or cuda[:i] (default: cuda when available)
    --bench-budget SECONDS      timed seconds per benchmark, rounds derived from it (default 1 on CUDA, 3 on CPU,
                                0.2 in smoke mode)
    --bench-rounds N            fixed rounds instead of the budget
    --bench-ort-threads N       ONNX Runtime intra-op threads (default: the cores this process may use)

Smoke mode is also on when the suite is collected through ``testpaths`` (plain ``pytest`` / ``make test``), so the
whole-tree test run checks every contender's outputs on the tiny model instead of timing ResNet-34 for minutes; name
the folder (``pytest benchmarks ...``, as ``make bench`` does) for the real grid.

CPU default grid: eager ResNet-34 takes ~190 ms at B=1,T=16 on 2 cores and ~1 min at B=64,T=64, so the CPU grid
stops at B=8, T=16; pass --bench-batch/--bench-time for more.
"""

from __future__ import annotations

import pytest

from benchmarks.contenders import CONTENDERS, FAST_VARIANTS, parse_contender
from benchmarks.context import BenchContext
from benchmarks.workloads import WORKLOADS, reference_config, smoke_config, write_random_checkpoint


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise pytest.UsageError(f"{option} takes a comma list of positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise pytest.UsageError(f"{option} takes a comma list of positive integers, got {text!r}")
    return values


def _name_list(text: str, option: str, valid) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in valid]
    if bad or not values:
        raise pytest.UsageError(f"{option}: unknown {bad or text!r}; valid: {', '.join(valid)}")
    return values


def _contender_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise pytest.UsageError(f"--bench-contender: no contender in {text!r}; valid: {', '.join(CONTENDERS)}")
    for value in values:
        try:
            parse_contender(value)
        except ValueError as e:
            raise pytest.UsageError(f"--bench-contender: {e}") from None
    return values


def pytest_addoption(parser):
    group = parser.getgroup("cnn-bilstm benchmarks")
    group.addoption("--bench-batch", default=None, help="comma list of batch sizes (default 1,8,64; CPU 1,8)")
    group.addoption("--bench-time", default=None, help="comma list of clip lengths T (default 1,16,64; CPU 1,16)")
    group.addoption("--bench-workload", default=None, help=f"comma list of {','.join(WORKLOADS)} (default all)")
    group.addoption("--bench-contender", default=None, help=f"comma list of {','.join(CONTENDERS)}, or "
                    f"runtime-fast+VARIANT[+VARIANT] with VARIANT in {','.join(FAST_VARIANTS)}")
    group.addoption("--bench-checkpoint", default=None, help="checkpoint to time (default: reference model)")
    group.addoption("--bench-onnx-dir", default=None, help="fp32 ONNX graphs of --bench-checkpoint (else exported)")
    group.addoption("--bench-compile", action="store_true", default=False, help="add the torch.compile contender")
    group.addoption("--bench-compile-mode", default="reduce-overhead", help="torch.compile mode")
    group.addoption("--bench-smoke", action="store_true", default=False, help="tiny model, B=1, T in {1,4} (CI)")
    group.addoption("--bench-device", default=None, help="cpu or cuda[:i] (default: cuda when available)")
    group.addoption("--bench-budget", type=float, default=None, help="timed seconds per benchmark")
    group.addoption("--bench-rounds", type=int, default=None, help="fixed timed rounds per benchmark")
    group.addoption("--bench-ort-threads", type=int, default=None, help="ONNX Runtime intra-op threads")


def bench_device(config) -> str:
    import torch

    device = config.getoption("--bench-device")
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise pytest.UsageError(f"--bench-device must be cpu or cuda[:i], got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise pytest.UsageError(f"--bench-device {device}: this torch build sees no CUDA device")
    return device


def is_smoke(config) -> bool:
    """--bench-smoke given, or the suite collected through ``testpaths`` rather than named on the command line."""
    from_testpaths = getattr(config, "args_source", None) == pytest.Config.ArgsSource.TESTPATHS
    return bool(config.getoption("--bench-smoke")) or from_testpaths


def bench_grid(config) -> tuple[list[int], list[int], list[str], list[str]]:
    """(batches, times, workloads, contenders) selected by the options."""
    cuda = bench_device(config).startswith("cuda")
    if is_smoke(config):
        batches, times = [1], [1, 4]
    elif cuda:
        batches, times = [1, 8, 64], [1, 16, 64]
    else:
        batches, times = [1, 8], [1, 16]
    if config.getoption("--bench-batch"):
        batches = _int_list(config.getoption("--bench-batch"), "--bench-batch")
    if config.getoption("--bench-time"):
        times = _int_list(config.getoption("--bench-time"), "--bench-time")
    workloads = list(WORKLOADS)
    if config.getoption("--bench-workload"):
        workloads = _name_list(config.getoption("--bench-workload"), "--bench-workload", WORKLOADS)
    contenders = [c for c in CONTENDERS if c != "torch-compile" or config.getoption("--bench-compile")]
    if config.getoption("--bench-contender"):
        contenders = _contender_list(config.getoption("--bench-contender"))
    return batches, times, workloads, contenders


@pytest.fixture(scope="session")
def bench_checkpoint(request, tmp_path_factory):
    """The checkpoint under test: --bench-checkpoint, else a seeded random reference (or smoke) model."""
    from pathlib import Path

    path = request.config.getoption("--bench-checkpoint")
    if path:
        path = Path(path)
        if not path.is_file():
            raise pytest.UsageError(f"--bench-checkpoint {path}: no such file")
        return path
    config = smoke_config() if is_smoke(request.config) else reference_config()
    return write_random_checkpoint(tmp_path_factory.mktemp("bench-ckpt") / "reference.pt", config, seed=0)


@pytest.fixture(scope="session")
def bench(request, bench_checkpoint, tmp_path_factory):
    """The session's :class:`BenchContext` (models, exported graphs and runners are built once and shared)."""
    opts = request.config.getoption
    for option in ("--bench-budget", "--bench-rounds", "--bench-ort-threads"):
        value = opts(option)
        if value is not None and not value > 0:  # 0 would silently mean "the default" further down
            raise pytest.UsageError(f"{option} must be > 0, got {value}")
    ctx = BenchContext(bench_checkpoint, bench_device(request.config), tmp_path_factory.mktemp("bench-work"),
                       ort_threads=opts("--bench-ort-threads"), compile_mode=opts("--bench-compile-mode"),
                       onnx_dir=opts("--bench-onnx-dir"))
    ctx.smoke = is_smoke(request.config)
    budget, rounds = opts("--bench-budget"), opts("--bench-rounds")
    ctx.budget_s = budget if budget is not None else (0.2 if ctx.smoke else 1.0 if ctx.is_cuda else 3.0)
    ctx.fixed_rounds = rounds
    yield ctx
    ctx.close()


# Skipped contenders, with reasons, go into the JSON so the report can say what was not measured and why.
_SKIPPED: list[dict] = []


def pytest_runtest_logreport(report):
    if not report.skipped or "test_latency[" not in report.nodeid:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    contender, sep, why = reason.partition(": ")
    _SKIPPED.append({"test": report.nodeid.split("[", 1)[1].rstrip("]"),
                     "contender": contender if sep else "?", "reason": why if sep else reason})


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["cnn_bilstm_skipped"] = list(_SKIPPED)
