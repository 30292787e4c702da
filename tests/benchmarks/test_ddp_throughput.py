"""``python -m benchmarks.ddp_throughput``: its refusals, before any run starts (the measurement itself is recorded in
benchmarks/results/, never asserted)."""

from __future__ import annotations

from benchmarks.ddp_throughput import main


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
