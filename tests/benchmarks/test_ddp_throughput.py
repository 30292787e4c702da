"""``python -m benchmarks.ddp_throughput``: a tiny run as a user runs it, and its refusals before any run starts (the
measurement itself is recorded in benchmarks/results/, never asserted)."""

from __future__ import annotations

import json

from conftest import run_cli

from benchmarks.ddp_throughput import main


def test_one_round_of_one_and_two_processes(tmp_path):
    proc = run_cli("benchmarks.ddp_throughput", "--nprocs", "1,2", "--rounds", "1", "--epochs", "2",
                      "--train-clips", "8", "--batch-size", "4", "--out", tmp_path, "--prefix", "tiny")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "tiny.json").read_text())
    runs = data["result"]["runs"]
    assert [(r["round"], r["nproc"]) for r in runs] == [(0, 1), (0, 2)]
    assert all(len(r["epoch_train_s"]) == 2 and len(r["clips_per_s"]) == 1 for r in runs)  # epoch 1: the warm-up
    assert set(data["result"]["summary"]) == {"1", "2"} and data["environment"]["host_cpu"]
    assert (tmp_path / "tiny.md").read_text().startswith("# Data-parallel training throughput: ")


def test_bad_numbers_are_refused_before_any_run(tmp_path, capsys):
    for argv in (["--nprocs", "0"], ["--nprocs", "1,x"], ["--epochs", "1"], ["--threads", "-1"]):
        assert main([*argv, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and ("--nprocs" in err or "--epochs" in err), err
    assert not any(tmp_path.iterdir())


def test_a_file_these_tools_did_not_write_is_not_replaced(tmp_path, capsys):
    (tmp_path / "mine.md").write_text("my notes\n")
    assert main(["--out", str(tmp_path), "--prefix", "mine"]) == 2
    assert "error: " in capsys.readouterr().err and (tmp_path / "mine.md").read_text() == "my notes\n"
