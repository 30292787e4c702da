"""``python -m benchmarks.decode`` in miniature: it writes its videos, times every task and records the result (no
number is asserted: speed is measured, never tested)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("av")


def test_decode_benchmark_records_every_task(tmp_path, capsys):
    from benchmarks.decode import main

    args = ["--out", str(tmp_path), "--prefix", "mini", "--seconds", "0.4", "--fps", "10", "--size", "32", "48",
            "--rounds", "1", "--gap", "0", "--threads", "1"]
    assert main(args) == 0
    result = json.loads((tmp_path / "mini.json").read_text())
    tasks = {r["task"]: r for r in result["results"]}
    assert set(tasks) == {f"{kind} {g}{suffix}" for g in ("gop250", "gop30")
                          for kind, suffix in (("open", ""), ("uniform16", " @24x24"), ("sequential", " @24x24"))} | {
        "sequential gop250 @native (RGB only)", "model demo B1 T16", "model reference B1 T16"}
    assert tasks["sequential gop30 @24x24"]["frames"] == 4 and tasks["uniform16 gop30 @24x24"]["frames"] == 16
    assert all(r["median_ms"] > 0 and r["cpu_median_ms"] >= 0 for r in result["results"])
    assert set(result["classify_clip"]) == {"gop250 + demo", "gop250 + reference", "gop30 + demo",
                                            "gop30 + reference"}
    assert len(result["load_average_before"]) == 3 and result["environment"]["av"]
    assert "/" not in result["videos"]["gop250"]["path"]  # no machine paths in a recorded result
    assert "| model demo B1 T16 |" in (tmp_path / "mini.md").read_text()
    capsys.readouterr()
    assert main(args) == 2  # an existing result is kept without --force
    assert "already exists; pass --force" in capsys.readouterr().err
