"""Training and evaluation guards: outputs checked before any work, no file replaced without --force, a forced
restart or a kill never leaves a folder that resumes as something it isn't, stale temporaries removed, numbers out of
range refused (never read as "the default"), and one-line errors instead of tracebacks."""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.error
import urllib.request

import pytest
import torch
from conftest import TINY_ARGS, dead_pid, run_train

import train.engine as engine
import train.evaluate as evaluate_mod
import train.loop as loop
from train.__main__ import main as train_main
from train.__main__ import parse_args
from train._checks import TrainError
from train.clips import DataError
from train.data import DataSpec, build_dataset
from train.eval_data import EvaluationError
from train.evaluate import evaluate_model
from train.evaluate import main as eval_main
from train.options import resolve_device

EVAL_ARGS = ["--data", "synthetic", "--frames", "4", "--val-clips", "4", "--seed", "5", "--device", "cpu",
             "--no-shuffled"]


@pytest.fixture
def run_copy(tmp_path, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    return run




def _no_work(monkeypatch):
    """Make reading any training data fail the test: the refusals must come before the work."""
    def refuse(*a, **k):
        raise AssertionError("the work started before the arguments were checked")

    monkeypatch.setattr(engine, "build_dataset", refuse)
    monkeypatch.setattr(evaluate_mod, "evaluate_model", refuse)


def _read_only(monkeypatch, folder):
    real = os.access

    def access(path, mode, *a, **k):  # as root every folder is writable: say this one is not
        if os.path.realpath(path) == os.path.realpath(folder) and mode & os.W_OK:
            return False
        return real(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --------------------------------------------------------------------------------------------------------------------
# numbers out of range are refused with what is valid, 0 is never "the default"
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option, value, message", [
    ("--train-clips", "0", "--train-clips must be >= 1, got 0"),
    ("--val-clips", "0", "--val-clips must be >= 1, got 0"),
    ("--clip-grad", "-1", "--clip-grad must be >= 0, got -1.0"),
    ("--weight-decay", "-0.05", "--weight-decay must be >= 0, got -0.05"),
    ("--lr", "0", "--lr must be > 0, got 0.0"),
    ("--lr", "nan", "--lr must be > 0, got nan"),
    ("--momentum", "1.5", "--momentum must be in [0, 1), got 1.5"),
    ("--warmup-epochs", "-1", "--warmup-epochs must be >= 0, got -1"),
    ("--workers", "-2", "--workers must be >= 0, got -2"),
    ("--frame-loss-weight", "-1", "--frame-loss-weight must be >= 0, got -1.0"),
    ("--val-fraction", "1", "--val-fraction must be in (0, 1), got 1.0"),
    ("--seed", "-1", "--seed must be in [0, 4294967295], got -1"),
    ("--hidden-size", "0", "hidden_size must be >= 1, got 0"),
    ("--dropout", "1", "dropout must be in [0, 1), got 1.0"),
])
def test_numeric_options_out_of_range_are_refused(option, value, message):
    with pytest.raises(TrainError if option not in ("--hidden-size", "--dropout") else ValueError,
                       match=re.escape(message)):
        parse_args(["--device", "cpu", option, value])


def test_missing_counts_still_take_their_defaults_and_resume_with_force_is_refused():
    args = parse_args([])
    assert (args.train_clips, args.val_clips) == (4096, 1024)
    assert parse_args(["--data", "folder"]).train_clips is None  # other sources: all clips
    with pytest.raises(TrainError, match="give one of them"):
        parse_args(["--resume", "x", "--force"])


def test_train_cli_refuses_zero_clips_in_one_line(tmp_path, capsys, monkeypatch):
    _no_work(monkeypatch)
    assert run_train(tmp_path / "o", "--train-clips", "0") == 2
    assert _one_error_line(capsys.readouterr().err) == "error: --train-clips must be >= 1, got 0"
    assert not (tmp_path / "o").exists()


def test_evaluate_refuses_zero_clips(finished_run, capsys, monkeypatch):
    with pytest.raises(EvaluationError, match="num_clips must be >= 1, got 0"):
        evaluate_model(finished_run / "best.pt", data="synthetic", frames=4, num_clips=0, device="cpu")
    _no_work(monkeypatch)
    assert eval_main([str(finished_run / "best.pt"), *EVAL_ARGS, "--val-clips", "0"]) == 2
    assert _one_error_line(capsys.readouterr().err) == "error: --val-clips must be >= 1, got 0"


def test_library_entry_points_refuse_what_the_cli_refuses(tmp_path, tiny_model):
    from train.image_clips import FolderClips, ImageClips

    with pytest.raises(DataError, match="max_frames must be >= 1, got 0"):
        FolderClips([], ["a"], max_frames=0)  # was read as "all frames"
    with pytest.raises(DataError, match="max_clips must be >= 1, got 0"):
        ImageClips(None, frames=2, max_clips=0)  # was read as "all clips"
    with pytest.raises(TrainError, match="clip_grad_norm must be >= 0"):  # was "no clipping"
        loop.train_one_epoch(tiny_model, [], torch.optim.SGD(tiny_model.parameters(), lr=0.1), torch.device("cpu"), 0,
                             clip_grad_norm=-1.0)
    args = parse_args([*TINY_ARGS, "--out", str(tmp_path / "o")])
    args.clip_grad = -1.0  # fit called without parse_args checks the numbers itself
    with pytest.raises(TrainError, match="--clip-grad must be >= 0, got -1.0"):
        engine.fit(args)
    assert not (tmp_path / "o").exists()


def test_data_specs_refuse_zero_instead_of_reading_all(tmp_path):
    from test_data import _png

    for split in ("train", "test"):
        for cls in ("a", "b"):
            for i in range(4):
                _png(tmp_path / "img" / split / cls / f"{i}.png", 10 * i)
                _png(tmp_path / "clips" / cls / f"c{split}" / f"{i}.png", 10 * i)
    with pytest.raises(DataError, match="num_clips must be >= 1, got 0"):
        build_dataset(DataSpec(name="cifar10", data_dir=str(tmp_path / "img"), frames=2, num_clips=0), "train")
    with pytest.raises(DataError, match="frames must be >= 1, got 0"):
        build_dataset(DataSpec(name="folder", data_dir=str(tmp_path / "clips"), frames=0), "train")


# --------------------------------------------------------------------------------------------------------------------
# output paths checked before the work; nothing replaced without --force
# --------------------------------------------------------------------------------------------------------------------
def test_train_out_that_is_a_file_or_read_only_fails_before_the_work(tmp_path, capsys, monkeypatch):
    _no_work(monkeypatch)
    (tmp_path / "file").write_text("not a folder")
    assert run_train(tmp_path / "file", "--force") == 2
    assert _one_error_line(capsys.readouterr().err) == f"error: --out {tmp_path / 'file'} is a file, not a folder"
    assert (tmp_path / "file").read_text() == "not a folder"
    _read_only(monkeypatch, tmp_path / "ro")
    (tmp_path / "ro").mkdir()
    assert run_train(tmp_path / "ro" / "run") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--out" in line and "permission denied" in line and not (tmp_path / "ro" / "run").exists()


def test_evaluate_outputs_are_checked_before_the_work(tmp_path, finished_run, capsys, monkeypatch):
    ckpt = tmp_path / "ck.pt"
    shutil.copy(finished_run / "best.pt", ckpt)
    before = ckpt.read_bytes()
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "old.json").write_text("{}")
    (tmp_path / "mine.png").write_bytes(b"\x89PNG\r\n\x1a\n a user's picture")
    _no_work(monkeypatch)
    cases = [
        (["--confusion", str(ckpt)], "--confusion", "must end in .png"),
        (["--json", str(ckpt)], "--json", "must end in .json"),
        (["--confusion", str(tmp_path / "folder.png")], "--confusion", "is a folder"),
        (["--json", str(tmp_path / "old.json")], "--json", "already exists; pass --force"),
        (["--confusion", str(tmp_path / "mine.png")], "--confusion", "already exists; pass --force"),
    ]
    for extra, what, message in cases:
        assert eval_main([str(ckpt), *EVAL_ARGS, *extra]) == 2, extra
        line = _one_error_line(capsys.readouterr().err)
        assert what in line and message in line, line
    assert ckpt.read_bytes() == before and (tmp_path / "old.json").read_text() == "{}"
    _read_only(monkeypatch, tmp_path / "ro")
    (tmp_path / "ro").mkdir()
    assert eval_main([str(ckpt), *EVAL_ARGS, "--json", str(tmp_path / "ro" / "r.json")]) == 2
    assert "permission denied" in _one_error_line(capsys.readouterr().err)


def test_evaluate_force_replaces_and_the_default_png_replaces_only_its_own(tmp_path, finished_run, capsys):
    ckpt = tmp_path / "ck.pt"
    shutil.copy(finished_run / "best.pt", ckpt)
    (tmp_path / "old.json").write_text("{}")
    stale = tmp_path / f".old.json.{dead_pid()}.k3j5h7.tmp"  # a killed earlier write of the same file
    stale.write_text('{"half')
    default_png = tmp_path / "confusion_test.png"
    default_png.write_bytes(b"\x89PNG\r\n\x1a\n someone else's picture")
    assert eval_main([str(ckpt), *EVAL_ARGS, "--json", str(tmp_path / "old.json")]) == 2  # the default PNG
    assert "--confusion (default: beside the checkpoint)" in _one_error_line(capsys.readouterr().err)
    assert default_png.read_bytes().endswith(b"someone else's picture")
    from train.evaluate import CONFUSION_MARK, is_confusion_png

    assert eval_main([str(ckpt), *EVAL_ARGS, "--json", str(tmp_path / "old.json"), "--force"]) == 0
    assert json.loads((tmp_path / "old.json").read_text())["clips"] == 4 and not stale.exists()
    assert is_confusion_png(default_png) and CONFUSION_MARK.encode() in default_png.read_bytes()
    capsys.readouterr()
    assert eval_main([str(ckpt), *EVAL_ARGS]) == 0  # its own earlier matrix is replaced without --force
    assert "confusion matrix: " + str(default_png) in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------------------
# devices and downloads
# --------------------------------------------------------------------------------------------------------------------
def test_unknown_devices_list_the_valid_ones(tmp_path, finished_run, capsys, monkeypatch):
    assert run_train(tmp_path / "o", "--device", "tpu") == 2
    assert _one_error_line(capsys.readouterr().err) == ("error: --device 'tpu' is not a device training runs on; "
                                                        "valid: auto, cpu, cuda, cuda:N")
    assert eval_main([str(finished_run / "best.pt"), *EVAL_ARGS, "--device", "tpu"]) == 2
    assert "valid: auto, cpu, cuda, cuda:N" in _one_error_line(capsys.readouterr().err)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TrainError, match="torch sees no CUDA GPU; use --device cpu or auto"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(TrainError, match=r"torch sees 1 CUDA GPU\(s\), cuda:0 to cuda:0"):
        resolve_device("cuda:3")


def test_download_while_offline_is_one_line_that_says_how_to_go_on(tmp_path, capsys, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match=r"--download: fetching CIFAR-10 into .* failed .*Temporary failure in name "
                                        r"resolution.*put CIFAR-10 there by hand: an ImageFolder tree"):
        build_dataset(DataSpec(name="cifar10", data_dir=str(tmp_path / "c"), download=True), "train")
    rc = train_main([*TINY_ARGS, "--data", "cifar10", "--data-dir", str(tmp_path / "c"), "--download",
                     "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "by hand" in _one_error_line(capsys.readouterr().err)


def test_evaluate_of_a_text_file_named_pt_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("hello, this is text\n")
    assert eval_main([str(tmp_path / "notes.pt"), *EVAL_ARGS]) == 2
    assert "not a PyTorch checkpoint" in _one_error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------------------------------------------------
# forced restarts, resume checks, stale temporaries, what an interruption says
# --------------------------------------------------------------------------------------------------------------------
def _interrupt(monkeypatch, where: str):
    if where == "first epoch":
        def stop(*a, **k):
            raise KeyboardInterrupt

        monkeypatch.setattr(engine, "train_one_epoch", stop)
    else:  # while writing the first last.pt (best.pt already written)
        real = engine.save_checkpoint

        def save(path, *a, **k):
            if path.name == "last.pt":
                raise KeyboardInterrupt
            return real(path, *a, **k)

        monkeypatch.setattr(engine, "save_checkpoint", save)


def test_force_restart_killed_before_its_first_epoch_leaves_nothing_to_resume(run_copy, capsys, monkeypatch):
    old_id = json.loads((run_copy / "config.json").read_text()).get("run_id")
    stale = [run_copy / f".last.pt.{dead_pid()}.abc123.tmp", run_copy / ".best.pt.k2j4h5g6.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    (run_copy / "notes.txt").write_text("mine")
    _interrupt(monkeypatch, "first epoch")
    assert run_train(run_copy, "--force", "--lr", "5e-4", "--epochs", "2") == 130
    err = capsys.readouterr().err
    assert "stopped before the first epoch finished; no checkpoint was written" in err
    assert "is in last.pt" not in err
    for name in ("last.pt", "best.pt", "metrics.json"):
        assert not (run_copy / name).exists(), name  # the old run's files went before anything new was written
    assert not any(p.exists() for p in stale)
    cfg = json.loads((run_copy / "config.json").read_text())
    assert cfg["args"]["lr"] == 5e-4 and cfg["run_id"] != old_id
    assert (run_copy / "notes.txt").read_text() == "mine"
    monkeypatch.undo()
    assert train_main(["--resume", str(run_copy)]) == 2
    assert "no last.pt there (the run never finished an epoch)" in _one_error_line(capsys.readouterr().err)


def test_resume_refuses_a_config_and_last_pt_of_different_runs(run_copy, capsys, monkeypatch):
    _no_work(monkeypatch)
    cfg = json.loads((run_copy / "config.json").read_text())
    last_id = cfg.get("run_id")
    for other in ("0" * 32, None):  # another run's config.json, or one from before run ids
        cfg["run_id"] = other
        (run_copy / "config.json").write_text(json.dumps(cfg))
        assert train_main(["--resume", str(run_copy), "--epochs", "3"]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"config.json (run {other}) and last.pt (run {last_id}) belong to different runs" in line


def test_resume_of_a_finished_run_writes_nothing(run_copy, capsys, monkeypatch):
    before = {n: (run_copy / n).read_bytes() for n in ("config.json", "last.pt", "metrics.json")}
    stale = run_copy / f".last.pt.{dead_pid()}.x1y2z3.tmp"
    stale.write_bytes(b"135 MB, once")
    _no_work(monkeypatch)
    assert train_main(["--resume", str(run_copy), "--epochs", "1"]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: --resume {run_copy}: the run has already finished 2 epochs, so --epochs 1 would end before where it "
        "stands; give --epochs 3 or more to extend it")
    assert train_main(["--resume", str(run_copy)]) == 0
    assert not stale.exists()  # removed at the start, even when nothing else is done
    assert {n: (run_copy / n).read_bytes() for n in before} == before


def test_interrupt_while_writing_the_first_last_pt_says_what_is_true(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _interrupt(monkeypatch, "first last.pt")
    assert run_train(out, "--epochs", "2") == 130
    err = capsys.readouterr().err
    assert "best.pt in" in err and "last.pt (the training state) was not written, so there is nothing to resume" in err
    assert (out / "best.pt").is_file() and not (out / "last.pt").exists() and not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    assert train_main(["--resume", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no last.pt there, only best.pt: the run was stopped while saving its first epoch" in line
    assert "never finished an epoch" not in line


def test_non_finite_training_loss_is_one_line(tmp_path, capsys, monkeypatch):
    def nan_loss(frame_logits, clip_logits, *a, **k):
        nan = (frame_logits.sum() + clip_logits.sum()) * float("nan")
        return nan, nan, nan

    monkeypatch.setattr(loop, "sequence_loss", nan_loss)  # the loss lives with the loops in train.loop
    assert run_train(tmp_path / "o", "--epochs", "1") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "training loss is nan at epoch 0" in line and "no epoch was saved" in line


def test_evaluate_refuses_a_checkpoint_with_nan_weights(tmp_path, finished_run):
    ckpt = torch.load(finished_run / "best.pt", weights_only=True)
    ckpt["state_dict"]["clip_head.weight"] = torch.full_like(ckpt["state_dict"]["clip_head.weight"], float("nan"))
    torch.save(ckpt, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="non-finite|NaN"):
        evaluate_model(tmp_path / "nan.pt", data="synthetic", frames=4, num_clips=4, device="cpu")
