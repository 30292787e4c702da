"""``python -m runtime``: info (from a runner, or from an engine's report without a GPU) and classify (folders of
frame images and .npy clips, padded into one batch) against the runtime API, and every bad input; each subcommand run
as a user runs it (a new process)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import runtime
from runtime.__main__ import main
from runtime.clips import read_clip

pytest.importorskip("onnxruntime")

from conftest import TINY_CLASSES, TINY_CONFIG, run_cli, skip_unless_engines_build  # noqa: E402

H, W = TINY_CONFIG.frame_size


@pytest.fixture(scope="module")
def onnx_paths(tiny_checkpoint, tmp_path_factory):
    from export.to_onnx import export_onnx

    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("onnx-cli"), precision="fp32").paths


def _write_frames(folder, frames):
    from PIL import Image

    folder.mkdir(parents=True)
    for i, f in enumerate(frames):  # names sort as 0..N-1 only with zero padding: the reader sorts by name
        Image.fromarray(f).save(folder / f"frame_{i:03d}.png")
    return folder


def test_info_describes_what_the_model_accepts(onnx_paths, tiny_checkpoint, capsys):
    assert main(["info", str(onnx_paths["model"])]) == 0
    out = capsys.readouterr().out
    assert "stage        model" in out and f"frames: float32 (batch, time, 3, {H}, {W})" in out
    assert "lengths: int32" in out and f"classes      3: {', '.join(TINY_CLASSES)}" in out
    assert "checkpoint   sha256" in out
    assert main(["info", str(onnx_paths["cnn"])]) == 0
    out = capsys.readouterr().out
    assert "stage        cnn" in out and "outputs      features" in out and "lengths" not in out
    assert main(["info", str(tiny_checkpoint), "--device", "cpu"]) == 0
    assert "backend      torch" in capsys.readouterr().out


def test_info_of_an_engine_comes_from_its_report(onnx_paths, tmp_path, capsys):
    skip_unless_engines_build("tensorrt_rtx")
    from export.to_trt import build_engine

    engine = build_engine(onnx_paths["cnn"], tmp_path / "cnn.engine", profiles=["batch=1:1:2,time=1:4:8"],
                          backend="tensorrt_rtx", compute_capability="8.6").engine_path
    assert main(["info", str(engine)]) == 0  # no GPU here: the report alone says what the engine accepts
    out = capsys.readouterr().out
    assert "built by tensorrt_rtx" in out and "compute capability 8.6" in out
    assert "accepts      batch 1..2, time 1..8" in out and "stage        cnn" in out


def test_classify_folders_and_npy_clips_of_different_lengths(onnx_paths, tmp_path, capsys):
    rng = np.random.default_rng(0)
    long_clip = rng.integers(0, 256, (5, H, W, 3), dtype=np.uint8)
    short_clip = rng.integers(0, 256, (2, H, W, 3), dtype=np.uint8)
    folder = _write_frames(tmp_path / "clip_a", long_clip)
    np.save(tmp_path / "clip_b.npy", short_clip)
    out_json = tmp_path / "preds.json"
    assert main(["classify", str(onnx_paths["model"]), str(folder), str(tmp_path / "clip_b.npy"), "--top-k", "2",
                 "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert f"{folder}: " in printed and "(5 frames)" in printed and "(2 frames)" in printed
    preds = json.loads(out_json.read_text())["clips"]
    np.testing.assert_array_equal(read_clip(folder), long_clip)  # PNG round trip is lossless, order kept
    with runtime.load(onnx_paths["model"]) as r:  # each clip alone must give what the padded batch gave
        for clip, pred in zip((long_clip, short_clip), preds, strict=True):
            x = runtime.preprocess_frames(clip, r.metadata.mean, r.metadata.std, r.input_spec.frame_size)
            alone = r.classify(x, top_k=2)
            assert pred["labels"] == alone.labels[0] and pred["frames"] == len(clip)
            np.testing.assert_allclose(pred["probs"], alone.probs[0], atol=1e-5)
            assert pred["frame_labels"] == [labels[0] for labels in alone.frame_labels[0]]


# --- each subcommand as a user runs it: `python -m runtime ...` in a new process --------------------------------------


def test_python_m_runtime_info_as_a_user_runs_it(onnx_paths, tmp_path):
    res = run_cli("runtime", "info", onnx_paths["model"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "stage        model" in res.stdout and f"classes      3: {', '.join(TINY_CLASSES)}" in res.stdout


def test_python_m_runtime_classify_as_a_user_runs_it(onnx_paths, tmp_path):
    clip = np.random.default_rng(3).integers(0, 256, (5, H, W, 3), dtype=np.uint8)
    np.save(tmp_path / "clip.npy", clip)
    res = run_cli("runtime", "classify", onnx_paths["model"], "clip.npy", "--top-k", "2", "--json", "preds.json",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    pred = json.loads((tmp_path / "preds.json").read_text())["clips"][0]
    with runtime.load(onnx_paths["model"]) as r:  # what the API gives for the same clip, in this process
        alone = r.classify(runtime.preprocess_frames(clip, r.metadata.mean, r.metadata.std), top_k=2)
    assert pred["labels"] == alone.labels[0] and pred["frames"] == 5
    np.testing.assert_allclose(pred["probs"], alone.probs[0], atol=1e-5)
    assert f"clip.npy: {alone.labels[0][0]} " in res.stdout and "wrote preds.json" in res.stdout


def test_python_m_runtime_stream_as_a_user_runs_it(onnx_paths, tmp_path):
    pytest.importorskip("av")
    from conftest import motion_frames

    from runtime.video import VideoReader
    from runtime.video_write import write_video

    write_video(tmp_path / "clip.mp4", motion_frames(1, 10, (24, 32)), 25)
    res = run_cli("runtime", "stream", onnx_paths["model"].parent, "clip.mp4", "--stride", "2", "--window", "3",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert len(lines) == 5 + 1 and lines[-1].startswith("5 frames pushed (stride 2, window 3)"), res.stdout
    with VideoReader(tmp_path / "clip.mp4", (H, W)) as reader, \
            runtime.StreamingClassifier(onnx_paths["model"].parent, window=3) as stream:
        frames = [f for _, f in reader.iter_frames()]
        labels = [stream.push(frames[i]).clip_label for i in range(0, 10, 2)]
    assert [line.split("window ")[1].split()[0] for line in lines[:5]] == labels


def test_python_m_runtime_ping_as_a_user_runs_it(triton_server, tmp_path):
    res = run_cli("runtime", "ping", f"{triton_server.grpc_url}/cnn_bilstm", "--timeout", "30", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("\n") == 1 and "answered" in res.stdout
    dead = run_cli("runtime", "ping", f"{triton_server.grpc_url}/nope", "--timeout", "5", cwd=tmp_path)
    assert dead.returncode == 1 and dead.stdout == ""
    assert dead.stderr.count("\n") == 1 and dead.stderr.startswith("error: "), dead.stderr


def test_bad_clips_are_refused_with_what_is_valid(onnx_paths, tmp_path, capsys):
    model = str(onnx_paths["model"])
    rng = np.random.default_rng(1)

    def run(*clips, extra=()):
        code = main(["classify", model, *map(str, clips), *extra])
        return code, capsys.readouterr().err

    code, err = run(tmp_path / "missing")
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, err = run(tmp_path / "empty")
    assert code == 2 and "holds no frame images" in err
    mixed = _write_frames(tmp_path / "mixed", [rng.integers(0, 256, (H, W, 3), dtype=np.uint8)])
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (H + 2, W, 3), dtype=np.uint8)).save(mixed / "frame_999.png")
    code, err = run(mixed)
    assert code == 2 and "must share one size" in err
    big = _write_frames(tmp_path / "big", rng.integers(0, 256, (3, H * 2, W * 2, 3), dtype=np.uint8))
    code, err = run(big)
    assert code == 2 and f"frames are {H * 2}x{W * 2}" in err and "pass --resize" in err
    assert run(big, extra=["--resize"])[0] == 0
    np.save(tmp_path / "float.npy", rng.random((2, H, W, 3)).astype(np.float32))
    code, err = run(tmp_path / "float.npy")
    assert code == 2 and "must hold uint8 (T, H, W, 3)" in err
    (tmp_path / "notes.txt").write_text("hello")
    code, err = run(tmp_path / "notes.txt")
    assert code == 2 and "neither a folder of frame images nor a .npy" in err
    assert main(["classify", model, str(big), "--resize", "--top-k", "9"]) == 2
    assert "top_k must be an integer in 1..3" in capsys.readouterr().err
    assert main(["classify", str(onnx_paths["bilstm"]), str(big)]) == 2
    assert "is the bilstm stage" in capsys.readouterr().err


def _digest(blob: bytes) -> dict:
    import hashlib

    return {"engine_bytes": len(blob), "engine_sha256": hashlib.sha256(blob).hexdigest()}


def test_engine_report_without_metadata_or_profiles_is_a_clear_error(tmp_path, capsys):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not really a plan")
    metadata = {"graph": "model", "class_names": TINY_CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3,
                "frame_size": [H, W]}
    digest = _digest(engine.read_bytes())  # the engine matches its report: what is missing is the rest
    (tmp_path / "m.engine.json").write_text(json.dumps({"metadata": {"graph": "model"}, **digest}))
    assert main(["info", str(engine)]) == 2
    assert "metadata lacks keys ['class_names', 'mean', 'std']" in capsys.readouterr().err
    for report, missing in (({"metadata": metadata}, "'profiles'"),
                            ({"metadata": metadata, "profiles": [{"axes": {"batch": [1, 2]}}]}, "")):
        (tmp_path / "m.engine.json").write_text(json.dumps({**report, **digest}))
        assert main(["info", str(engine)]) == 2
        err = capsys.readouterr().err
        assert "lacks the metadata or profiles python -m export.to_trt writes" in err and missing in err
    (tmp_path / "m.engine.json").unlink()
    assert main(["info", str(engine)]) == 2
    assert "has no build report at m.engine.json" in capsys.readouterr().err


def _copied_report(tmp_path):
    """A complete engine report (size and sha256 of a real 64-byte 'engine') copied beside another file."""
    metadata = {"graph": "cnn", "class_names": TINY_CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3,
                "frame_size": [H, W]}
    report = {"engine": "m.engine", **_digest(bytes(range(64))), "metadata": metadata,
              "profiles": [{"axes": {"batch": [1, 1, 2], "time": [1, 4, 8]}}],
              "trt": {"flavour": "tensorrt", "version": "10.13.0.35"}, "target": {"compute_capability": "unknown"}}
    (tmp_path / "m.engine.json").write_text(json.dumps(report))
    return tmp_path / "m.engine"


def test_info_checks_the_engine_against_its_report_before_describing_it(tmp_path, capsys):
    engine = _copied_report(tmp_path)
    engine.write_text("hello\n")  # a 6-byte text file beside a copied report
    assert main(["info", str(engine)]) == 2
    err = capsys.readouterr().err
    assert "m.engine is 6 bytes but its report says 64" in err and "python -m export.to_trt" in err
    assert err.count("\n") == 1
    engine.write_bytes(bytes(range(63)) + b"X")  # right size, other bytes
    assert main(["info", str(engine)]) == 2
    assert "does not match the sha256 in its report" in capsys.readouterr().err
    engine.write_bytes(bytes(range(64)))  # the engine the report describes: described
    assert main(["info", str(engine)]) == 0
    out = capsys.readouterr().out
    assert "stage        cnn" in out and "accepts      batch 1..2, time 1..8" in out
    engine.unlink()
    assert main(["info", str(engine)]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"frame_size": [-5, 0]}, "metadata frame_size must be (H, W), two integers >= 1, got [-5, 0]"),
    ({"class_names": []}, "a classifier needs at least 2 classes; got 0 (class_names: [])"),
    ({"class_names": ["x"]}, "a classifier needs at least 2 classes; got 1 (class_names: ['x'])"),
    ({"std": [0.25, 0.0, 0.25]}, "metadata std must be > 0 for each channel (frames are divided by it), got "
                                 "[0.25, 0.0, 0.25]"),
    ({"mean": [0.5, 0.5]}, "metadata mean must be 3 finite numbers (R, G, B), got [0.5, 0.5]"),
])
def test_info_refuses_metadata_no_model_has(tmp_path, change, message):
    """As a user runs it: an engine report whose metadata no model could have is one error line (exit 2), not a
    description of a -5x0 model or of one with no classes."""
    import subprocess
    import sys

    engine = _copied_report(tmp_path)
    engine.write_bytes(bytes(range(64)))
    report = json.loads((tmp_path / "m.engine.json").read_text())
    report["metadata"].update(change)
    (tmp_path / "m.engine.json").write_text(json.dumps(report))
    done = subprocess.run([sys.executable, "-m", "runtime", "info", str(engine)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: {tmp_path / 'm.engine.json'}: {message}\n"


def test_metadata_checks_name_what_was_given_and_what_is_valid():
    from runtime.spec import ModelMetadata

    good = {"graph": "model", "class_names": TINY_CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3, "frame_size": [H, W]}
    assert ModelMetadata.from_dict(good).frame_size == (H, W)
    for change, message in [({"frame_size": [H, 1.5]}, r"two integers >= 1, got \[16, 1\.5\]"),
                            ({"frame_size": None}, "two integers >= 1, got None"),
                            ({"class_names": "ab"}, "class_names must be a list of non-empty names, got 'ab'"),
                            ({"class_names": ["a", ""]}, "class_names must be a list of non-empty names"),
                            ({"mean": [0.5, float("nan"), 0.5]}, "mean must be 3 finite numbers")]:
        with pytest.raises(runtime.RuntimeInputError, match=message):
            ModelMetadata.from_dict({**good, **change}, "m.onnx")


def test_one_class_is_named_as_such_in_a_config_and_a_checkpoint(tmp_path, tiny_checkpoint):
    import torch

    from runtime.checkpoint import CheckpointError, load_checkpoint
    from runtime.model import ModelConfig

    with pytest.raises(ValueError, match="a classifier needs at least 2 classes: num_classes must be >= 2, got 1"):
        ModelConfig(num_classes=1)
    d = torch.load(tiny_checkpoint, weights_only=False)
    d["class_names"] = ["x"]
    d["config"] = {**d["config"], "num_classes": 1}
    torch.save(d, tmp_path / "one.pt")
    with pytest.raises(CheckpointError, match=r"one\.pt: a classifier needs at least 2 classes; got 1 "
                                              r"\(class_names: \['x'\]\)"):
        load_checkpoint(tmp_path / "one.pt")


def test_a_damaged_engine_without_a_gpu_is_reported_as_damaged(tmp_path, capsys, monkeypatch):
    # No GPU and no TensorRT here (simulated, whatever this machine has): the size/sha256 check comes first.
    from runtime import cuda_mem, trt_compat

    def no_trt(*args, **kwargs):
        raise trt_compat.TrtNotAvailableError("no TensorRT installed")

    class NoCuda:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("CUDA driver: no CUDA-capable device is detected")

    monkeypatch.setattr(trt_compat, "import_trt", no_trt)
    monkeypatch.setattr(cuda_mem, "CudaApi", NoCuda)
    engine = _copied_report(tmp_path)
    engine.write_text("hello\n")
    with pytest.raises(runtime.RuntimeInputError, match="is 6 bytes but its report says 64"):
        runtime.load(engine)
    assert main(["info", str(engine), "--device", "cuda"]) == 2  # not "cannot run on this machine" (3)
    assert "is 6 bytes but its report says 64" in capsys.readouterr().err
