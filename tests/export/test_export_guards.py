"""Export guards: every output of export.to_onnx, export.quantize and export.to_trt is checked before the work
and never replaces a file it does not own; export folders appear whole or not at all; killed runs' temporaries are
removed; every graph and checkpoint a tool reads is checked the way the runtime checks it."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from conftest import TINY_CLASSES, TINY_CONFIG, TINY_MEAN, TINY_STD, dead_pid, skip_unless_engines_build  # noqa: E402

import runtime  # noqa: E402
from export import quantize, to_onnx, to_trt  # noqa: E402
from export.errors import EngineBuildError, ExportError, ExportOverwriteError, ProfileError  # noqa: E402  # noqa: E402
from export.onnx_graph import read_metadata  # noqa: E402
from export.quantize import quantize_export  # noqa: E402
from export.to_onnx import export_onnx  # noqa: E402
from export.to_trt import build_engine  # noqa: E402
from runtime._io import OutputPathError, sha256_file  # noqa: E402
from runtime.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from runtime.errors import RuntimeInputError  # noqa: E402
from runtime.model import build_random_model  # noqa: E402

EXPORT_FILES = ["bilstm.onnx", "cnn.onnx", "export_report.json", "model.onnx"]
PROFILE = ["batch=1:1:2,time=1:4:8"]


def _clips(n, t=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, t, 3, 16, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("other") / "other.pt", build_random_model(TINY_CONFIG, seed=9),
                           class_names=TINY_CLASSES, mean=TINY_MEAN, std=TINY_STD)


@pytest.fixture(scope="module")
def fp32_dir(tmp_path_factory, tiny_checkpoint):
    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("src") / "fp32", "fp32").paths["model"].parent


@pytest.fixture(scope="module")
def fp16_dir(tmp_path_factory, tiny_checkpoint):
    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("src16") / "fp16", "fp16").paths["model"].parent


def _digests(folder):
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())}




def _flip_one_bit(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the weights: still a valid protobuf
    path.write_bytes(bytes(data))


def _interrupt_second_write(monkeypatch):
    """Let the first atomic file write finish, then "kill" the process (KeyboardInterrupt) at the second."""
    from runtime import _io

    real, calls = _io.atomic_write, []

    def write(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-export")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(_io, "atomic_write", write)


def _no_write_access(monkeypatch, folder):
    """A read-only folder, also for root (who may write anywhere): os.access says no for it."""
    from runtime import _io

    real = os.access
    monkeypatch.setattr(_io.os, "access", lambda p, mode, **kw: False if os.fspath(p) == os.fspath(folder)
                        else real(p, mode, **kw))


# --- folders whole or not at all ------------------------------------------------------------------------------------


def test_interrupted_reexport_leaves_the_old_folder_whole(tmp_path, tiny_checkpoint, other_checkpoint, fp32_dir,
                                                           monkeypatch):
    out = tmp_path / "fp32"
    shutil.copytree(fp32_dir, out)
    before = _digests(out)
    _interrupt_second_write(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(other_checkpoint, out, "fp32", force=True)
    monkeypatch.undo()
    assert _digests(out) == before  # not one new graph beside old ones
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32"]  # no staged folder left behind
    runtime.load(out / "model.onnx").deactivate()  # the runtime still takes the folder
    export_onnx(other_checkpoint, out, "fp32", force=True)  # a completed re-export replaces it whole
    assert sorted(p.name for p in out.iterdir()) == EXPORT_FILES
    assert read_metadata(out / "cnn.onnx")["checkpoint_sha256"] == sha256_file(other_checkpoint)


def test_interrupted_recalibration_leaves_the_old_int8_folder_whole(tmp_path, fp32_dir, monkeypatch):
    out = tmp_path / "int8"
    quantize_export(fp32_dir, out, _clips(4, seed=1), _clips(4, seed=2), min_agreement=0.0)
    before = _digests(out)
    _interrupt_second_write(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        quantize_export(fp32_dir, out, _clips(4, seed=3), _clips(4, seed=2), min_agreement=0.0, method="percentile")
    monkeypatch.undo()
    assert _digests(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8"]
    runtime.load(out / "model.onnx").deactivate()


def test_a_folder_holding_other_files_is_refused_before_any_work(tmp_path, tiny_checkpoint, fp32_dir, monkeypatch):
    # A re-export replaces the folder whole: files it would not write are never deleted or carried along silently.
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_checkpoint, run / "best.pt")
    monkeypatch.setattr(to_onnx, "_make_wrappers", lambda *a: pytest.fail("the export started"))
    with pytest.raises(OutputPathError, match=r"also holds best\.pt; a re-export replaces the folder whole"):
        export_onnx(tiny_checkpoint, run, "fp32")
    assert to_onnx.main([str(tiny_checkpoint), "--out", str(run), "--force"]) == 2  # --force deletes nothing either
    assert sorted(p.name for p in run.iterdir()) == ["best.pt"] and sha256_file(run / "best.pt") == sha256_file(
        tiny_checkpoint)
    (tmp_path / "int8").mkdir()
    (tmp_path / "int8" / "model.engine").write_bytes(b"an engine")
    with pytest.raises(OutputPathError, match=r"also holds model\.engine"):
        quantize_export(fp32_dir, tmp_path / "int8", _clips(2), _clips(2), force=True)
    with pytest.raises(ExportError, match="must differ from the fp32 export folder .* and lie outside it"):
        quantize_export(fp32_dir, fp32_dir / "int8", _clips(2), _clips(2))
    assert not (fp32_dir / "int8").exists()


def test_nested_precisions_leave_the_parents_other_entries_alone(tmp_path, tiny_checkpoint):
    root = tmp_path / "onnx"
    (root / "int8").mkdir(parents=True)
    (root / "int8" / "keep.txt").write_text("mine")
    assert to_onnx.main([str(tiny_checkpoint), "--out", str(root), "--precision", "fp32", "--precision",
                         "fp16"]) == 0
    assert sorted(p.name for p in root.iterdir()) == ["fp16", "fp32", "int8"]
    assert (root / "int8" / "keep.txt").read_text() == "mine"


# --- temporaries of killed runs ---------------------------------------------------------------------------------------


def test_export_writers_remove_killed_runs_temporaries(tmp_path, fp32_dir, fp16_dir, other_checkpoint):
    dead = dead_pid()
    out = tmp_path / "fp32"
    shutil.copytree(fp32_dir, out)
    (out / f".model.onnx.{dead}.a1b2c3.tmp").write_bytes(b"x" * 100)  # a per-file write killed mid-way
    (tmp_path / f".fp32.{dead}.d4e5f6.tmp").mkdir()  # a staged folder (or scratch) of a killed export
    (tmp_path / f".int8.{dead}.g7h8i9.tmp").mkdir()
    live = tmp_path / f".fp32.{os.getpid()}.live.tmp"  # a live writer's: kept
    live.mkdir()
    with pytest.raises(ExportOverwriteError, match="checkpoint_sha256"):  # refused after the cleanup
        export_onnx(other_checkpoint, out, "fp32")
    assert sorted(p.name for p in out.iterdir()) == EXPORT_FILES  # not counted as a foreign file, but removed
    with pytest.raises(ExportError, match="must be float"):
        quantize_export(fp32_dir, tmp_path / "int8", _clips(2)[:, :, :, :8], _clips(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["fp32", live.name])
    engines = tmp_path / "engines"
    engines.mkdir()
    (engines / f".cnn.engine.{dead}.j1k2.tmp").write_bytes(b"x" * 100)
    (engines / f".cnn.engine.json.{dead}.l3m4.tmp").write_text("{")
    with pytest.raises(ProfileError, match="at least one optimisation profile"):  # refused after the cleanup
        build_engine(fp16_dir / "cnn.onnx", engines / "cnn.engine", profiles=[])
    assert list(engines.iterdir()) == []


# --- the tools check what they read -------------------------------------------------------------------------------


def test_quantize_refuses_a_bit_flipped_source_graph(tmp_path, fp32_dir):
    src = tmp_path / "fp32"
    shutil.copytree(fp32_dir, src)
    _flip_one_bit(src / "cnn.onnx")
    with pytest.raises(ExportError, match=r"cnn\.onnx is damaged or was replaced after export"):
        quantize_export(src, tmp_path / "int8", _clips(4), _clips(4), min_agreement=0.0)
    assert not (tmp_path / "int8").exists()
    rc = quantize.main([str(src), "--out", str(tmp_path / "int8"), "--data", "synthetic", "--frames", "2"])
    assert rc == 2 and not (tmp_path / "int8").exists()


def test_to_trt_refuses_a_bit_flipped_graph_before_building(tmp_path, fp16_dir, monkeypatch, capsys):
    src = tmp_path / "fp16"
    shutil.copytree(fp16_dir, src)
    _flip_one_bit(src / "bilstm.onnx")
    from runtime import trt_compat

    monkeypatch.setattr(trt_compat, "import_trt", lambda *a, **k: pytest.fail("the build started"))
    with pytest.raises(EngineBuildError, match=r"bilstm\.onnx is damaged or was replaced after export"):
        build_engine(src / "bilstm.onnx", tmp_path / "bilstm.engine")
    assert to_trt.main([str(src / "bilstm.onnx"), "--out", str(tmp_path / "bilstm.engine")]) == 2
    assert "export the folder again: `python -m export.to_onnx CHECKPOINT" in capsys.readouterr().err
    assert not (tmp_path / "bilstm.engine").exists()


def test_runtime_says_how_to_recover_a_damaged_or_mixed_folder(tmp_path, fp32_dir):
    src = tmp_path / "fp32"
    shutil.copytree(fp32_dir, src)
    _flip_one_bit(src / "model.onnx")
    with pytest.raises(RuntimeInputError, match=rf"export the folder again: `python -m export\.to_onnx CHECKPOINT "
                                                rf"--out {src} --precision fp32 --force`"):
        runtime.load(src / "model.onnx")
    int8 = quantize_export(fp32_dir, tmp_path / "int8", _clips(4), _clips(4), min_agreement=0.0).paths["cnn"]
    _flip_one_bit(int8)
    with pytest.raises(RuntimeInputError, match=rf"`python -m export\.quantize {fp32_dir} --out {int8.parent} "
                                                r"--force`"):
        runtime.load(int8)


# --- bad output paths, one line, before the work ---------------------------------------------------------------------


def test_to_onnx_out_is_checked_before_the_export(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(to_onnx, "_make_wrappers", lambda *a: pytest.fail("the export started"))
    (tmp_path / "afile").write_text("x")
    for out, message in ((tmp_path / "afile", "is a file, not a folder"),
                         (tmp_path / "afile" / "onnx", "is a file, not a folder")):
        for extra in ([], ["--precision", "all-default"]):
            assert to_onnx.main([str(tiny_checkpoint), "--out", str(out), *extra]) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: --out") and message in err and err.count("\n") == 1
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert to_onnx.main([str(tiny_checkpoint), "--out", "."]) == 2  # the folder the process is in cannot be swapped
    assert "is the current folder or holds it" in capsys.readouterr().err
    ro = tmp_path / "ro"
    (ro / "onnx").mkdir(parents=True)
    _no_write_access(monkeypatch, ro)
    assert to_onnx.main([str(tiny_checkpoint), "--out", str(ro / "new")]) == 2
    assert f"cannot write in {ro} (permission denied)" in capsys.readouterr().err
    # A writable folder in a read-only one: the new export is staged beside it, so its parent must be writable too.
    assert to_onnx.main([str(tiny_checkpoint), "--out", str(ro / "onnx")]) == 2
    assert "the folder it is staged in" in capsys.readouterr().err


def test_quantize_out_is_checked_before_the_data_is_built(tmp_path, fp32_dir, monkeypatch, capsys):
    monkeypatch.setattr(quantize, "clips_from_data", lambda *a, **k: pytest.fail("the data was built"))
    (tmp_path / "afile").write_text("x")
    assert quantize.main([str(fp32_dir), "--out", str(tmp_path / "afile"), "--data", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and err.count("\n") == 1
    assert quantize.main([str(fp32_dir), "--out", str(tmp_path / "x"), "--min-agreement", "2"]) == 2
    assert "--min-agreement must be in [0, 1]" in capsys.readouterr().err


def test_to_trt_out_is_checked_before_the_build(tmp_path, fp16_dir, monkeypatch, capsys):
    from runtime import trt_compat

    monkeypatch.setattr(trt_compat, "import_trt", lambda *a, **k: pytest.fail("the build started"))
    cnn = str(fp16_dir / "cnn.onnx")
    (tmp_path / "dir.engine").mkdir()
    (tmp_path / "afile").write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    _no_write_access(monkeypatch, ro)
    for out, message in ((tmp_path / "dir.engine", "is a folder"),
                         (tmp_path / "afile" / "m.engine", "is a file, not a folder"),
                         (ro / "m.engine", "permission denied"),
                         (tmp_path / "m.txt", r"must end in .engine or .plan (got '.txt')")):
        assert to_trt.main([cnn, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --out") and message in err and err.count("\n") == 1
    # The timing cache is read and written back: a checkpoint named there would be replaced.
    assert to_trt.main([cnn, "--out", str(tmp_path / "m.engine"), "--timing-cache", str(tmp_path / "best.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --timing-cache") and "must end in .cache (got '.pt')" in err


# --- to_trt never overwrites what it does not own ---------------------------------------------------------------------


def test_to_trt_refuses_a_checkpoint_and_other_suffixes(tmp_path, fp16_dir, tiny_checkpoint, capsys):
    # --out names a checkpoint: refused on its suffix before anything is read or built.
    victim = tmp_path / "best.pt"
    shutil.copy(tiny_checkpoint, victim)
    assert to_trt.main([str(fp16_dir / "bilstm.onnx"), "--out", str(victim)]) == 2
    assert "must end in .engine or .plan (got '.pt')" in capsys.readouterr().err
    assert sha256_file(victim) == sha256_file(tiny_checkpoint) and not (tmp_path / "best.pt.json").exists()


def test_to_trt_replaces_only_its_own_cached_engine_without_force(tmp_path, fp16_dir, capsys):
    skip_unless_engines_build("tensorrt_rtx")
    cnn = str(fp16_dir / "cnn.onnx")
    args = ["--profile", PROFILE[0], "--backend", "tensorrt_rtx", "--compute-capability", "8.6"]
    precious = tmp_path / "precious.engine"
    precious.write_bytes(b"hand-made plan")
    assert to_trt.main([cnn, "--out", str(precious), *args]) == 2
    assert "precious.engine already exists; pass --force to replace it" in capsys.readouterr().err
    assert precious.read_bytes() == b"hand-made plan"
    assert to_trt.main([cnn, "--out", str(precious), *args, "--force"]) == 0
    assert "built" in capsys.readouterr().out and precious.read_bytes() != b"hand-made plan"

    # The same request again: its own cached engine (a hit); --rebuild builds it anew, without --force.
    assert to_trt.main([cnn, "--out", str(precious), *args]) == 0
    assert "engine cache hit" in capsys.readouterr().out
    assert to_trt.main([cnn, "--out", str(precious), *args, "--rebuild"]) == 0
    assert "built" in capsys.readouterr().out

    # An engine of another request (other profiles, another graph) is replaced only with --force, and it says so.
    engine = precious.read_bytes()
    other = ["--profile", "batch=1:1:4,time=1:4:8", *args[2:]]
    assert to_trt.main([cnn, "--out", str(precious), *other]) == 2
    err = capsys.readouterr().err
    assert "holds an engine that export.to_trt built for another request (profiles differ)" in err
    assert "pass --force" in err and precious.read_bytes() == engine
    assert to_trt.main([str(fp16_dir / "model.onnx"), "--out", str(precious), *args]) == 2
    assert "graph (ONNX sha256)" in capsys.readouterr().err and precious.read_bytes() == engine
    assert to_trt.main([cnn, "--out", str(precious), *other, "--force"]) == 0
    report = json.loads((tmp_path / "precious.engine.json").read_text())
    assert report["profiles"][0]["axes"]["batch"] == [1, 1, 4] and report["engine_sha256"] == sha256_file(precious)


def test_to_trt_after_a_build_killed_between_report_and_engine(tmp_path, fp16_dir):
    skip_unless_engines_build("tensorrt_rtx")
    out = tmp_path / "cnn.engine"
    kwargs = dict(profiles=PROFILE, backend="tensorrt_rtx", compute_capability="8.6")
    first = build_engine(fp16_dir / "cnn.onnx", out, **kwargs)
    out.write_bytes(out.read_bytes()[:-10])  # the report of this request beside an engine it does not describe
    again = build_engine(fp16_dir / "cnn.onnx", out, **kwargs)  # the same command recovers, without force
    assert not again.cache_hit and again.report["cache_key"] == first.report["cache_key"]
    assert sha256_file(out) == again.report["engine_sha256"] == json.loads(
        out.with_suffix(".engine.json").read_text())["engine_sha256"]
    foreign = json.loads(out.with_suffix(".engine.json").read_text())
    foreign.pop("cache_key")  # a JSON file that is not this tool's report: never replaced without force
    out.with_suffix(".engine.json").write_text(json.dumps(foreign))
    with pytest.raises(OutputPathError, match="already exists; pass --force"):
        build_engine(fp16_dir / "cnn.onnx", out, **kwargs)


def test_build_engine_flags_are_booleans(tmp_path, fp16_dir):
    with pytest.raises(RuntimeInputError, match="force must be True or False"):
        build_engine(fp16_dir / "cnn.onnx", tmp_path / "cnn.engine", force="no")


# --- checkpoints that are not checkpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize("content,what", [
    (b"hello, I am a text file\n", "a text file, not a zip archive"),
    (b'{"weights": [1, 2]}', "JSON text, not a zip archive"),
    (b"", "the file is empty"),
    (bytes(range(256)) * 4, "binary data of another format, not a zip archive"),
])
def test_a_file_that_is_not_a_checkpoint_is_one_clear_line(tmp_path, capsys, content, what):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"model.pt is not a readable checkpoint: {what}; a checkpoint is "
                                              "the zip archive torch.save writes"):
        load_checkpoint(path)
    assert to_onnx.main([str(path), "--out", str(tmp_path / "onnx")]) == 2
    err = capsys.readouterr().err
    assert what in err and "KeyError" not in err and err.count("\n") == 1
    assert not (tmp_path / "onnx").exists()


def test_a_zip_that_is_not_a_torch_file_and_nan_weights_are_refused(tmp_path, tiny_checkpoint):
    import zipfile

    with zipfile.ZipFile(tmp_path / "notes.pt", "w") as z:
        z.writestr("notes.txt", "hello")
    with pytest.raises(CheckpointError, match="a zip archive without the data.pkl of a torch file"):
        load_checkpoint(tmp_path / "notes.pt")
    ckpt = load_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        ckpt.model.clip_head.weight[0, 0] = float("nan")
    diverged = save_checkpoint(tmp_path / "diverged.pt", ckpt.model, class_names=ckpt.class_names, mean=ckpt.mean,
                               std=ckpt.std)
    with pytest.raises(CheckpointError, match=r"holds NaN/Inf weights \(1 tensors, the first clip_head\.weight\)"):
        load_checkpoint(diverged)
