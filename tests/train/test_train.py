"""Training library and CLIs: loss masking, RNG state, `python -m train` end to end, exact resume, atomic
checkpoints, refusals and clear errors, and `python -m train.evaluate`."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import TINY_ARGS, TINY_CONFIG, run_cli, run_train

import train.engine as engine
from runtime.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_dict
from train.__main__ import main as train_main
from train.__main__ import parse_args
from train._checks import TrainError
from train.evaluate import evaluate_model
from train.evaluate import main as eval_main
from train.loop import sequence_loss, shuffle_within_clips
from train.options import build_optimizer
from train.run_state import capture_rng_state, check_out_dir, restore_rng_state


# --------------------------------------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------------------------------------
def test_sequence_loss_sums_real_steps_and_ignores_padding():
    torch.manual_seed(0)
    frame_logits, clip_logits = torch.randn(2, 5, 3), torch.randn(2, 3)
    lengths, labels = torch.tensor([5, 2]), torch.tensor([1, 2])
    total, frame, clip = sequence_loss(frame_logits, clip_logits, lengths, labels)
    ce = torch.nn.functional.cross_entropy
    want_frame = (ce(frame_logits[0], labels[[0] * 5], reduction="sum")
                  + ce(frame_logits[1, :2], labels[[1] * 2], reduction="sum")) / 2
    torch.testing.assert_close(frame, want_frame)
    torch.testing.assert_close(clip, ce(clip_logits, labels))
    torch.testing.assert_close(total, want_frame + clip)
    garbage = frame_logits.clone()
    garbage[1, 2:] = 1e4  # padded steps of clip 1
    torch.testing.assert_close(sequence_loss(garbage, clip_logits, lengths, labels)[0], total)


def test_shuffle_within_clips_permutes_real_frames_only():
    frames = torch.arange(2 * 6, dtype=torch.float32).view(2, 6, 1, 1, 1).expand(2, 6, 3, 2, 2).clone()
    frames[1, 4:] = 0
    lengths = torch.tensor([6, 4])
    out = shuffle_within_clips(frames, lengths, torch.Generator().manual_seed(0))
    ids = out[:, :, 0, 0, 0]
    assert sorted(ids[0].tolist()) == list(range(6)) and sorted(ids[1, :4].tolist()) == [6, 7, 8, 9]
    assert torch.all(ids[1, 4:] == 0)  # padding stays at the end
    assert not torch.equal(out, frames)


def test_rng_state_round_trip_survives_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = capture_rng_state()
    torch.save({"rng": state}, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)["rng"]
    want = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    restore_rng_state(loaded)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == want


def test_optimizer_choices():
    model = torch.nn.Linear(3, 2)
    assert isinstance(build_optimizer(model, "sgd", 0.1, 1e-4), torch.optim.SGD)
    with pytest.raises(TrainError, match="valid choices: adamw, sgd"):
        build_optimizer(model, "adam", 0.1, 0.0)


def test_preset_and_command_line_precedence():
    args = parse_args(["--preset", "demo", "--epochs", "1"])
    assert args.backbone == "resnet18" and args.epochs == 1 and args.frame_size == [24, 24]
    assert parse_args(["--frame-size", "24"]).frame_size == [24, 24]
    with pytest.raises(TrainError, match="--frames must be >= 1"):
        parse_args(["--frames", "0"])


# --------------------------------------------------------------------------------------------------------------------
# the CLI end to end
# --------------------------------------------------------------------------------------------------------------------
def test_cli_end_to_end_writes_the_run_folder(finished_run):
    for name in ("last.pt", "best.pt", "metrics.json", "config.json"):
        assert (finished_run / name).is_file()
    assert not list(finished_run.glob(".*.tmp"))  # no temporary files left behind
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [0, 1]
    for m in metrics:
        for key in ("train_loss", "train_frame_loss", "train_clip_loss", "val_loss"):
            assert np.isfinite(m[key]) and m[key] > 0
        for key in ("train_frame_acc", "train_clip_acc", "val_frame_acc", "val_clip_acc", "val_shuffled_clip_acc"):
            assert 0.0 <= m[key] <= 1.0
        assert m["time"] > 0
    assert metrics[1]["train_lr"] < metrics[0]["train_lr"]  # cosine decay
    cfg = json.loads((finished_run / "config.json").read_text())
    assert cfg["args"]["epochs"] == 2 and cfg["args"]["hidden_size"] == TINY_CONFIG.hidden_size
    assert cfg["class_names"] == ["clockwise", "counterclockwise"]
    last = load_checkpoint(finished_run / "last.pt")
    assert last.config.hidden_size == TINY_CONFIG.hidden_size and last.class_names == cfg["class_names"]
    assert last.mean == cfg["mean"] and last.train_state["epoch"] == 1
    best = load_checkpoint(finished_run / "best.pt")
    assert best.train_state is None  # inference checkpoint: no optimizer state
    best_epoch = last.train_state["best_epoch"]
    assert metrics[best_epoch]["val_clip_acc"] == max(m["val_clip_acc"] for m in metrics)


def test_python_m_train_as_a_user_runs_it(tmp_path):
    res = run_cli("train", *TINY_ARGS, "--epochs", "1", "--out", "runs/tiny", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"  # relative to the working directory
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "last.pt", "metrics.json"]
    assert [m["epoch"] for m in json.loads((run / "metrics.json").read_text())] == [0]
    assert "epoch 1/1 " in res.stderr and "done: best test clip accuracy" in res.stderr and "runs/tiny" in res.stderr
    assert load_checkpoint(run / "best.pt").class_names == ["clockwise", "counterclockwise"]


def test_resume_after_interruption_reproduces_uninterrupted_weights(tmp_path, monkeypatch, finished_run, capsys):
    real = engine.train_one_epoch

    def dies_in_second_epoch(model, loader, *args, **kwargs):
        if args[2] == 1:  # epoch index: kill the run mid-epoch, after one optimizer step
            batches = iter(loader)
            one = [next(batches)]
            real(model, one, *args, **kwargs)
            raise KeyboardInterrupt
        return real(model, loader, *args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", dies_in_second_epoch)
    out = tmp_path / "interrupted"
    assert run_train(out, "--epochs", "2") == 130
    assert f"last.pt in {out} holds epoch 1; continue with --resume {out}" in capsys.readouterr().err
    assert read_checkpoint_dict(out / "last.pt")["train_state"]["epoch"] == 0
    monkeypatch.setattr(engine, "train_one_epoch", real)
    assert train_main(["--resume", str(out), "--no-progress"]) == 0  # every other option from config.json

    want = read_checkpoint_dict(finished_run / "last.pt")
    got = read_checkpoint_dict(out / "last.pt")
    assert want["state_dict"].keys() == got["state_dict"].keys()
    for k, v in want["state_dict"].items():
        assert torch.equal(v, got["state_dict"][k]), k
    want_m = json.loads((finished_run / "metrics.json").read_text())
    got_m = json.loads((out / "metrics.json").read_text())
    for a, b in zip(want_m, got_m, strict=True):
        assert {k: v for k, v in a.items() if "time" not in k} == {k: v for k, v in b.items() if "time" not in k}


def test_interrupted_checkpoint_write_keeps_the_old_file(tmp_path, monkeypatch, finished_run, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = read_checkpoint_dict(run / "last.pt")
    real_save = torch.save

    def dies_mid_write(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", dies_mid_write)
    assert train_main(["--resume", str(run), "--epochs", "3"]) == 1  # one line, not a traceback
    assert capsys.readouterr().err.startswith("error: disk full (simulated)")
    monkeypatch.setattr(torch, "save", real_save)
    after = read_checkpoint_dict(run / "last.pt")
    assert after["train_state"]["epoch"] == before["train_state"]["epoch"] == 1
    for k, v in before["state_dict"].items():
        assert torch.equal(v, after["state_dict"][k])
    assert not list(run.glob(".*.tmp"))


def test_refuses_non_empty_out_without_resume_or_force(tmp_path, capsys):
    out = tmp_path / "used"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert run_train(out, "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--resume" in err and "--force" in err
    assert (out / "notes.txt").read_text() == "keep me" and not (out / "last.pt").exists()
    check_out_dir(tmp_path / "new", resume=False, force=False)  # a new folder is fine
    with pytest.raises(TrainError, match="is not empty"):
        check_out_dir(out, resume=False, force=False)
    check_out_dir(out, resume=False, force=True)


def test_cli_trains_on_a_folder_of_clips_of_different_lengths(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, lengths in {"a": (2, 5), "b": (3, 4)}.items():
        for i, n in enumerate(lengths):
            for t in range(n):
                path = tmp_path / "clips" / cls / f"clip{i}" / f"{t}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path)
    out = tmp_path / "run"
    rc = train_main([*TINY_ARGS, "--data", "folder", "--data-dir", str(tmp_path / "clips"), "--frames", "6",
                     "--val-fraction", "0.5", "--epochs", "1", "--out", str(out)])
    assert rc == 0
    (record,) = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(record["train_loss"]) and 0 <= record["val_clip_acc"] <= 1
    assert load_checkpoint(out / "best.pt").class_names == ["a", "b"]


# --------------------------------------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------------------------------------
def test_unknown_backbone_and_data_set_list_choices(capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--backbone", "vgg16"])
    assert e.value.code == 2
    assert "resnet18" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(["--data", "mnist"])
    assert "synthetic" in capsys.readouterr().err
    from runtime.model import ModelConfig

    with pytest.raises(ValueError, match="valid choices: resnet18, resnet34, resnet50"):
        ModelConfig(backbone="vgg16")


def test_data_errors_come_back_as_exit_code_2(tmp_path, capsys):
    (tmp_path / "clips").mkdir()
    assert train_main(["--data", "folder", "--data-dir", str(tmp_path / "clips"), "--out",
                       str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "is empty" in err


def test_resume_of_damaged_checkpoint_is_a_clear_error(tmp_path, finished_run, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 3])
    assert train_main(["--resume", str(run), "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "not a readable checkpoint" in err
    with pytest.raises(TrainError, match="no last.pt"):
        (run / "last.pt").unlink()
        engine.fit(parse_args(["--resume", str(run)]))


def test_resume_with_another_model_config_is_refused(tmp_path, finished_run, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    assert train_main(["--resume", str(run), "--hidden-size", "16", "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "model config" in err and "'hidden_size': 32" in err


def test_evaluate_refuses_other_config_and_other_classes(tmp_path, tiny_checkpoint, finished_run):
    from train.eval_data import EvaluationError

    # conftest's tiny checkpoint has 3 classes: the synthetic data has 2 or 4.
    with pytest.raises(EvaluationError, match=r"has 3 classes \['left', 'right', 'still'\], but the synthetic data "
                                              r"has 2 \['clockwise', 'counterclockwise'\] or 4 \["):
        evaluate_model(tiny_checkpoint, data="synthetic", frames=4, num_clips=4, device="cpu")
    renamed = torch.load(finished_run / "best.pt", weights_only=True)
    renamed["class_names"] = ["up", "down"]
    torch.save(renamed, tmp_path / "renamed.pt")
    with pytest.raises(EvaluationError, match=r"the synthetic data has 2 classes \['clockwise', 'counterclockwise'\], "
                                              r"but .*renamed.pt has 2 classes \['up', 'down'\]"):
        evaluate_model(tmp_path / "renamed.pt", data="synthetic", frames=4, num_clips=4, device="cpu")
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["config"]["hidden_size"] = 8  # weights no longer fit the config
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="do not belong to a model of config"):
        load_checkpoint(tmp_path / "other.pt")


# --------------------------------------------------------------------------------------------------------------------
# python -m train.evaluate
# --------------------------------------------------------------------------------------------------------------------
def test_evaluate_cli_reports_and_writes_confusion_png(tmp_path, finished_run, capsys):
    png, js = tmp_path / "cm.png", tmp_path / "eval.json"
    rc = eval_main([str(finished_run / "best.pt"), "--data", "synthetic", "--frames", "4", "--val-clips", "6",
                    "--seed", "5", "--device", "cpu", "--confusion", str(png), "--json", str(js)])
    assert rc == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads(js.read_text())
    assert res["clips"] == 6 and sum(map(sum, res["confusion"])) == 6
    assert set(res["per_class_acc"]) == {"clockwise", "counterclockwise"}
    assert 0 <= res["clip_acc"] <= 1 and 0 <= res["shuffled_clip_acc"] <= 1
    printed = capsys.readouterr().out
    assert "clip accuracy" in printed and "shuffled clips" in printed and "counterclockwise" in printed
    # The training run's own held-out numbers: the same clips (same seed) give the same accuracy.
    metrics = json.loads((finished_run / "metrics.json").read_text())
    best_epoch = read_checkpoint_dict(finished_run / "last.pt")["train_state"]["best_epoch"]
    same = evaluate_model(finished_run / "best.pt", data="synthetic", frames=4, num_clips=4, seed=5,
                               device="cpu", shuffled=False)
    assert same["clip_acc"] == metrics[best_epoch]["val_clip_acc"]
    assert same["frame_acc"] == pytest.approx(metrics[best_epoch]["val_frame_acc"])


def test_python_m_train_evaluate_as_a_user_runs_it(tmp_path, finished_run):
    res = run_cli("train.evaluate", finished_run / "best.pt", "--data", "synthetic", "--frames", "4", "--val-clips",
                  "6", "--seed", "5", "--device", "cpu", "--confusion", "cm.png", "--json", "eval.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["clips"] == 6 and sum(map(sum, result["confusion"])) == 6
    assert "clip accuracy" in res.stdout and f"{result['clip_acc']:.4f}" in res.stdout, res.stdout


def test_evaluate_cli_bad_checkpoint_exit_code(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert eval_main([str(bad), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "not a PyTorch checkpoint" in err
