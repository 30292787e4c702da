"""`python -m train.evaluate MODEL` for every kind of model that runs here, on one small trained model: the checkpoint,
its fp32 and int8 ONNX exports and the python-kind model served by the real bundled tritonserver; --reference
agreement; several windows per video; the one-line refusals (other classes, a dead URL, an engine that cannot run
here) and atomic result files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CLASSES, motion_frames, write_python_repository

import runtime
from benchmarks.triton_server import LocalTritonServer, free_port
from runtime.evaluation import averaged_scores
from runtime.video_sampling import sample_indices
from runtime.video_write import write_video
from train.eval_data import EvaluationError, spread_starts
from train.evaluate import evaluate_model
from train.evaluate import main as eval_main

REPO = Path(__file__).resolve().parents[2]
SEED, CLIPS, FRAMES = 3, 24, 4
# A small model that learns (the cheapest configuration of tests/train/test_distributed.py, fewer clips; measured:
# held-out clip accuracy 0.58 on these 24 clips, both classes predicted). Nothing below depends on how well it
# learned: every kind is held to the checkpoint's own numbers on the same clips.
TRAIN = ["--preset", "demo", "--synthetic-classes", "2", "--frames", str(FRAMES), "--frame-size", "16",
         "--hidden-size", "32", "--train-clips", "96", "--val-clips", str(CLIPS), "--epochs", "3", "--batch-size", "16",
         "--lr", "3e-3", "--seed", str(SEED), "--device", "cpu", "--no-progress", "--no-eval-shuffled"]
DATA = dict(data="synthetic", frames=FRAMES, num_clips=CLIPS, seed=SEED, shuffled=False)
CLI_DATA = ["--data", "synthetic", "--frames", str(FRAMES), "--val-clips", str(CLIPS), "--seed", str(SEED)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The run's best.pt, its fp32 export and its int8 export, calibrated on the training split and checked on the
    very clips evaluated below (no agreement floor: what it measured is compared with what train.evaluate measures)."""
    from export.quantize import clips_from_data, quantize_export
    from export.to_onnx import export_onnx
    from train.__main__ import main as train_main

    root = tmp_path_factory.mktemp("evaluate-models")
    assert train_main([*TRAIN, "--out", str(root / "run")]) == 0
    ckpt = root / "run" / "best.pt"
    fp32 = root / "onnx" / "fp32"
    export_onnx(ckpt, fp32, precision="fp32")
    with runtime.load(fp32 / "model.onnx") as r:
        metadata = {"frame_size": list(r.metadata.frame_size), "mean": r.metadata.mean, "std": r.metadata.std,
                    "class_names": r.metadata.class_names, "model_config": r.metadata.model_config}
    calibration, _ = clips_from_data("synthetic", "train", 32, FRAMES, metadata, seed=SEED)
    clips, labels = clips_from_data("synthetic", "test", CLIPS, FRAMES, metadata, seed=SEED)
    int8 = quantize_export(fp32, root / "onnx" / "int8", calibration, clips, verification_labels=labels,
                           min_agreement=0.0)
    return {"root": root, "checkpoint": ckpt, "fp32": fp32, "int8": int8.report_path.parent,
            "int8_report": int8.report}


@pytest.fixture(scope="module")
def served(server_python, trained):
    """The fp32 export as a python-kind model on the bundled tritonserver; its gRPC URL."""
    repo = write_python_repository(trained["fp32"], trained["root"] / "repo", stream=False)
    with LocalTritonServer(repo, python=server_python, startup_timeout=180) as server:
        yield f"{server.grpc_url}/cnn_bilstm"


@pytest.fixture(scope="module")
def baseline(trained):
    """The checkpoint's own evaluation: what every other kind is held to."""
    return evaluate_model(trained["checkpoint"], device="cpu", **DATA)


@pytest.mark.parametrize("kind", ["checkpoint", "fp32", "int8", "served"])
def test_every_model_kind_gives_the_checkpoints_accuracy(kind, trained, baseline, request):
    """Accuracy can move only on clips whose class changes, so |acc - acc_ckpt| <= differing clips / N (exact).
    fp32 changes no class: the export is verified at 1e-4 relative error, which moves these logits by under 1e-6,
    far below the checkpoint's smallest top-2 margin on these clips (2.6e-4 on frames, 1.0e-2 on clips; clip accuracy
    0.58, 6 and 18 clips predicted per class; measured on an AMD EPYC); the python-kind served model runs the same
    fp32 graphs (cnn.onnx per real frame, then bilstm.onnx). int8 changes exactly what its own export gate measured
    on these clips, which its report records."""
    model = request.getfixturevalue("served") if kind == "served" else trained[kind]
    res = evaluate_model(model, reference=trained["checkpoint"], device="auto" if kind == "served" else "cpu", **DATA)
    a = res["agreement"]
    assert res["clips"] == a["clips"] == CLIPS
    assert abs(res["clip_acc"] - baseline["clip_acc"]) <= len(a["differing_clips"]) / CLIPS
    assert a["clip_agreement"] == 1 - len(a["differing_clips"]) / CLIPS and a["finite"]
    if kind == "int8":
        gate = trained["int8_report"]["verification"]
        assert a["clip_agreement"] == gate["clip_agreement"]
        assert a["frame_agreement"] == pytest.approx(gate["frame_agreement"], abs=1e-12)
        assert res["clip_acc"] == gate["clip_accuracy_int8"] and baseline["clip_acc"] == gate["clip_accuracy_fp32"]
        assert res["precision"] == "int8" and a["exported_from_reference"] is True
        return
    assert a["clip_agreement"] == a["frame_agreement"] == 1.0 and a["differing_clips"] == []
    assert a["clip_logits_rel"] <= 1e-4 and a["frame_logits_rel"] <= 1e-4
    assert (res["clip_acc"], res["frame_acc"], res["confusion"]) == (baseline["clip_acc"], baseline["frame_acc"],
                                                                     baseline["confusion"])
    if kind == "checkpoint":
        assert a["max_abs_dlogit"] == 0.0 and res["backend"] == "torch"
    else:
        assert a["exported_from_reference"] is True  # the export, also as served, records the checkpoint sha256


def test_cli_evaluates_an_export_folder_with_a_reference(trained, baseline, tmp_path):
    """As a user runs it: a subprocess, the fp32 export folder against its checkpoint, JSON and PNG written."""
    js, png = tmp_path / "fp32.json", tmp_path / "cm.png"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "train.evaluate", str(trained["fp32"]), *CLI_DATA, "--device", "cpu",
                           "--reference", str(trained["checkpoint"]), "--json", str(js), "--confusion", str(png)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(js.read_text())
    assert res["agreement"]["clip_agreement"] == res["agreement"]["frame_agreement"] == 1.0
    assert res["clip_acc"] == baseline["clip_acc"] and res["confusion"] == baseline["confusion"]
    assert res["shuffled_clip_acc"] is not None and res["confusion_png"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "agreement with" in proc.stdout and "clips whose class differs: 0" in proc.stdout
    assert f"evaluated {CLIPS}/{CLIPS} clips" in proc.stderr  # no terminal: the progress is logged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png", "fp32.json"]  # nothing else, no temporaries


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_other_classes_are_refused_in_one_line_naming_both(trained, tiny_checkpoint, tmp_path, capsys):
    from PIL import Image

    for split in ("train", "test"):  # a frame-folder data set whose 2 classes are not the model's 2
        for name in ("cat", "dog"):
            clip = tmp_path / "clips" / split / name / "c0"
            clip.mkdir(parents=True)
            for t in range(FRAMES):
                Image.fromarray(np.full((16, 16, 3), 40 * t, np.uint8)).save(clip / f"{t}.png")
    folder = ["--data", "folder", "--data-dir", str(tmp_path / "clips"), "--frames", str(FRAMES), "--no-shuffled"]
    assert eval_main([str(trained["fp32"]), *folder]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "has 2 classes ['cat', 'dog']" in line and "has 2 classes ['clockwise', 'counterclockwise']" in line
    assert eval_main([str(tiny_checkpoint), *folder, "--device", "cpu"]) == 2  # 3 classes against 2
    line = _one_line(capsys.readouterr().err)
    assert f"has 3 classes {TINY_CLASSES}" in line and "['cat', 'dog']" in line
    assert eval_main([str(trained["fp32"]), *CLI_DATA, "--reference", str(tiny_checkpoint)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"--reference {tiny_checkpoint} has classes {TINY_CLASSES}" in line and "'counterclockwise'" in line


def test_a_url_that_does_not_answer_is_one_line(capsys):
    url = f"grpc://127.0.0.1:{free_port()}/cnn_bilstm"  # a free port: nothing listens there
    assert eval_main([url, *CLI_DATA, "--timeout", "5"]) == 3
    line = _one_line(capsys.readouterr().err)
    assert url in line and "cannot reach the server" in line


def test_an_engine_that_cannot_run_here_is_one_line(trained, tmp_path, capsys):
    """A TensorRT-RTX engine, built here without a GPU: it runs only on an RTX-class GPU."""
    from conftest import cuda_device_present, skip_unless_engines_build

    skip_unless_engines_build("tensorrt_rtx")
    from export.to_trt import build_engine

    engine = tmp_path / "model.engine"
    build_engine(trained["fp32"] / "model.onnx", engine, profiles=["batch=1:8:8,time=1:4:8"], backend="tensorrt_rtx",
                 compute_capability="8.6")
    rc = eval_main([str(engine), *CLI_DATA])
    line = _one_line(capsys.readouterr().err)
    assert str(engine) in line
    if not cuda_device_present():  # with a GPU of another kind, the runtime refuses the engine as built for another
        assert rc == 3 and "cannot run on this machine" in line and "GPU" in line


def test_several_windows_per_video_average_their_probabilities(trained, tmp_path):
    """--clips-per-video K: K evenly spaced windows per video (13 and 16 frames: starts 0, 5, 9 and 0, 6, 12), their
    probabilities averaged; K = 1 is the centre window, the clip --sampling window takes."""
    for split, count in (("train", 1), ("test", 2)):
        for label, name in enumerate(("clockwise", "counterclockwise")):
            for i in range(count):
                frames = motion_frames(label, 13 + 3 * i, (16, 16), seed=10 * label + i, period=8)
                write_video(tmp_path / split / name / f"{i}.mp4", frames, 25, options={"crf": "18"})
    videos = dict(data="video", data_dir=str(tmp_path), frames=FRAMES, device="cpu")
    k3 = evaluate_model(trained["checkpoint"], clips_per_video=3, reference=trained["int8"], **videos)
    with runtime.load(trained["checkpoint"], device="cpu") as runner:
        expected, labels = [], []
        for label, name in enumerate(("clockwise", "counterclockwise")):
            for i in range(2):
                expected.append(_windows_by_hand(runner, tmp_path / "test" / name / f"{i}.mp4", 3))
                labels.append(label)
    predicted = averaged_scores(expected).argmax(1)
    assert k3["clips"] == 4 and k3["clips_per_video"] == 3 and k3["frame_acc"] is None
    assert k3["windows"] == sum(len(p) for p in expected) == 4 * 3
    assert k3["clip_acc"] == float(np.mean(predicted == labels))
    assert np.trace(k3["confusion"]) == int(np.sum(predicted == labels))
    assert k3["agreement"]["frame_agreement"] is None and 0 <= k3["agreement"]["clip_agreement"] <= 1
    k1 = evaluate_model(trained["checkpoint"], clips_per_video=1, **videos)
    one = evaluate_model(trained["checkpoint"], sampling="window", shuffled=False, **videos)
    assert (k1["clip_acc"], k1["confusion"]) == (one["clip_acc"], one["confusion"])
    with pytest.raises(EvaluationError, match="--clips-per-video takes windows .* not --sampling uniform"):
        evaluate_model(trained["checkpoint"], clips_per_video=2, sampling="uniform", **videos)


def _windows_by_hand(runner, path, k: int) -> np.ndarray:
    """Each window's probabilities, decoded, normalised and run one at a time, without the code under test."""
    from runtime.base import softmax
    from runtime.video import VideoReader

    with VideoReader(path, (16, 16)) as reader:
        frames = reader.read(np.arange(reader.info.num_frames))
    n, probs = len(frames), []
    for s in spread_starts(n, FRAMES, k):
        x = runtime.preprocess_frames(frames[s:s + FRAMES], runner.metadata.mean, runner.metadata.std)
        probs.append(softmax(runner.infer(x)["clip_logits"])[0])
    return np.stack(probs)


def test_spread_starts_are_evenly_spaced_and_the_centre_for_one():
    assert spread_starts(20, 4, 3).tolist() == [0, 8, 16] and spread_starts(20, 4, 4).tolist() == [0, 5, 11, 16]
    assert spread_starts(6, 4, 5).tolist() == [0, 1, 2]  # 3 possible starts: each once
    assert spread_starts(3, 4, 2).tolist() == [0]  # shorter than a window: one short window
    for n in (4, 5, 17, 40):
        assert spread_starts(n, 4, 1)[0] == sample_indices(n, 4, "window")[0]


def test_result_files_are_written_whole_or_not_at_all(trained, tmp_path, capsys, monkeypatch):
    """The disk fills while the JSON is written (after the PNG): the PNG is whole, the JSON absent, no temporary."""
    real = os.replace

    def full_disk_for_json(src, dst):
        if str(dst).endswith(".json"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", full_disk_for_json)
    rc = eval_main([str(trained["checkpoint"]), *CLI_DATA, "--device", "cpu", "--no-shuffled", "--json",
                    str(tmp_path / "r.json"), "--confusion", str(tmp_path / "cm.png")])
    assert rc == 1 and "No space left on device" in _one_line(capsys.readouterr().err)
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
