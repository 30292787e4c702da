"""``python -m benchmarks.backbones`` at the smallest size (synthetic clips, one backbone, 16x16): the whole chain
(train, export, int8, one interleaved timing run) writes its table, JSON and plot, a rerun resumes from its work
folder, and bad input is one line. Untimed: the numbers are not checked, only that every stage ran."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from benchmarks.backbones import DATA_ENV, HEADING, main

TINY = ["--data", "synthetic", "--backbones", "mobilenet_v3_small", "--frames", "5", "--frame-size", "16",
        "--train-clips", "8", "--val-clips", "8", "--epochs", "1", "--batch-size", "4", "--hidden-size", "8",
        "--calibration-clips", "4", "--min-agreement", "0", "--time", "4", "--rounds", "2", "--warmup", "0"]


def _cli(*argv):
    return run_cli("benchmarks.backbones", *argv, timeout=900)


def test_the_cli_trains_exports_quantizes_and_times_each_backbone(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "out"
    proc = _cli(*TINY, "--out", str(out), "--prefix", "bb", "--work", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "bb.json").read_text())
    result = data["result"]
    assert data["command"].startswith("python -m benchmarks.backbones --data synthetic")
    assert len(result["load_average_before"]) == 3 and data["environment"]["onnxruntime"]
    (row,) = result["rows"]
    assert row["backbone"] == "mobilenet_v3_small" and row["feature_dim"] == 576 and row["epochs"] == 1
    assert set(row["latency"]) == {"eager-fp32", "ort-fp32", "ort-int8"}
    assert all(len(lat["samples_ms"]) == 2 for lat in row["latency"].values())
    assert 0 <= row["clip_acc"] <= 1 and row["int8_agreement"] is not None
    assert (out / "bb.md").read_text().startswith(HEADING) and (out / "bb.png").read_bytes()[:4] == b"\x89PNG"
    assert "| mobilenet_v3_small | 576 |" in proc.stdout
    _assert_one_point_per_runtime(result)
    # A rerun finds the training run finished and the exports made from its checkpoint, and replaces its own files
    # (without --force).
    with open(out / "bb.md", "a") as f:
        f.write("a line the rerun replaces\n")
    again = _cli(*TINY, "--out", str(out), "--prefix", "bb", "--work", str(tmp_path / "work"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "a line the rerun replaces" not in (out / "bb.md").read_text()
    log = (tmp_path / "work" / "mobilenet_v3_small" / "train.log").read_text()
    assert log.count("-m export.to_onnx") == 1 and log.count("-m export.quantize") == 1
    assert "already finished all 1 epochs; nothing to do" in log
    changed = _cli(*TINY[:-6], "--epochs", "2", "--time", "4", "--rounds", "2", "--out", str(out), "--prefix", "bb",
                   "--work", str(tmp_path / "work"))
    assert changed.returncode == 2 and "holds runs of another training budget" in changed.stderr


def _assert_one_point_per_runtime(result: dict) -> None:
    """The plot has one point per backbone and runtime, at (median latency, clip accuracy)."""
    plt = pytest.importorskip("matplotlib.pyplot")
    from benchmarks.backbones import plot_backbones

    fig = plot_backbones(result, plt)
    points = sorted(tuple(c.get_offsets()[0]) for c in fig.axes[0].collections if len(c.get_offsets()))
    plt.close(fig)
    (row,) = result["rows"]
    accuracy = {"eager-fp32": row["clip_acc"], "ort-fp32": row["clip_acc"], "ort-int8": row["int8_clip_acc"]}
    assert points == sorted((row["latency"][c]["p50_ms"], acc) for c, acc in accuracy.items())


def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    cases = [(["--out", str(tmp_path)], f"--data cifar10 needs the CIFAR-10 folder: give --data-dir DIR or set "
                                        f"{DATA_ENV}"),
             (["--data", "synthetic", "--backbones", "resnet18,vgg16", "--out", str(tmp_path)],
              "--backbones resnet18,vgg16: valid names are resnet18, resnet34"),
             (["--data", "synthetic", "--rounds", "0", "--out", str(tmp_path)], "--rounds must be >= 1, got 0")]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    (tmp_path / "backbones.md").write_text("# my notes\n")
    assert main(["--data", "synthetic", "--out", str(tmp_path)]) == 2
    assert "backbones.md" in capsys.readouterr().err
