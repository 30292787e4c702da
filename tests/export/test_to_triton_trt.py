"""python -m export.to_triton from a real TensorRT-RTX engine (built here by the real builder, no GPU needed): the
tensorrt kind, max_batch_size and time buckets checked against the engine's optimization profiles, and --check on
configs edited beyond them."""

from __future__ import annotations

import re
import shutil

import pytest
from conftest import skip_unless_engines_build

pytestmark = pytest.mark.trt
pytest.importorskip("onnx")
pytest.importorskip("tritonclient.grpc")
skip_unless_engines_build("tensorrt_rtx")

from export.to_onnx import export_onnx  # noqa: E402
from export.to_triton import main  # noqa: E402
from export.to_trt import build_engine  # noqa: E402
from export.triton_check import check_repository  # noqa: E402
from export.triton_repo import served_model_of  # noqa: E402
from tests.export.test_to_triton import _config, _set_served  # noqa: E402

# Two optimization profiles of a typical engine: up to 8 clips of up to 128 frames, or 8..64 clips of up to 32 frames.
PROFILES = ["batch=1:1:8,time=1:16:128", "batch=8:64:64,time=1:16:32"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("tt_trt")
    graphs = export_onnx(tiny_checkpoint, out / "onnx", "fp16").paths
    return build_engine(graphs["model"], out / "model.engine", profiles=PROFILES, backend="tensorrt_rtx",
                        compute_capability="8.6").engine_path


@pytest.fixture(scope="module")
def trt_repo(engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("tt_trt_repo") / "repo"
    assert main([str(engine), "--out", str(out), "--preferred-batch-sizes", "4,8"]) == 0
    return out


def test_tensorrt_kind_follows_the_engine(trt_repo, engine):
    model = trt_repo / "cnn_bilstm"
    assert sorted(p.name for p in (model / "1").iterdir()) == ["model.plan", "model.plan.json"]
    assert (model / "1" / "model.plan").read_bytes() == engine.read_bytes()
    config = _config(model / "config.pbtxt")
    assert (config.platform, config.backend) == ("tensorrt_plan", "")
    assert config.max_batch_size == 8  # the largest batch every bucket up to 128 fits (profile 0)
    assert config.instance_group[0].kind == 1  # KIND_GPU
    assert [list(i.dims) for i in config.input] == [[-1, 3, 16, 16], [1]]
    served = served_model_of(model / "config.pbtxt")
    assert served.kind == "tensorrt" and served.time_buckets == (1, 2, 4, 8, 16, 32, 64, 128)
    assert served.metadata["precision"] == "fp16"
    assert check_repository(trt_repo) == []


def test_a_batch_the_engine_cannot_run_is_refused_at_generation(engine, tmp_path, capsys):
    out = tmp_path / "repo"
    assert main([str(engine), "--out", str(out), "--max-batch-size", "64"]) == 2
    err = capsys.readouterr().err
    assert "batch 9 at time 64, which no optimization profile holds" in err
    assert "every batch up to 8 at these time buckets" in err and "at max_batch_size 64 time up to 32" in err
    assert not out.exists()
    assert main([str(engine), "--out", str(out), "--max-time", "256"]) == 2
    assert "beyond the engine's profiles (time up to 128)" in capsys.readouterr().err
    # within the second profile: 64 clips of up to 32 frames
    assert main([str(engine), "--out", str(out), "--max-batch-size", "64", "--max-time", "32"]) == 0
    assert served_model_of(out / "cnn_bilstm" / "config.pbtxt").time_buckets == (1, 2, 4, 8, 16, 32)
    assert main(["--check", str(out)]) == 0
    assert main([str(engine), "--out", str(tmp_path / "r2"), "--kind", "python"]) == 2
    assert "is a TensorRT engine" in capsys.readouterr().err


def _edit(trt_repo, tmp_path, edit):
    repo = tmp_path / "repo"
    shutil.copytree(trt_repo, repo)
    path = repo / "cnn_bilstm" / "config.pbtxt"
    path.write_text(edit(path.read_text()))
    return repo


@pytest.mark.parametrize("edit, pattern", [
    (lambda t: t.replace("max_batch_size: 8", "max_batch_size: 16"),
     r"config.pbtxt:\d+: max_batch_size 16 with time buckets .* asks the engine for batch 9 at time 64"),
    (lambda t: _set_served(t, time_buckets=[1, 2, 4, 8, 16, 32, 64, 128, 256], max_time=256),
     r"go beyond the engine's longest profile time 128"),
    (lambda t: t.replace('platform: "tensorrt_plan"', 'backend: "onnxruntime"'),
     r"a tensorrt model needs backend: \"tensorrt\" \(or platform: \"tensorrt_plan\"\)"),
    (lambda t: t.replace("dims: [-1, 3]", "dims: [3]"),
     r"output 'frame_logits': the model sees \[3\] per request, but .*model.plan.json declares \[-1, 3\]"),
])
def test_check_compares_an_edited_config_with_the_engine(trt_repo, tmp_path, capsys, edit, pattern):
    repo = _edit(trt_repo, tmp_path, edit)
    assert main(["--check", str(repo)]) == 1
    err = capsys.readouterr().err
    assert re.search(pattern, err), err


def test_check_needs_the_engine_report(trt_repo, tmp_path, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(trt_repo, repo)
    (repo / "cnn_bilstm" / "1" / "model.plan.json").unlink()
    assert main(["--check", str(repo)]) == 1
    assert "lacks ['model.plan.json']" in capsys.readouterr().err


def test_the_engines_flavour_and_version_are_said_when_the_repository_is_written(engine, tmp_path, capsys):
    from export.triton_repo import RepoOptions, write_repository

    result = write_repository(engine, tmp_path / "repo", RepoOptions())
    assert len(result.notes) == 1 and "tensorrt_rtx" in result.notes[0]
    assert "Triton's tensorrt backend runs plans of full TensorRT only" in result.notes[0]
    assert main([str(engine), "--out", str(tmp_path / "cli")]) == 0
    assert "note: model.engine was built by tensorrt_rtx" in capsys.readouterr().out


def test_a_full_tensorrt_engine_names_the_triton_release_it_needs(tmp_path):
    from export.triton_source import engine_serving_note

    note = engine_serving_note(tmp_path / "model.engine", {"flavour": "tensorrt", "version": "11.4.0.106"})
    assert "TensorRT 11.4.0.106" in note and "Triton release" in note and "tensorrt_rtx" not in note


def test_check_refuses_a_replaced_engine_and_names_the_command(trt_repo, tmp_path, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(trt_repo, repo)
    plan = repo / "cnn_bilstm" / "1" / "model.plan"
    data = bytearray(plan.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 in model.plan.json tells
    plan.write_bytes(bytes(data))
    assert main(["--check", str(repo)]) == 1
    err = capsys.readouterr().err
    assert f"{plan} is not the file model.plan.json beside it records" in err, err
    assert re.search(r"regenerate the repository: `python -m export\.to_triton SRC --out \S+ --kind tensorrt "
                     r"--max-batch-size 8 --max-time 128 --instances 1 --instance-kind gpu --max-queue-delay-us 500 "
                     r"--preferred-batch-sizes 4,8 --force` \(SRC: the engine \(with its ENGINE\.json report\)", err)


def test_stream_options_are_refused_for_an_engine(engine, tmp_path, capsys):
    assert main([str(engine), "--out", str(tmp_path / "repo"), "--stream-window", "8"]) == 2
    assert "the tensorrt kind has none" in capsys.readouterr().err
