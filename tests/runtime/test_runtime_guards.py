"""Runtime and benchmark guards: nothing lost, nothing silent.

- NaN/Inf frames: refused by default at a clip's real steps by every backend that runs here (ONNX Runtime fp32 and
  int8, PyTorch eager and fast path, the TensorRT runner over its fakes), by runner.classify and by streaming; NaN only
  in the padding is accepted (and changes nothing); check_finite=False lets it through.
- API arguments that must be RuntimeInputError: runtime.load(None), check_finite="yes", a huge streaming window.
- ``python -m runtime classify``: --json guarded before any work (suffix, folder, permissions, existing file without
  --force), a damaged PNG, an .npz named .npy, a NaN clip; ``info | head`` without a BrokenPipeError traceback.
- benchmarks: quick --device cuda without a GPU (exit 3), an --onnx-dir of another checkpoint, paired/report --out
  guarded before any work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CLASSES, TINY_CONFIG, TINY_MEAN, TINY_STD, deny_writing  # noqa: E402

import runtime
from runtime.__main__ import main as runtime_main
from runtime.errors import RuntimeInputError
from runtime.streaming import StreamingClassifier

pytest.importorskip("onnxruntime")

H, W = TINY_CONFIG.frame_size
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fp32_dir(tiny_checkpoint, tmp_path_factory):
    from export.to_onnx import export_onnx

    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("guards-fp32") / "fp32", precision="fp32").paths[
        "model"].parent


@pytest.fixture(scope="module")
def int8_dir(fp32_dir, tmp_path_factory):
    from export.quantize import quantize_export

    rng = np.random.default_rng(3)
    clips = rng.standard_normal((24, 4, 3, H, W)).astype(np.float32)
    out = tmp_path_factory.mktemp("guards-int8") / "int8"
    return quantize_export(fp32_dir, out, clips[:16], clips[16:], min_agreement=0.0,
                           data_description="N(0,1) test clips").paths["model"].parent


def _frames(b, t, seed=0):
    return np.random.default_rng(seed).standard_normal((b, t, 3, H, W)).astype(np.float32)


# --- NaN/Inf frames, one behaviour for every backend ------------------------------------------------------------------

RUNNERS = ["ort-fp32", "ort-int8", "torch-eager", "torch-fast"]


def _open(which, request):
    if which.startswith("ort"):
        folder = request.getfixturevalue("fp32_dir" if which == "ort-fp32" else "int8_dir")
        return runtime.load(folder / "model.onnx", device="cpu")
    ckpt = request.getfixturevalue("tiny_checkpoint")
    return runtime.load(ckpt, device="cpu", fast=which == "torch-fast")


@pytest.mark.parametrize("which", RUNNERS)
def test_nan_clip_is_refused_by_default_naming_clip_and_step(which, request):
    with _open(which, request) as r:
        assert r.check_finite is True
        nan = np.full((1, 4, 3, H, W), np.nan, np.float32)
        with pytest.raises(RuntimeInputError, match="frames of clip 0 hold NaN or Inf at step 0, its first such real"):
            r.infer(nan)
        x = _frames(3, 5)
        x[1, 2, 0, 3, 3] = np.inf  # clip 1 is bad from step 2; clip 2 from step 4, inside its length
        x[2, 4] = -np.inf
        with pytest.raises(RuntimeInputError, match=r"clip 1 hold NaN or Inf at step 2.*\(1 more of the batch's 3"):
            r.infer(x, np.array([5, 5, 5]))
        with pytest.raises(RuntimeInputError, match="clip 1 .* at step 2"):  # torch tensors too, and classify
            r.classify(torch.from_numpy(x))
        with pytest.raises(RuntimeInputError, match="clip 0 hold NaN"):
            r.infer(torch.from_numpy(nan).requires_grad_())


@pytest.mark.parametrize("which", RUNNERS)
def test_nan_only_in_the_padding_is_accepted_and_changes_nothing(which, request):
    with _open(which, request) as r:
        x = _frames(2, 6, seed=1)
        lengths = np.array([6, 3])
        clean = r.infer(x, lengths)
        poisoned = x.copy()
        poisoned[1, 3:] = np.nan  # beyond lengths[1] = 3: padding may hold anything
        out = r.infer(poisoned, lengths)
        np.testing.assert_allclose(out["clip_logits"], clean["clip_logits"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["frame_logits"][1, :3], clean["frame_logits"][1, :3], rtol=1e-5, atol=1e-6)
        poisoned[1, 2, 0, 0, 0] = np.nan  # the last real step of clip 1: refused
        with pytest.raises(RuntimeInputError, match="clip 1 hold NaN or Inf at step 2"):
            r.infer(poisoned, lengths)


@pytest.mark.parametrize("which", RUNNERS)
def test_check_finite_false_lets_it_through(which, request, tiny_checkpoint, fp32_dir):
    nan = np.full((1, 2, 3, H, W), np.nan, np.float32)
    with _open(which, request) as r:
        assert r.infer(nan, check_finite=False)["clip_logits"].shape == (1, 3)  # per call
        assert r.classify(nan, check_finite=False).probs.shape == (1, 1)
    path = fp32_dir / "model.onnx" if which.startswith("ort") else tiny_checkpoint
    with runtime.load(path, device="cpu", check_finite=False) as unchecked:  # runner option
        assert unchecked.check_finite is False
        assert unchecked.infer(nan)["clip_logits"].shape == (1, 3)
        with pytest.raises(RuntimeInputError, match="clip 0 hold NaN"):  # a call may still ask for the check
            unchecked.infer(nan, check_finite=True)


def test_stage_runners_check_their_own_input(fp32_dir, tiny_checkpoint):
    features = np.random.default_rng(0).uniform(0.1, 1, (2, 3, TINY_CONFIG.feature_dim)).astype(np.float32)
    features[0, 2, 5] = np.nan
    for path in (fp32_dir / "bilstm.onnx", tiny_checkpoint):
        with runtime.load(path, device="cpu", **({} if path.suffix == ".onnx" else {"stage": "bilstm"})) as r:
            with pytest.raises(RuntimeInputError, match="features of clip 0 hold NaN or Inf at step 2"):
                r.infer(features)
            assert r.infer(features, np.array([2, 3]))["clip_logits"].shape == (2, 3)  # step 2 of clip 0 is padding
    with runtime.load(fp32_dir / "cnn.onnx") as cnn:  # no lengths: every step is real
        x = _frames(1, 3)
        x[0, 1, 1] = np.nan
        with pytest.raises(RuntimeInputError, match="frames of clip 0 hold NaN or Inf at step 1"):
            cnn.infer(x)


def test_tensorrt_runner_refuses_nan_before_the_engine_runs(tmp_path):
    from test_runtime_trt_glue import Fakes, write_engine
    from test_runtime_trt_glue import H as TRT_H
    from test_runtime_trt_glue import W as TRT_W
    from test_runtime_trt_glue import load as trt_load

    fakes = Fakes()
    engine = write_engine(tmp_path, fakes)
    x = np.random.default_rng(0).standard_normal((2, 3, 3, TRT_H, TRT_W)).astype(np.float32)
    with trt_load(engine, fakes) as r:
        x[1, 1, 0, 0, 0] = np.nan
        with pytest.raises(RuntimeInputError, match="clip 1 hold NaN or Inf at step 1"):
            r.infer(x)
        assert r.infer(x, np.array([3, 1]))["clip_logits"].shape[0] == 2  # NaN only in clip 1's padding
        assert r.infer(x, check_finite=False)["clip_logits"].shape[0] == 2
    with pytest.raises(RuntimeInputError, match="check_finite must be True or False, got 'yes'"):
        trt_load(engine, fakes, check_finite="yes")


def test_streaming_refuses_a_nan_frame_and_keeps_its_window(tiny_checkpoint, fp32_dir):
    frames = _frames(1, 3, seed=4)[0]
    for source in (tiny_checkpoint, fp32_dir):
        with StreamingClassifier(source, window=4, device="cpu") as stream, \
                StreamingClassifier(source, window=4, device="cpu") as reference:
            stream.push(frames[0])
            reference.push(frames[0])
            for bad in (np.full((3, H, W), np.nan, np.float32), torch.full((3, H, W), float("inf"))):
                with pytest.raises(RuntimeInputError, match=r"the pushed frame \(frame 2 of the stream\) holds NaN"):
                    stream.push(bad)
            assert stream.frames_seen == 1  # nothing was added: the next result equals a stream that never saw it
            got, want = stream.push(frames[1]), reference.push(frames[1])
            np.testing.assert_allclose(got.clip_logits, want.clip_logits, rtol=1e-6, atol=1e-7)
    with StreamingClassifier(tiny_checkpoint, window=4, device="cpu", check_finite=False) as unchecked:
        assert unchecked.push(np.full((3, H, W), np.nan, np.float32)).frames_seen == 1


# --- API arguments that must be RuntimeInputError ---------------------------------------------------------------------


def test_load_takes_a_path_only():
    for bad in (None, 3, ["model.onnx"]):
        want = r"path must be a file path \(str or os.PathLike\) of a \.engine/\.plan, \.onnx or \.pt/\.pth file, got "
        with pytest.raises(RuntimeInputError, match=want + type(bad).__name__):
            runtime.load(bad)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_check_finite_must_be_a_bool(value, fp32_dir, tiny_checkpoint):
    for path in (fp32_dir / "model.onnx", tiny_checkpoint):
        with pytest.raises(RuntimeInputError, match=f"check_finite must be True or False, got {value!r}"):
            runtime.load(path, device="cpu", check_finite=value)
    with runtime.load(fp32_dir / "model.onnx") as r:
        if value is None:  # per call, None means the runner's setting
            assert r.infer(_frames(1, 1), check_finite=None)["clip_logits"].shape == (1, 3)
        else:
            with pytest.raises(RuntimeInputError, match=f"check_finite must be True, False or None, got {value!r}"):
                r.infer(_frames(1, 1), check_finite=value)
    with pytest.raises(RuntimeInputError, match=f"check_finite must be True or False, got {value!r}"):
        StreamingClassifier(tiny_checkpoint, check_finite=value)


def test_streaming_window_is_bounded_before_anything_loads(tiny_checkpoint, tmp_path):
    from runtime.streaming import MAX_WINDOW

    for window in (10**9, MAX_WINDOW + 1):  # refused before the path is even looked at
        with pytest.raises(RuntimeInputError, match=rf"window must be an integer in 1\.\.{MAX_WINDOW} .*got {window}"):
            StreamingClassifier(tmp_path / "missing", window=window)
    with StreamingClassifier(tiny_checkpoint, window=MAX_WINDOW, device="cpu") as stream:  # the maximum itself works
        assert stream.push(np.zeros((3, H, W), np.float32)).window_frames == 1
    with pytest.raises(RuntimeInputError, match="resize must be True or False, got 'yes'"):
        StreamingClassifier(tiny_checkpoint, resize="yes")


# --- python -m runtime classify / info --------------------------------------------------------------------------------


@pytest.fixture
def clip_npy(tmp_path):
    path = tmp_path / "clip.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (3, H, W, 3), dtype=np.uint8))
    return path


def _classify(model, *args):
    return runtime_main(["classify", str(model), *map(str, args)])


def test_classify_json_is_checked_before_any_work(fp32_dir, tiny_checkpoint, clip_npy, tmp_path, capsys):
    model = fp32_dir / "model.onnx"
    precious = tmp_path / "precious.pt"
    precious.write_bytes(tiny_checkpoint.read_bytes())
    before = precious.read_bytes()
    # A checkpoint as --json, even with --force: refused by its suffix; the missing model and clip are never reached.
    for extra in ((), ("--force",)):
        assert _classify(tmp_path / "missing.onnx", tmp_path / "missing-clip", "--json", precious, *extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --json") and "must end in .json (got '.pt')" in err and err.count("\n") == 1
    assert precious.read_bytes() == before
    other = tmp_path / "other.json"
    other.write_text('{"keep": true}')
    assert _classify(tmp_path / "missing.onnx", clip_npy, "--json", other) == 2
    assert "already exists; pass --force to replace it" in capsys.readouterr().err
    assert json.loads(other.read_text()) == {"keep": True}
    assert _classify(model, clip_npy, "--json", other, "--force") == 0
    assert json.loads(other.read_text())["clips"][0]["frames"] == 3
    (tmp_path / "folder.json").mkdir()
    assert _classify(tmp_path / "missing.onnx", clip_npy, "--json", tmp_path / "folder.json") == 2
    assert "is a folder; give a file path ending in .json" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert _classify(tmp_path / "missing.onnx", clip_npy, "--json", afile / "preds.json") == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_classify_json_in_a_read_only_folder_is_one_line(fp32_dir, clip_npy, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    real_access = os.access
    # Root may write anywhere, so a chmod alone proves nothing there: deny writing in that folder as a user sees it.
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == locked and mode & os.W_OK
                        else real_access(p, mode, **k))
    try:
        assert _classify(tmp_path / "missing.onnx", clip_npy, "--json", locked / "preds.json") == 2
        err = capsys.readouterr().err
        assert err == f"error: --json {locked / 'preds.json'}: cannot write in {locked} (permission denied)\n"
    finally:
        locked.chmod(0o700)


def test_classify_json_write_failure_after_the_work_is_one_line(fp32_dir, clip_npy, tmp_path, capsys, monkeypatch):
    import runtime.__main__ as cli

    def fail(path, obj):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cli, "atomic_write_json", fail)
    assert _classify(fp32_dir / "model.onnx", clip_npy, "--json", tmp_path / "p.json") == 2
    assert capsys.readouterr().err.startswith(f"error: cannot write --json {tmp_path / 'p.json'}: ")


def test_classify_refuses_damaged_and_foreign_clip_files(fp32_dir, tmp_path, capsys):
    from PIL import Image

    model = fp32_dir / "model.onnx"
    rng = np.random.default_rng(5)
    good = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "text": b"this is not an image\n",
               "flipped": data[:40] + bytes([data[40] ^ 0xFF]) + data[41:], "empty": b""}
    for name, blob in damaged.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "0.png").write_bytes(data)
        (folder / "1.png").write_bytes(blob)
        assert _classify(model, folder) == 2, name
        err = capsys.readouterr().err
        assert err.startswith(f"error: cannot read image {folder / '1.png'}: ") and err.count("\n") == 1, (name, err)
    frames = rng.integers(0, 256, (2, H, W, 3), dtype=np.uint8)
    npz = tmp_path / "clip.npy"
    with open(npz, "wb") as f:
        np.savez(f, frames=frames)  # an .npz archive under a .npy name
    assert _classify(model, npz) == 2
    assert "is a .npz archive (a zip of arrays), not a .npy array" in capsys.readouterr().err
    (tmp_path / "empty.npy").write_bytes(b"")
    assert _classify(model, tmp_path / "empty.npy") == 2
    assert "is not a readable .npy array file: EOFError" in capsys.readouterr().err
    nan = np.full((2, H, W, 3), np.nan, np.float32)  # the CLI reads uint8 clips only, so NaN never reaches a runner
    np.save(tmp_path / "nan.npy", nan)
    assert _classify(model, tmp_path / "nan.npy") == 2
    assert "must hold uint8 (T, H, W, 3) RGB frames" in capsys.readouterr().err


def test_info_piped_into_head_ends_quietly(fp32_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "info", str(fp32_dir / "model.onnx")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    proc.stdout.close()  # the reader is gone before anything is printed, as `| head -1` can be
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err


# --- benchmarks: quick, paired, report --------------------------------------------------------------------------------


def test_quick_device_errors_are_one_line(tiny_checkpoint, capsys):
    from benchmarks import quick

    assert quick.main([str(tiny_checkpoint), "--device", "tpu"]) == 2
    assert capsys.readouterr().err.startswith("error: device must be 'cpu', 'cuda', 'cuda:N'")
    if torch.cuda.is_available():
        return  # --device cuda is valid here; the no-GPU case below runs on CPU-only machines
    assert quick.main([str(tiny_checkpoint), "--device", "cuda"]) == 3
    captured = capsys.readouterr()
    assert captured.err == "error: --device cuda, but torch sees no CUDA GPU here; use --device cpu\n"
    assert captured.out == ""


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    """A checkpoint of another model (other weights, 24x24 frames) than tiny_checkpoint."""
    from dataclasses import replace

    from runtime.checkpoint import save_checkpoint
    from runtime.model import build_random_model

    model = build_random_model(replace(TINY_CONFIG, frame_size=(24, 24)), seed=9)
    return save_checkpoint(tmp_path_factory.mktemp("other") / "other.pt", model, class_names=TINY_CLASSES,
                           mean=TINY_MEAN, std=TINY_STD)


def test_onnx_dir_of_another_checkpoint_is_named_as_such(tiny_checkpoint, other_checkpoint, fp32_dir, tmp_path,
                                                         capsys):
    from benchmarks import paired, quick

    assert quick.main([str(other_checkpoint), "--onnx-dir", str(fp32_dir), "--device", "cpu", "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert f"error: {fp32_dir} was exported from another checkpoint: its export_report.json records" in err
    assert "frames are" not in err and err.count("\n") == 1
    assert paired.main(["--checkpoint", str(other_checkpoint), "--onnx-dir", str(fp32_dir), "--device", "cpu",
                        "--contenders", "ort-fp32", "--rounds", "1"]) == 1
    assert "was exported from another checkpoint" in capsys.readouterr().err
    # Without export_report.json the graph's own metadata says which checkpoint it came from.
    from benchmarks.artifacts import export_checkpoint_sha256
    from benchmarks.context import BenchContext
    from runtime._io import sha256_file

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.onnx").write_bytes((fp32_dir / "model.onnx").read_bytes())
    assert export_checkpoint_sha256(bare) == (sha256_file(tiny_checkpoint), "model.onnx metadata")
    with pytest.raises(ValueError, match="its model.onnx metadata records checkpoint sha256"):
        BenchContext(other_checkpoint, "cpu", tmp_path, onnx_dir=bare)


def test_paired_out_is_checked_before_anything_runs(tmp_path, capsys, monkeypatch):
    from benchmarks import paired

    def run(out, *extra):
        code = paired.main(["--device", "cpu", "--out", str(out), "--prefix", "p", *extra])
        return code, capsys.readouterr().err

    afile = tmp_path / "afile"
    afile.write_text("x")
    code, err = run(afile)
    assert code == 2 and err == f"error: --out {afile} is a file, not a folder\n"
    out = tmp_path / "out"
    (out / "p.json").mkdir(parents=True)
    code, err = run(out)
    assert code == 2 and "output " + str(out / "p.json") + " is a folder" in err
    (out / "p.json").rmdir()
    (out / "p.md").write_text("my notes\n")
    code, err = run(out)
    assert code == 2 and f"{out / 'p.md'} already exists; pass --force to replace it" in err
    assert (out / "p.md").read_text() == "my notes\n"
    code, err = run(out, "--prefix", "a/b")
    assert code == 2 and "--prefix must be a plain file name stem" in err
    deny_writing(monkeypatch, out)
    code, err = run(out)
    assert code == 2 and err == f"error: --out {out}: cannot write in it (permission denied)\n"


def test_own_outputs_are_recognised_by_content(tmp_path):
    from benchmarks.outputs import check_outputs, is_own_output
    from runtime._io import OutputPathError

    plt = pytest.importorskip("matplotlib.pyplot")
    from benchmarks.outputs import save_figure

    save_figure(plt.figure(), tmp_path / "p.png")
    (tmp_path / "p.json").write_text(json.dumps({"environment": {}, "result": {}}))
    (tmp_path / "p.md").write_text("# Paired latency: model, B=1, T=16\n")
    assert all(is_own_output(tmp_path / f"p{s}") for s in (".png", ".json", ".md"))
    check_outputs(tmp_path, ["p.png", "p.json", "p.md"])  # a rerun may replace them
    (tmp_path / "q.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))  # a PNG matplotlib did not write
    (tmp_path / "q.json").write_text('{"model": "x"}')
    for name in ("q.png", "q.json"):
        assert not is_own_output(tmp_path / name)
        with pytest.raises(OutputPathError, match="already exists; pass --force"):
            check_outputs(tmp_path, [name])
        check_outputs(tmp_path, [name], force=True)


# --- the same classes of guard elsewhere in the runtime and benchmarks ----------------------------------------------


def test_classify_top_k_and_stale_temporaries(fp32_dir, clip_npy, tmp_path, capsys):
    assert _classify(tmp_path / "missing.onnx", clip_npy, "--top-k", "0") == 2  # before the model is looked at
    assert capsys.readouterr().err == "error: --top-k must be >= 1, got 0\n"
    stale = tmp_path / ".preds.json.99999999.x1y2.tmp"  # a killed run's temporary (no such pid)
    stale.write_text("{")
    live = tmp_path / f".preds.json.{os.getpid()}.x1y2.tmp"  # a live writer's: kept
    live.write_text("{")
    assert _classify(fp32_dir / "model.onnx", clip_npy, "--json", tmp_path / "preds.json") == 0
    assert not stale.exists() and live.exists()


def test_onnx_runtime_openvino_precision_empty_is_refused(fp32_dir):
    with pytest.raises(RuntimeInputError, match=r"openvino_precision must be one of \('f32', 'bf16', 'f16'\), got ''"):
        runtime.load(fp32_dir / "model.onnx", providers=["OpenVINOExecutionProvider"], openvino_precision="")


def test_benchmark_counts_of_zero_are_errors_not_defaults(tiny_checkpoint, tmp_path, capsys):
    from benchmarks import paired
    from benchmarks.context import BenchContext
    from benchmarks.quick import quick_look

    for option, value in (("ort_threads", 0), ("pool_size", 0), ("window", 0)):
        with pytest.raises(ValueError, match=f"{option} must be an integer >= 1"):
            BenchContext(tiny_checkpoint, "cpu", tmp_path, **{option: value})
    for option in ("rounds", "batch", "time_steps"):
        with pytest.raises(ValueError, match=f"{option} must be an integer >= 1"):
            quick_look(tiny_checkpoint, device="cpu", **{option: 0})
    assert paired.main(["--device", "cpu", "--contenders", ","]) == 2
    assert "--contenders names none" in capsys.readouterr().err
    assert paired.main(["--device", "cpu", "--out", str(tmp_path), "--prefix", ""]) == 2
    assert "--prefix must be a plain file name stem" in capsys.readouterr().err


def test_bench_suite_options_of_zero_are_usage_errors(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks/test_latency.py",
                           "--bench-smoke", "--benchmark-disable", "--bench-budget", "0", "-x",
                           "-k", "model and eager-fp32", "--basetemp", str(tmp_path / "t")],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode != 0 and "--bench-budget must be > 0, got 0.0" in proc.stdout + proc.stderr


def test_op_profile_out_is_checked_before_profiling(tmp_path, capsys):
    from benchmarks import op_profile

    afile = tmp_path / "afile"
    afile.write_text("x")
    assert op_profile.main(["--out", str(afile)]) == 2  # the reference model is never exported or profiled
    assert capsys.readouterr().err == f"error: --out {afile} is a file, not a folder\n"
    out = tmp_path / "out"
    out.mkdir()
    (out / "p.json").write_text('{"mine": 1}')
    assert op_profile.main(["--out", str(out), "--prefix", "p"]) == 2
    assert "already exists; pass --force to replace it" in capsys.readouterr().err
    assert json.loads((out / "p.json").read_text()) == {"mine": 1}


@pytest.mark.gpu
def test_cuda_tensors_are_checked_on_their_device(tiny_checkpoint):
    """The CUDA branch: one sum on the device; the exact per-step scan only when that sum is not finite."""
    from runtime.inputs import _non_finite_steps

    huge = torch.full((1, 2, 3, H, W), 3e38, device="cuda")  # finite, though its float32 sum overflows to Inf
    assert _non_finite_steps(huge, None, True) is None
    x = torch.randn(2, 4, 3, H, W, device="cuda")
    x[1, 2, 0, 0, 0] = float("nan")
    with runtime.load(tiny_checkpoint, device="cuda") as r:  # the fast path
        with pytest.raises(RuntimeInputError, match="clip 1 hold NaN or Inf at step 2"):
            r.infer(x)
        assert torch.isfinite(r.infer(x, torch.tensor([4, 2]))["clip_logits"]).all()  # NaN only in the padding
    with StreamingClassifier(tiny_checkpoint, window=4, device="cuda") as stream:
        with pytest.raises(RuntimeInputError, match="the pushed frame"):
            stream.push(x[1, 2])
        assert stream.push(x[0, 0]).frames_seen == 1
