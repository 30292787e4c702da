"""Shared fixtures: a tiny checkpoint every stage can use, markers with auto-skip, RNG isolation."""

from __future__ import annotations

import ast
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import runtime
from benchmarks.triton_env import SERVER_PYTHON_ENV
from benchmarks.triton_server import LocalTritonServer, server_unavailable_reason
from runtime.checkpoint import save_checkpoint
from runtime.model import ModelConfig, build_random_model

# Small enough that a forward pass over a few clips takes milliseconds on 2 CPU cores, but the same architecture
# family as the product (ResNet + 2-layer BiLSTM + two heads).
TINY_CONFIG = ModelConfig(num_classes=3, backbone="resnet18", stem="cifar", frame_size=(16, 16), hidden_size=32,
                          num_layers=2, dropout=0.0)
TINY_CLASSES = ["left", "right", "still"]
TINY_MEAN = [0.5, 0.5, 0.5]
TINY_STD = [0.25, 0.25, 0.25]


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")
    parser.addoption("--simulate-no-openvino-device", action="store_true", default=False,
                     help="make the OpenVINO plugin's device query return nothing, as on an AMD CPU, for this run "
                          "(tests and benchmark contenders then take the path of a machine where OpenVINO cannot run)")


def pytest_configure(config):
    if config.getoption("--simulate-no-openvino-device", default=False):
        # The test seam around the device query: everything else (import, registration, the runner's checks) stays
        # real, so the run sees what an AMD machine with the plugin installed sees.
        from runtime.backends import openvino

        openvino._openvino_cpu_devices = lambda ort: []


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow to run")
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _restore_rng_state():
    """Each test may seed freely; the next test starts from the same RNG state regardless."""
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    yield
    torch.set_rng_state(torch_state)
    np.random.set_state(np_state)
    random.setstate(py_state)


def _tiny_model(seed: int = 0):
    # Seeded random weights with non-trivial BatchNorm statistics, so eval-mode BN (and any conv-BN folding) is
    # really exercised; the benchmark suite builds its models the same way.
    return build_random_model(TINY_CONFIG, seed=seed)


@pytest.fixture(scope="session")
def tiny_model():
    """An eval-mode tiny CNNBiLSTM with random weights (do not modify it in place)."""
    return _tiny_model()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model):
    """Path of a checkpoint file holding ``tiny_model``."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, tiny_model, class_names=TINY_CLASSES, mean=TINY_MEAN, std=TINY_STD)
    return path


@pytest.fixture(scope="session")
def tiny_export(tiny_checkpoint, tmp_path_factory):
    """An fp32 ONNX export folder (model.onnx, cnn.onnx, bilstm.onnx, export_report.json) of ``tiny_model``."""
    from export.to_onnx import export_onnx

    out = tmp_path_factory.mktemp("tiny-export") / "fp32"
    export_onnx(tiny_checkpoint, out, precision="fp32")
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_threads_agree_with_one_thread(runner, inputs, threads: int = 8, calls: int = 200) -> None:
    """``threads`` threads x ``calls`` calls of ``runner.infer`` over ``inputs`` ((x, lengths) pairs, taken in turn)
    give exactly the outputs of one thread (every output: frame and clip logits, or features), and raise nothing.
    Different shapes and lengths in ``inputs`` catch state shared between calls."""
    expected = [runner.infer(x, ln) for x, ln in inputs]
    errors, mismatches = [], []

    def work(k):
        try:
            for j in range(calls):
                i = (k + j) % len(inputs)
                out = runner.infer(*inputs[i])
                if set(out) != set(expected[i]) or not all(np.array_equal(out[n], expected[i][n]) for n in out):
                    mismatches.append((k, j))
        except Exception as e:  # surfaced below: an exception in a thread must fail the test
            errors.append(e)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors and not mismatches, (errors[:3], mismatches[:5])


def skip_unless_engines_build(backend: str = "tensorrt_rtx") -> None:
    """Skip the calling test (or module) unless ``backend`` really builds an engine here (not merely imports)."""
    from export.to_trt import builder_unavailable_reason

    reason = builder_unavailable_reason(backend)
    if reason:
        pytest.skip(f"no TensorRT engine builds here: {reason}", allow_module_level=True)


# Training tests: the TINY_CONFIG architecture (resnet18, cifar stem, 16x16, hidden 32, 2 layers) on 2-class synthetic
# clips of 4 frames: an epoch is two batches of 4 clips.
TINY_ARGS = [
    "--data", "synthetic", "--synthetic-classes", "2", "--frames", "4", "--train-clips", "8", "--val-clips", "4",
    "--backbone", TINY_CONFIG.backbone, "--stem", TINY_CONFIG.stem, "--frame-size", str(TINY_CONFIG.frame_size[0]),
    "--hidden-size", str(TINY_CONFIG.hidden_size), "--num-layers", str(TINY_CONFIG.num_layers),
    "--batch-size", "4", "--lr", "1e-3", "--device", "cpu", "--no-progress", "--seed", "5",
]


def run_train(out, *extra) -> int:
    """``python -m train`` with :data:`TINY_ARGS` into ``out``; its exit status."""
    from train.__main__ import main as train_main

    return train_main([*TINY_ARGS, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished 2-epoch tiny run per test module (a module's evaluations may write beside it); tests that change
    anything copy it first."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    assert run_train(out, "--epochs", "2") == 0
    return out


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped (pids are not reused this fast): a killed writer's."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def run_checked(args, cwd, timeout: int = 900):
    """Run a command outside this test process (no PYTHONPATH, no active venv) and require exit 0; the process."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args[:4]} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def run_cli(module: str, *args, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS...`` as a user runs it: a new process of this interpreter in ``cwd`` (default: the
    checkout's root), with this run's environment and this checkout first on its PYTHONPATH; output captured (text)."""
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd or repo, env=env, capture_output=True,
                          text=True, timeout=timeout)


def fresh_venv(folder, extra: str):
    """A new virtual environment in ``folder`` with only this checkout's ``.[extra]`` installed; its python."""
    repo = Path(__file__).resolve().parents[1]
    venv = Path(folder) / "venv"
    run_checked([sys.executable, "-m", "venv", str(venv)], cwd=folder)
    python = venv / "bin" / "python"
    run_checked([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{repo}[{extra}]"],
                cwd=folder)
    return python


def cuda_device_present() -> bool:
    """Whether cuda-python sees a CUDA device (the runtime's own check; False without cuda-python)."""
    from runtime.cuda_mem import CudaApi, NoCudaDeviceError

    try:
        CudaApi().require_device("this test")
    except (ImportError, NoCudaDeviceError):
        return False
    return True


# A real Triton server for tests/serving: the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel, started once
# per session on free localhost ports, serving a python-kind repository generated from the tiny test model. It runs in
# its own environment (``make triton-env`` creates ``.venv-triton``; ``make test`` passes it in
# ``TRITON_SERVER_PYTHON``); without it every serving test skips with the one-line reason.

# Short, so that the expiry test waits little; long beside the gaps between one stream's frames in the other tests.
STREAM_IDLE_SECONDS = 2.0
STREAM_WINDOW = 8
MAX_TIME = 16  # time buckets 1, 2, 4, 8, 16
MAX_BATCH_SIZE = 8
PROTOCOLS = ("http", "grpc")


@pytest.fixture(scope="session")
def server_python() -> str:
    """The server environment's interpreter; skips the test when there is none that can run the bundled server."""
    python = os.environ.get(SERVER_PYTHON_ENV)
    if not python:
        pytest.skip(f"{SERVER_PYTHON_ENV} is not set: `make triton-env` builds the server's environment and "
                    "`make test` sets it")
    reason = server_unavailable_reason(python)
    if reason:
        pytest.skip(f"the bundled tritonserver cannot run here: {reason}")
    return python


def write_python_repository(export_dir, out, **options):
    """A python-kind repository of the tiny export (``export.triton_repo``, as `python -m export.to_triton` writes
    it): ``cnn_bilstm`` (clips of 1..16 frames, batches of up to 8) and, unless ``stream=False``,
    ``cnn_bilstm_stream``."""
    from export.triton_repo import RepoOptions, write_repository

    opts = dict(kind="python", max_time=MAX_TIME, max_batch_size=MAX_BATCH_SIZE)
    if options.get("stream", True):  # stream options without a stream model are refused
        opts.update(stream_window=STREAM_WINDOW, stream_idle_seconds=STREAM_IDLE_SECONDS)
    return write_repository(export_dir, out, RepoOptions(**{**opts, **options})).path


@pytest.fixture(scope="session")
def triton_server(server_python, tiny_export, tmp_path_factory):
    """One server for the session, serving ``cnn_bilstm`` and ``cnn_bilstm_stream``."""
    repo = write_python_repository(tiny_export, tmp_path_factory.mktemp("triton") / "repo")
    with LocalTritonServer(repo, python=server_python, startup_timeout=180) as server:
        yield server


@pytest.fixture(scope="session")
def local_model(tiny_export):
    """The same model in process: what every served result is compared with."""
    with runtime.load(tiny_export / "model.onnx") as runner:
        yield runner


def base_url(server, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


def assert_same_outputs(served: dict, local: dict, lengths, atol: float = 1e-5) -> None:
    """Clip logits and the frame logits of every real step (t < lengths[b]) agree within ``atol``."""
    np.testing.assert_allclose(served["clip_logits"], local["clip_logits"], rtol=0, atol=atol)
    assert served["frame_logits"].shape == local["frame_logits"].shape
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(served["frame_logits"][b, :n], local["frame_logits"][b, :n], rtol=0, atol=atol)


# Video tests: small synthetic motion clips (train/synthetic.py's blob, low noise so the codecs keep it at >= 30 dB)
# encoded once per session with PyAV: H.264 and MPEG-4, in MP4, AVI and MKV, at 25 and 30 fps, one odd size.
VIDEO_FRAMES = 40
VIDEO_SPECS = {  # name: (file, codec, fps, (H, W), pixel format, encoder options)
    "h264_mp4_25fps": ("h264.mp4", "libx264", 25, (48, 64), "yuv420p", {"crf": "18"}),
    "mpeg4_avi_30fps": ("mpeg4.avi", "mpeg4", 30, (48, 64), "yuv420p", {"qscale": "2"}),
    "h264_mkv_odd_30fps": ("odd.mkv", "libx264", 30, (33, 45), "yuv444p", {"crf": "18"}),
    "mpeg4_mkv_keyframes_25fps": ("keyframes.mkv", "mpeg4", 25, (48, 64), "yuv420p", {"qscale": "2", "g": "5"}),
}


def motion_frames(label: int, frames: int, size, seed: int = 0, noise: float = 0.02, period=None):
    """uint8 (frames, H, W, 3) of the synthetic motion class ``label`` (4 classes) over ``period`` circle positions
    (default ``frames``: every frame differs), repeated: with ``period=8`` any 8 consecutive frames are a clip of
    that class as the ``synthetic`` source makes it for T = 8."""
    from train.synthetic import make_synthetic_clip

    period = period or frames
    clip = make_synthetic_clip(label, np.random.default_rng(seed), frames=period, frame_size=tuple(size), noise=noise)
    return np.concatenate([clip] * (-(-frames // period)))[:frames]


@pytest.fixture(scope="session")
def synthetic_videos(tmp_path_factory):
    """name -> (path, source frames uint8 (T, H, W, 3), fps) for each of ``VIDEO_SPECS``."""
    from runtime.video_write import write_video

    folder = tmp_path_factory.mktemp("videos")
    out = {}
    for i, (name, (file, codec, fps, size, pix_fmt, options)) in enumerate(VIDEO_SPECS.items()):
        frames = motion_frames(i % 4, VIDEO_FRAMES, size, seed=i)
        write_video(folder / file, frames, fps, codec=codec, pix_fmt=pix_fmt, options=options)
        out[name] = (folder / file, frames, fps)
    return out


@pytest.fixture
def demuxed(monkeypatch) -> list[Path]:
    """The path of every video a ``runtime.video.VideoReader`` demuxes (reads every packet of) during the test."""
    from runtime.video import VideoReader

    paths: list[Path] = []
    demux = VideoReader._demux

    def counting_demux(self, stamp):
        paths.append(self.path)
        return demux(self, stamp)

    monkeypatch.setattr(VideoReader, "_demux", counting_demux)
    return paths


def deny_writing(monkeypatch, folder: Path) -> None:
    """Make ``os.access(folder, W_OK)`` say no, as a read-only folder would (root ignores real permissions)."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == folder and mode & os.W_OK
                        else real_access(p, mode, **k))


def modules_loaded_by(statement: str, modules) -> list[str]:
    """Which of ``modules`` are in ``sys.modules`` after a fresh interpreter runs ``statement`` (import costs)."""
    code = f"import sys\n{statement}\nprint(repr(sorted(m for m in {tuple(modules)!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


# Backbone weights: torchvision state dicts written here from seeded networks (nothing is downloaded), as
# ``python -m train --pretrained PATH`` takes them and as torch.hub caches ImageNet weights.
def write_torchvision_weights(path, backbone: str, seed: int = 0) -> Path:
    """``torchvision.models.<backbone>()``'s state dict with seeded random weights and BatchNorm statistics (so that
    "every tensor equal" means something), saved at ``path``."""
    import torchvision

    torch.manual_seed(seed)
    net = torchvision.models.get_model(backbone, weights=None)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(seed + 7)
    torch.save(net.state_dict(), path)
    return Path(path)


@pytest.fixture(scope="session")
def torchvision_weights(tmp_path_factory):
    """backbone -> the path of its seeded torchvision weights file (written once per session)."""
    folder = tmp_path_factory.mktemp("tv-weights")
    files: dict = {}

    def get(backbone: str) -> Path:
        if backbone not in files:
            files[backbone] = write_torchvision_weights(folder / f"{backbone}.pth", backbone)
        return files[backbone]

    return get
