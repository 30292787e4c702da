"""python -m export.to_triton from the tiny model's ONNX export: the python and onnxruntime kinds, the checks before
anything is written, overwrite guards, and --check on deliberately broken configs (schema and model contract)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

pytest.importorskip("tritonclient.grpc")

from export.to_onnx import export_onnx  # noqa: E402
from export.to_triton import main  # noqa: E402
from export.triton_check import check_repository  # noqa: E402
from export.triton_repo import RepoOptions, served_model_of, write_repository  # noqa: E402
from runtime.spec import METADATA_KEY  # noqa: E402
from runtime.triton import protocol as P  # noqa: E402
from tests.conftest import TINY_CLASSES, run_cli  # noqa: E402


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("tt") / "onnx" / "fp32"
    export_onnx(tiny_checkpoint, out, "fp32")
    return out


@pytest.fixture(scope="module")
def python_repo(export_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tt_py") / "repo"
    assert main([str(export_dir), "--out", str(out), "--kind", "python", "--max-time", "20",
                 "--preferred-batch-sizes", "4,8", "--stream-window", "8", "--stream-idle-seconds", "30",
                 "--max-streams", "64"]) == 0
    return out


def _config(path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_python_kind_writes_both_models_as_the_contract_says(python_repo, export_dir):
    assert sorted(p.name for p in python_repo.iterdir()) == ["cnn_bilstm", "cnn_bilstm_stream"]
    clip_dir, stream_dir = python_repo / "cnn_bilstm", python_repo / "cnn_bilstm_stream"
    # the clip model runs the split graphs (CNN over real frames only) and validates with model.onnx
    assert sorted(p.name for p in (clip_dir / "1").iterdir()) == ["bilstm.onnx", "cnn.onnx", "export_report.json",
                                                                  "model.onnx", "model.py"]
    assert sorted(p.name for p in (stream_dir / "1").iterdir()) == ["bilstm.onnx", "cnn.onnx", "export_report.json",
                                                                    "model.py"]
    assert (clip_dir / "1" / "model.onnx").read_bytes() == (export_dir / "model.onnx").read_bytes()
    assert "import ClipModel as TritonPythonModel" in (clip_dir / "1" / "model.py").read_text()
    assert "import StreamModel as TritonPythonModel" in (stream_dir / "1" / "model.py").read_text()

    clip = _config(clip_dir / "config.pbtxt")
    assert (clip.name, clip.backend, clip.max_batch_size) == ("cnn_bilstm", "python", 8)
    frames, lengths = clip.input
    assert (frames.name, list(frames.dims)) == ("frames", [-1, 3, 16, 16])
    assert frames.allow_ragged_batch and not lengths.allow_ragged_batch  # requests of any T share a batch
    assert (lengths.name, list(lengths.dims), lengths.HasField("reshape"), list(lengths.reshape.shape)) == \
        ("lengths", [1], True, [])
    assert [(o.name, list(o.dims)) for o in clip.output] == [("frame_logits", [-1, 3]), ("clip_logits", [3])]
    assert list(clip.dynamic_batching.preferred_batch_size) == [4, 8]
    assert clip.dynamic_batching.max_queue_delay_microseconds == 500
    served = served_model_of(clip_dir / "config.pbtxt")
    assert served.time_buckets == (1, 2, 4, 8, 16, 20) and (served.min_time, served.max_time) == (1, 20)
    assert (served.kind, served.role) == ("python", "clip")
    assert served.model_metadata().class_names == TINY_CLASSES

    stream = _config(stream_dir / "config.pbtxt")
    sb = stream.sequence_batching
    assert sb.max_sequence_idle_microseconds == 30_000_000 and sb.oldest.max_candidate_sequences == 4 * 64
    assert sorted(c.name for c in sb.control_input) == ["CORRID", "END", "READY", "START"]
    assert [o.name for o in stream.output] == ["frame_logits", "clip_logits", "frames_seen", "window_frames"]
    assert stream.parameters["max_streams"].string_value == "64"
    s = served_model_of(stream_dir / "config.pbtxt")
    assert (s.role, s.window, s.idle_seconds, s.time_buckets) == ("stream", 8, 30.0, (8,))
    assert check_repository(python_repo) == []


def test_python_m_export_to_triton_writes_and_checks_as_a_user_runs_it(export_dir, tmp_path):
    res = run_cli("export.to_triton", export_dir, "--out", "repo", "--kind", "onnxruntime", "--max-time", "16",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    model = tmp_path / "repo" / "cnn_bilstm"
    assert (model / "1" / "model.onnx").read_bytes() == (export_dir / "model.onnx").read_bytes()
    assert _config(model / "config.pbtxt").backend == "onnxruntime" and "repo" in res.stdout
    check = run_cli("export.to_triton", "--check", "repo", cwd=tmp_path)
    assert check.returncode == 0 and "repo: ok" in check.stdout, check.stdout + check.stderr[-3000:]


def test_onnxruntime_kind_is_auto_for_an_export_folder(export_dir, tmp_path, capsys):
    out = tmp_path / "repo"
    assert main([str(export_dir / "model.onnx"), "--out", str(out), "--name", "clf", "--max-batch-size", "16",
                 "--instances", "2", "--ort-tensorrt-fp16", "--no-dynamic-batching"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clf"]
    assert sorted(p.name for p in (out / "clf" / "1").iterdir()) == ["export_report.json", "model.onnx"]
    text = (out / "clf" / "config.pbtxt").read_text()
    config = _config(out / "clf" / "config.pbtxt")
    assert (config.backend, config.max_batch_size, config.instance_group[0].count) == ("onnxruntime", 16, 2)
    assert not config.HasField("dynamic_batching")
    accel = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
    assert "kind: KIND_GPU" in text and 'backend: "onnxruntime"' in text
    assert served_model_of(out / "clf" / "config.pbtxt").time_buckets[-1] == 128  # ONNX: --max-time's default
    assert not any(t.allow_ragged_batch for t in config.input)  # equal shapes only: the graph takes no 1-D ragged
    assert main(["--check", str(out)]) == 0
    assert "ok" in capsys.readouterr().out
    # --check refuses ragged batching on this kind, with the reason
    path = out / "clf" / "config.pbtxt"
    path.write_text(text.replace('name: "frames"', 'name: "frames"\n    allow_ragged_batch: true', 1))
    assert main(["--check", str(out)]) == 1
    err = capsys.readouterr().err
    assert re.search(r"clf/config.pbtxt:\d+: input 'frames' sets allow_ragged_batch, which the onnxruntime kind "
                     r"cannot serve: .*concatenated 1-D", err), err


@pytest.mark.parametrize("args, match", [
    (["--kind", "tensorrt"], "serves an engine"),
    (["--kind", "onnxruntime", "--instance-kind", "cpu", "--ort-tensorrt-fp16"], "TensorRT runs on GPUs"),
    (["--kind", "python", "--ort-tensorrt-fp16"], "onnxruntime kind"),
    (["--name", "a/b"], "not valid"),
    (["--max-batch-size", "0"], "max-batch-size must be an integer >= 1"),
    (["--kind", "python", "--stream-window", "5000"], "beyond 4096"),
    (["--kind", "python", "--stream-idle-seconds", "0"], "stream-idle-seconds"),
    (["--preferred-batch-sizes", "4,16"], "preferred_batch_size 16 is outside 1..max_batch_size"),
])
def test_bad_requests_are_refused_before_anything_is_written(export_dir, tmp_path, capsys, args, match):
    out = tmp_path / "repo"
    assert main([str(export_dir), "--out", str(out), *args]) == 2
    assert match in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".repo*"))


def test_bad_sources_are_named(export_dir, tmp_path, capsys):
    assert main([str(export_dir / "cnn.onnx"), "--out", str(tmp_path / "r")]) == 2
    assert "pass the export folder" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(export_dir / "model.onnx", partial / "model.onnx")
    assert main([str(partial), "--out", str(tmp_path / "r"), "--kind", "python"]) == 2
    assert "--no-stream" in capsys.readouterr().err
    assert main([str(partial), "--out", str(tmp_path / "r"), "--kind", "python", "--no-stream"]) == 0
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["cnn_bilstm"]


def test_a_damaged_graph_is_refused(export_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(export_dir, bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    assert main([str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "damaged" in capsys.readouterr().err


def test_existing_repository_needs_force(export_dir, tmp_path, capsys):
    out = tmp_path / "repo"
    assert write_repository(export_dir, out, RepoOptions(kind="python")).path == out
    before = (out / "cnn_bilstm" / "config.pbtxt").read_text()
    assert main([str(export_dir), "--out", str(out), "--kind", "python", "--max-batch-size", "4"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "cnn_bilstm" / "config.pbtxt").read_text() == before
    # a refused request with --force leaves the old repository whole
    assert main([str(export_dir), "--out", str(out), "--kind", "python", "--max-batch-size", "0", "--force"]) == 2
    assert (out / "cnn_bilstm" / "config.pbtxt").read_text() == before
    assert main([str(export_dir), "--out", str(out), "--kind", "onnxruntime", "--max-batch-size", "4",
                 "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cnn_bilstm"]  # replaced whole: no stale stream model
    assert _config(out / "cnn_bilstm" / "config.pbtxt").max_batch_size == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert main([str(export_dir), "--out", str(export_dir.parent), "--force"]) == 2  # would replace SRC
    assert "holds SRC" in capsys.readouterr().err


# --- --check on broken configs ---------------------------------------------------------------------------------------


def _broken(python_repo, tmp_path, model, edit):
    repo = tmp_path / "repo"
    shutil.copytree(python_repo, repo)
    path = repo / model / "config.pbtxt"
    text = path.read_text()
    new = edit(text)
    assert new != text, "the edit did not apply"
    path.write_text(new)
    return repo, path


def _set_served(text, **changes):
    """Edit the metadata JSON inside a config's text."""
    from google.protobuf import text_encoding

    m = re.search(r'string_value: "((?:[^"\\]|\\.)*)"', text)
    d = json.loads(text_encoding.CUnescape(m.group(1)).decode())
    d.update(changes)
    return text[:m.start(1)] + text_encoding.CEscape(json.dumps(d), as_utf8=True) + text[m.end(1):]


BROKEN = {
    "typo field": ("cnn_bilstm", lambda t: t.replace("max_batch_size:", "max_batch_sise:"),
                   [r"config.pbtxt:3:1: .*no field named \"max_batch_sise\"; did you mean 'max_batch_size'\?"]),
    "bad enum": ("cnn_bilstm", lambda t: t.replace("TYPE_INT32", "TYPE_INT33", 1),
                 [r"config.pbtxt:\d+:\d+: .*TYPE_INT33.*valid values: .*TYPE_INT32"]),
    "wrong dims": ("cnn_bilstm", lambda t: t.replace("dims: [-1, 3, 16, 16]", "dims: [-1, 3, 32, 32]"),
                   [r"config.pbtxt:\d+: input 'frames' has dims \[-1, 3, 32, 32\]; valid: \[-1, 3, 16, 16\]",
                    r"the model sees \[-1, 3, 32, 32\] per request, but .*model.onnx declares \[-1, 3, 16, 16\]"]),
    "wrong dtype": ("cnn_bilstm", lambda t: t.replace("data_type: TYPE_INT32", "data_type: TYPE_INT64", 1),
                    [r"input 'lengths' has data_type TYPE_INT64; valid: TYPE_INT32",
                     r"model.onnx declares TYPE_INT32, the config TYPE_INT64"]),
    "no reshape": ("cnn_bilstm", lambda t: re.sub(r"\n\s*reshape \{\n\s*\}", "", t),
                   [r"input 'lengths' has no reshape; valid: reshape: \{ shape: \[\] \}"]),
    "bucket beyond max T": ("cnn_bilstm", lambda t: _set_served(t, time_buckets=[1, 2, 4, 8, 16, 20, 32]),
                            [r"time_buckets \[1, 2, 4, 8, 16, 20, 32\] must be .* within min_time..max_time 1..20"]),
    "preferred beyond batch": ("cnn_bilstm", lambda t: t.replace("preferred_batch_size: [4, 8]",
                                                                 "preferred_batch_size: [4, 16]"),
                               [r"preferred_batch_size 16 is outside 1..max_batch_size \(8\)"]),
    "missing control": ("cnn_bilstm_stream",
                        lambda t: re.sub(r'\n  control_input \{\n    name: "READY"\n(.*\n){4}  \}', "", t),
                        [r"lacks the control input 'READY' \(CONTROL_SEQUENCE_READY\)"]),
    "wrong control kind": ("cnn_bilstm_stream", lambda t: t.replace("kind: CONTROL_SEQUENCE_END",
                                                                    "kind: CONTROL_SEQUENCE_START"),
                           [r"control 'END' has kind CONTROL_SEQUENCE_START; valid: CONTROL_SEQUENCE_END"]),
    "idle mismatch": ("cnn_bilstm_stream", lambda t: t.replace("30000000", "5000000"),
                      [r"max_sequence_idle_microseconds 5000000 differs from the model's idle_seconds 30"]),
    "candidates below max_streams": ("cnn_bilstm_stream", lambda t: t.replace("max_candidate_sequences: 256",
                                                                              "max_candidate_sequences: 64"),
                                     [r"max_candidate_sequences 64 must exceed max_streams 64"]),
    "name mismatch": ("cnn_bilstm", lambda t: t.replace('name: "cnn_bilstm"', 'name: "other"', 1),
                      [r"config.pbtxt:1: name 'other' differs from its folder 'cnn_bilstm'"]),
    "no metadata": ("cnn_bilstm", lambda t: t.replace(METADATA_KEY, "something_else"),
                    [r"no 'cnn_bilstm_deploy' parameter"]),
    "ragged lengths": ("cnn_bilstm", lambda t: t.replace('name: "lengths"', 'name: "lengths"\n    '
                                                                            'allow_ragged_batch: true'),
                       [r"input 'lengths' sets allow_ragged_batch; only the whole-clip model's 'frames' input may"]),
    "ragged stream frame": ("cnn_bilstm_stream", lambda t: t.replace('name: "frame"', 'name: "frame"\n    '
                                                                                      'allow_ragged_batch: true'),
                            [r"input 'frame' sets allow_ragged_batch; only the whole-clip model's 'frames'"]),
    "wrong backend": ("cnn_bilstm", lambda t: t.replace('backend: "python"', 'backend: "onnxruntime"'),
                      [r'a python model needs backend: "python", got backend \'onnxruntime\'']),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_check_lists_every_error_with_file_and_line(python_repo, tmp_path, capsys, case):
    model, edit, patterns = BROKEN[case]
    repo, path = _broken(python_repo, tmp_path, model, edit)
    assert main(["--check", str(repo)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err
    for pattern in patterns:
        assert re.search(pattern, err), (pattern, err)


def test_check_finds_missing_version_files(python_repo, tmp_path, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(python_repo, repo)
    (repo / "cnn_bilstm_stream" / "1" / "cnn.onnx").unlink()
    shutil.rmtree(repo / "cnn_bilstm" / "1")
    assert main(["--check", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "cnn_bilstm:1: no version folder" in err
    assert re.search(r"cnn_bilstm_stream/config.pbtxt:1: the version folder lacks \['cnn.onnx'\]", err)
    assert "2 error(s)" in err


def test_check_reports_several_errors_at_once(python_repo, tmp_path):
    repo, path = _broken(python_repo, tmp_path, "cnn_bilstm",
                         lambda t: t.replace("dims: [-1, 3]", "dims: [-1, 4]").replace("max_batch_size: 8",
                                                                                           "max_batch_size: 0"))
    errors = check_repository(repo)
    assert any("output 'frame_logits' has dims [-1, 4]" in e for e in errors)
    assert any("max_batch_size must be >= 1" in e for e in errors)


def test_check_refuses_a_repository_that_is_not_one(tmp_path, capsys):
    assert main(["--check", str(tmp_path / "none")]) == 1
    (tmp_path / "empty").mkdir()
    assert main(["--check", str(tmp_path / "empty")]) == 1
    assert "holds no model folder" in capsys.readouterr().err


def test_stream_protocol_names_match_the_generated_config(python_repo):
    from tritonclient.grpc import model_config_pb2

    stream = _config(python_repo / "cnn_bilstm_stream" / "config.pbtxt")
    controls = {c.name: c.control[0] for c in stream.sequence_batching.control_input}
    assert model_config_pb2.DataType.Name(controls[P.CORRID].data_type) == "TYPE_UINT64"
    assert [i.name for i in stream.input] == [P.FRAME]


def test_written_config_escapes_the_metadata_and_parses_back():
    from export.triton_config import config_text, model_config_class

    served = P.ServedModel({"graph": "model", "class_names": ['a "quoted"', "back\\slash", "é\nnewline"],
                            "mean": [0.5] * 3, "std": [0.25] * 3, "frame_size": [8, 8]}, "python", "clip", (1, 2), 1, 2)
    config = model_config_class()(name="m", backend="python", max_batch_size=2,
                                  input=[{"name": "lengths", "data_type": "TYPE_INT32", "dims": [1],
                                          "reshape": {"shape": []}}],
                                  parameters={METADATA_KEY: {"string_value": served.to_json()}})
    text = config_text(config)
    # Triton's documented layout: the schema's field order, short lists, the empty reshape kept
    assert text.startswith('name: "m"\nbackend: "python"\nmax_batch_size: 2\n')
    assert "dims: [1]" in text and "reshape {\n  }" in text
    parsed = _config_text(text)
    assert parsed == config and parsed.input[0].HasField("reshape")
    assert P.ServedModel.from_json(parsed.parameters[METADATA_KEY].string_value) == served


def _config_text(text):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_a_missing_shim_does_not_hide_the_checks_against_the_graph(python_repo, tmp_path):
    repo, path = _broken(python_repo, tmp_path, "cnn_bilstm",
                         lambda t: t.replace("dims: [-1, 3, 16, 16]", "dims: [-1, 3, 32, 32]"))
    (repo / "cnn_bilstm" / "1" / "model.py").unlink()
    errors = check_repository(repo)
    assert any("lacks ['model.py']" in e for e in errors)
    assert any("model.onnx declares [-1, 3, 16, 16]" in e for e in errors)


def _configs_and_files(repo):
    """Each model's config (as Triton's schema parses it) and version-folder files (name -> bytes)."""
    return {m.name: (_config(m / "config.pbtxt"), {p.name: p.read_bytes() for p in (m / "1").iterdir()})
            for m in sorted(repo.iterdir())}


def test_check_refuses_a_replaced_graph_and_its_fix_regenerates_the_repository(python_repo, export_dir, tmp_path,
                                                                               capsys):
    import shlex
    import subprocess
    import sys

    from tests.runtime.test_triton_python_model import _replace_a_weight

    repo = tmp_path / "repo"
    shutil.copytree(python_repo, repo)
    graph = repo / "cnn_bilstm" / "1" / "model.onnx"
    _replace_a_weight(graph)  # same metadata, inputs and outputs: only the digest tells
    assert main(["--check", str(repo)]) == 1
    err = capsys.readouterr().err
    assert f"{graph} is not the file export_report.json beside it records" in err, err
    assert "1 error(s)" in err
    command = re.search(r"regenerate the repository: `([^`]+)` \(SRC: the ONNX export folder it was made from, of the "
                        r"checkpoint with sha256 [0-9a-f]{16}\.\.\.\)", err).group(1)
    # the suggested command, run as a user would with SRC filled in, writes the repository as it was made
    argv = [str(export_dir) if a == "SRC" else a for a in shlex.split(command)]
    assert argv[:3] == ["python", "-m", "export.to_triton"] and argv[argv.index("--kind") + 1] == "python"
    argv[0] = sys.executable
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    assert _configs_and_files(repo) == _configs_and_files(python_repo)
    assert main(["--check", str(repo)]) == 0


@pytest.mark.parametrize("args, match", [
    (["--stream-window", "8"], "--stream-window sets the python kind's stream model; the onnxruntime kind has none"),
    (["--kind", "onnxruntime", "--max-streams", "4", "--stream-idle-seconds", "5"],
     "--stream-idle-seconds, --max-streams set the python kind's stream model"),
    (["--kind", "python", "--no-stream", "--stream-max-batch-size", "4"], "which --no-stream leaves out"),
    (["--no-dynamic-batching", "--preferred-batch-sizes", "4"], "which --no-dynamic-batching turns off"),
    (["--no-dynamic-batching", "--max-queue-delay-us", "100"],
     "--max-queue-delay-us sets the dynamic batcher's wait, which --no-dynamic-batching turns off (and the "
     "onnxruntime kind has no stream model"),
    (["--kind", "python", "--no-stream", "--no-dynamic-batching", "--max-queue-delay-us", "0"],
     "(and --no-stream leaves out the stream model, the other one that waits): drop one of them"),
])
def test_options_that_would_be_ignored_are_refused(export_dir, tmp_path, capsys, args, match):
    out = tmp_path / "repo"
    assert main([str(export_dir), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1, err
    assert not out.exists()


def test_queue_delay_without_dynamic_batching_is_the_stream_models_or_refused(export_dir, tmp_path):
    """As a user runs it: with --no-dynamic-batching, --max-queue-delay-us still sets the python kind's stream model
    (its sequence batcher waits), and is refused in one line where no batcher would wait."""
    out = tmp_path / "repo"
    proc = run_cli("export.to_triton", export_dir, "--out", out, "--kind", "python", "--no-dynamic-batching",
                      "--max-queue-delay-us", "250", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not _config(out / "cnn_bilstm" / "config.pbtxt").HasField("dynamic_batching")
    assert _config(out / "cnn_bilstm_stream" / "config.pbtxt").sequence_batching.oldest.max_queue_delay_microseconds \
        == 250
    refused = tmp_path / "refused"
    proc = run_cli("export.to_triton", export_dir, "--out", refused, "--kind", "python", "--no-stream",
                      "--no-dynamic-batching", "--max-queue-delay-us", "250", timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --max-queue-delay-us sets the dynamic batcher's wait, which --no-dynamic-batching turns off (and "
        "--no-stream leaves out the stream model, the other one that waits): drop one of them"], proc.stderr
    assert not refused.exists()
