"""Every stage for the backbones beside the ResNets (MobileNetV3 small and large, EfficientNet-B0), on a tiny model
trained here for one epoch: training, the verified ONNX export and ONNX Runtime against PyTorch, the torch fast path's
folding, streaming, int8 with its agreement gate (the CLI), runtime classify, TensorRT-RTX builds and both kinds of
Triton repository. The ResNets take the same paths in the rest of the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

import runtime  # noqa: E402
from export.spec import SPEC  # noqa: E402
from export.to_onnx import export_onnx  # noqa: E402
from runtime.backends.torch_backend.fold import fold_conv_bn  # noqa: E402
from runtime.checkpoint import load_checkpoint  # noqa: E402
from runtime.streaming import StreamingClassifier  # noqa: E402
from train.__main__ import main as train_main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NEW_BACKBONES = ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0")
WIDTHS = {"mobilenet_v3_small": 576, "mobilenet_v3_large": 960, "efficientnet_b0": 1280}  # what the networks give
H = W = 16
WINDOW = 4
# One epoch on 8 synthetic clips of 4 frames of 16x16 (cifar stem: the first conv at stride 1), BiLSTM 1x16.
ARGS = ["--data", "synthetic", "--synthetic-classes", "2", "--frames", "4", "--train-clips", "8", "--val-clips", "4",
        "--frame-size", str(H), "--hidden-size", "16", "--num-layers", "1", "--batch-size", "4", "--epochs", "1",
        "--device", "cpu", "--no-progress", "--no-eval-shuffled", "--seed", "1"]


@pytest.fixture(scope="module", params=NEW_BACKBONES)
def trained(request, tmp_path_factory):
    """One backbone trained and exported (fp32); the module's tests run backbone by backbone on it."""
    root = tmp_path_factory.mktemp(request.param)
    assert train_main([*ARGS, "--backbone", request.param, "--out", str(root / "run")]) == 0
    result = export_onnx(root / "run" / "best.pt", root / "fp32", "fp32")
    return SimpleNamespace(backbone=request.param, root=root, ckpt=root / "run" / "best.pt", fp32=root / "fp32",
                           report=result.report)


def _frames(b, t, seed):
    return np.random.default_rng(seed).standard_normal((b, t, 3, H, W)).astype(np.float32)


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def _env() -> dict:
    return {**{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}, "PYTHONPATH": str(REPO)}


def test_training_records_the_backbone_and_its_measured_width(trained):
    ckpt = load_checkpoint(trained.ckpt)
    assert (ckpt.config.backbone, ckpt.config.stem, ckpt.config.pretrained) == (trained.backbone, "cifar", "none")
    with torch.no_grad():
        features = ckpt.model.extract_features(torch.from_numpy(_frames(1, 2, 0)))
    assert features.shape == (1, 2, WIDTHS[trained.backbone]) == (1, 2, ckpt.config.feature_dim)
    assert ckpt.model.lstm.input_size == ckpt.config.feature_dim


def test_export_is_verified_and_onnx_runtime_matches_pytorch(trained):
    assert trained.report["ok"] and set(trained.report["graphs"]) == {"model", "cnn", "bilstm"}
    x, lengths = _frames(3, 6, 7), np.array([6, 2, 5])  # a shape none of the export's checks used
    tol = SPEC.tolerance("fp32").rel
    with runtime.load(trained.fp32 / "model.onnx") as ort, runtime.load(trained.ckpt, device="cpu") as eager:
        got, want = ort.infer(x, lengths), eager.infer(x, lengths)
        assert ort.metadata.feature_dim == WIDTHS[trained.backbone]
    mask = np.arange(6)[None] < lengths[:, None]
    assert _rel(got["clip_logits"], want["clip_logits"]) <= tol
    assert _rel(got["frame_logits"][mask], want["frame_logits"][mask]) <= tol
    with runtime.load(trained.fp32 / "cnn.onnx") as cnn:
        assert cnn.infer(x)["features"].shape == (3, 6, WIDTHS[trained.backbone])


def test_the_torch_fast_path_folds_every_batchnorm(trained):
    model = load_checkpoint(trained.ckpt).model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fold_conv_bn(model.cnn).modules())
    x, lengths = _frames(3, 5, 3), np.array([5, 1, 3])
    with runtime.load(trained.ckpt, device="cpu", fast=True) as fast, runtime.load(trained.ckpt, device="cpu") as eager:
        got, want = fast.infer(x, lengths), eager.infer(x, lengths)
    assert _rel(got["clip_logits"], want["clip_logits"]) < 1e-5


def test_streaming_equals_the_whole_model_on_its_window(trained):
    frames = _frames(1, 7, 11)[0]
    tol = SPEC.tolerance("fp32").rel
    with StreamingClassifier(trained.fp32, window=WINDOW) as stream, runtime.load(trained.ckpt, device="cpu") as m:
        for n in range(1, len(frames) + 1):
            res = stream.push(frames[n - 1])
            whole = m.infer(frames[max(0, n - WINDOW):n][None])
            assert res.window_frames == min(n, WINDOW)
            assert _rel(res.clip_logits, whole["clip_logits"][0]) <= tol
            assert _rel(res.frame_logits, whole["frame_logits"][0, -1]) <= tol


def test_int8_passes_its_agreement_gate_and_classifies(trained):
    """``python -m export.quantize`` (calibrated and checked on synthetic clips) and ``python -m runtime classify``
    on the int8 model, as a user runs them. The gate is the CLI's default (clip agreement >= 0.98 on 32 clips, so
    one flip fails it): on 256 held-out clips these models agreed on every clip, with logits within 4e-5
    (mobilenet_v3_small), 7e-5 (mobilenet_v3_large) and 2e-3 (efficientnet_b0) of fp32 (AMD EPYC, ONNX Runtime
    1.32), far from a tie."""
    int8 = trained.root / "int8"
    proc = subprocess.run([sys.executable, "-m", "export.quantize", str(trained.fp32), "--out", str(int8), "--data",
                           "synthetic", "--frames", "4", "--calibration-clips", "16", "--verify-clips", "32"],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((int8 / "export_report.json").read_text())
    assert report["ok"] and report["verification"]["clip_agreement"] >= report["gate"]["clip_agreement_min"] == 0.98
    clip = int8.parent / "clip.npy"
    np.save(clip, np.random.default_rng(2).integers(0, 256, (4, H, W, 3), dtype=np.uint8))
    proc = subprocess.run([sys.executable, "-m", "runtime", "classify", str(int8 / "model.onnx"), str(clip)],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "clip.npy" in proc.stdout and ("clockwise" in proc.stdout or "counterclockwise" in proc.stdout)


def test_tensorrt_rtx_builds_it_and_triton_repositories_check(trained, tmp_path):
    from conftest import skip_unless_engines_build

    from export.triton_check import check_repository
    from export.triton_repo import RepoOptions, write_repository

    python_repo = write_repository(trained.fp32, tmp_path / "python", RepoOptions(kind="python")).path
    assert check_repository(python_repo) == []
    skip_unless_engines_build("tensorrt_rtx")
    from export.to_trt import build_engine

    built = build_engine(trained.fp32 / "model.onnx", tmp_path / "model.engine", profiles=["batch=1:1:2,time=1:4:8"],
                         backend="tensorrt_rtx", compute_capability="8.6")
    assert built.report["metadata"]["model_config"]["backbone"] == trained.backbone
    assert built.report["metadata"]["feature_dim"] == WIDTHS[trained.backbone]
    trt_repo = write_repository(built.engine_path, tmp_path / "trt").path
    assert check_repository(trt_repo) == []


@pytest.mark.parametrize("backbone", ["resnet34", "resnet50"])
def test_the_deeper_resnets_train_export_and_stream(backbone, tmp_path):
    """The rest of the suite runs resnet18; resnet34 (more basic blocks) and resnet50 (bottleneck blocks, 2048-wide
    features) take the same stages: a tiny training run, the verified export with ONNX Runtime equal to PyTorch at an
    unseen shape, and streaming equal to the whole model on its window."""
    assert train_main([*ARGS, "--backbone", backbone, "--out", str(tmp_path / "run")]) == 0
    ckpt, fp32 = tmp_path / "run" / "best.pt", tmp_path / "fp32"
    assert export_onnx(ckpt, fp32, "fp32").report["ok"]
    x, lengths = _frames(2, 6, 7), np.array([6, 3])
    tol = SPEC.tolerance("fp32").rel
    with runtime.load(fp32 / "model.onnx") as ort, runtime.load(ckpt, device="cpu") as eager:
        got, want = ort.infer(x, lengths), eager.infer(x, lengths)
        assert ort.metadata.feature_dim == {"resnet34": 512, "resnet50": 2048}[backbone]
        mask = np.arange(6)[None] < lengths[:, None]
        assert _rel(got["clip_logits"], want["clip_logits"]) <= tol
        assert _rel(got["frame_logits"][mask], want["frame_logits"][mask]) <= tol
        frames = _frames(1, 6, 11)[0]
        with StreamingClassifier(fp32, window=WINDOW) as stream:
            for n in range(1, len(frames) + 1):
                res = stream.push(frames[n - 1])
                whole = eager.infer(frames[max(0, n - WINDOW):n][None])
                assert _rel(res.clip_logits, whole["clip_logits"][0]) <= tol
