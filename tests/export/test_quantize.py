"""int8 quantization of an fp32 export (real ONNX Runtime quantization and inference on the CPU): graph structure,
agreement with fp32, padding, streaming, the runtime, the verification gate, and every error path."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

import runtime  # noqa: E402
from export.errors import ExportError, ExportOverwriteError, ExportVerificationError  # noqa: E402
from export.int8 import INT8, QUANTIZED_OPS  # noqa: E402
from export.onnx_graph import check_lstm_structure, read_metadata  # noqa: E402
from export.quantize import main, quantize_export  # noqa: E402
from export.to_onnx import export_onnx  # noqa: E402
from runtime.checkpoint import save_checkpoint  # noqa: E402
from runtime.model import ModelConfig, build_random_model  # noqa: E402
from tests.conftest import TINY_CONFIG, run_cli  # noqa: E402


def _clips(n, t=4, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal((n, t, 3, 16, 16))).astype(np.float32)


@pytest.fixture(scope="module")
def fp32_dir(tmp_path_factory, tiny_checkpoint):
    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("fp32"), "fp32").paths["model"].parent


# int8's top-1 agreement with fp32 on random clips is a matter of near-ties for a random model: its clip logits are all
# below 0.2 and their top-2 margins below 0.045. On an AMD EPYC (AVX-512 VNNI), 45 of the 48 clips agree (0.9375 in
# every run under OMP_NUM_THREADS 1 and 2), and 10 of the 48 have a margin below twice their int8 logit deviation:
# another CPU's kernels (Intel AMX) round some activations differently, and any of those 10 may flip there. 0.5 holds
# while half the clips agree, and fails a quantization that scrambles the decisions (1/3 for 3 classes). How close
# int8 is to fp32 is asserted on the logits instead (INT8_CLIP_REL_MAX).
MIN_AGREEMENT = 0.5
# The relative error of the int8 clip logits: 0.0137 on that AMD EPYC (both thread settings), set by the quantization
# steps (int32 accumulation is exact with VNNI and AMX); ranges calibrated on near-zero frames give 0.18.
INT8_CLIP_REL_MAX = 0.1


@pytest.fixture(scope="module")
def int8(fp32_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8")
    return quantize_export(fp32_dir, out, _clips(16, seed=1), _clips(48, seed=2), min_agreement=MIN_AGREEMENT,
                           data_description="N(0,1) test clips")


def _ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _run(path, frames, lengths=None):
    with runtime.load(path, device="cpu") as runner:
        return runner.infer(frames, lengths)


def test_cnn_is_quantized_and_the_bilstm_stays_float(int8, fp32_dir):
    for graph in ("model", "cnn"):
        ops = _ops(int8.paths[graph])
        assert ops.count("QuantizeLinear") >= 10 and ops.count("DequantizeLinear") >= 20  # QDQ around the convs
        assert ops.count("Conv") == _ops(fp32_dir / f"{graph}.onnx").count("Conv")
    # The recurrence is untouched: native bidirectional LSTMs with sequence_lens wired, float weights.
    model = onnx.load(str(int8.paths["model"]))
    assert len(check_lstm_structure(model, TINY_CONFIG.num_layers, "lengths")) == TINY_CONFIG.num_layers
    lstm_inputs = {i for n in model.graph.node if n.op_type == "LSTM" for i in n.input}
    quantized_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert not lstm_inputs & quantized_outputs  # no int8 weights fed to the LSTM
    bilstm, ref = onnx.load(str(int8.paths["bilstm"])), onnx.load(str(fp32_dir / "bilstm.onnx"))
    assert [n.op_type for n in bilstm.graph.node] == [n.op_type for n in ref.graph.node]


def test_metadata_and_report(int8, fp32_dir):
    src = read_metadata(fp32_dir / "model.onnx")
    for graph, path in int8.paths.items():
        meta = read_metadata(path)
        assert meta["precision"] == INT8 and meta["graph"] == graph
        assert meta["checkpoint_sha256"] == src["checkpoint_sha256"]
        assert meta["quantization"]["quantized_ops"] == list(QUANTIZED_OPS)
    report = json.loads(int8.report_path.read_text())
    v = report["verification"]
    assert report["ok"] and v["clips"] == 48 and v["clip_agreement"] >= MIN_AGREEMENT
    assert 0 < v["clip_logits_rel"] < INT8_CLIP_REL_MAX and v["padded_lengths"] == [4, 2, 1, 1]
    assert report["quantization"]["calibration_clips"] == 16 and report["quantization"]["data"] == "N(0,1) test clips"


def test_runtime_runs_int8_close_to_fp32_with_exact_padding(int8, fp32_dir):
    frames = _clips(3, t=6, seed=9)
    lengths = np.array([6, 3, 1], dtype=np.int32)
    got = _run(int8.paths["model"], frames, lengths)
    want = _run(fp32_dir / "model.onnx", frames, lengths)
    for key in ("frame_logits", "clip_logits"):
        rel = np.linalg.norm(got[key] - want[key]) / np.linalg.norm(want[key])
        assert 0 < rel < 0.2, (key, rel)  # quantized (not a copy of fp32), but close
    # A padded clip gives what it gives alone: the padding never leaks into real frames in either direction.
    alone = _run(int8.paths["model"], frames[1:2, :3])
    np.testing.assert_allclose(got["clip_logits"][1], alone["clip_logits"][0], rtol=1e-4, atol=1e-5)


def test_streaming_on_the_int8_export_equals_its_model_graph(int8):
    frames = _clips(1, t=7, seed=4)[0]
    with runtime.StreamingClassifier(int8.paths["model"].parent, window=5) as stream:
        for f in frames:
            out = stream.push(f)
    want = _run(int8.paths["model"], frames[None, -5:])
    np.testing.assert_allclose(out.clip_logits, want["clip_logits"][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.frame_logits, want["frame_logits"][0, -1], rtol=1e-4, atol=1e-5)


def test_unrepresentative_calibration_fails_the_gate_and_writes_nothing(fp32_dir, tmp_path):
    # Ranges calibrated on near-zero frames clip every real activation: predictions change, the gate says so.
    with pytest.raises(ExportVerificationError, match="int8 export failed: it agrees with fp32 on") as info:
        quantize_export(fp32_dir, tmp_path / "bad", _clips(8, scale=1e-3), _clips(48, seed=2), min_agreement=0.99)
    assert info.value.report["verification"]["clip_agreement"] < 0.99
    assert info.value.report["failed"] and "representative calibration clips" in str(info.value)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_bad_requests_are_refused(fp32_dir, int8, tmp_path, tiny_checkpoint):
    good = _clips(4)
    with pytest.raises(ExportError, match=r"must be float \(N, T, 3, 16, 16\)"):
        quantize_export(fp32_dir, tmp_path / "a", _clips(4)[:, :, :, :8], good)
    with pytest.raises(ExportError, match="dtype uint8"):
        quantize_export(fp32_dir, tmp_path / "a", (good * 0).astype(np.uint8), good)
    nan = good.copy()
    nan[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(ExportError, match="NaN or Inf"):
        quantize_export(fp32_dir, tmp_path / "a", good, nan)
    with pytest.raises(ExportError, match="must differ"):
        quantize_export(fp32_dir, fp32_dir, good, good)
    with pytest.raises(ExportError, match="starts from the fp32 export"):
        quantize_export(int8.paths["model"].parent, tmp_path / "b", good, good)
    with pytest.raises(ExportError, match="has no model.onnx"):
        quantize_export(tmp_path, tmp_path / "c", good, good)
    with pytest.raises(ExportError, match="unknown calibration method"):
        quantize_export(fp32_dir, tmp_path / "a", good, good, method="vibes")
    # Another export (here this checkpoint's fp32 graphs) in --out is not overwritten without force.
    other = export_onnx(tiny_checkpoint, tmp_path / "other", "fp32").paths["model"].parent
    with pytest.raises(ExportOverwriteError, match="holds another export"):
        quantize_export(fp32_dir, other, good, good, min_agreement=0.0)
    with pytest.raises(ExportError, match="2 verification labels for 4 clips"):
        quantize_export(fp32_dir, tmp_path / "a", good, good, verification_labels=[0, 1])
    assert not (tmp_path / "a").exists()  # every refusal above came before any file was written


def test_tensorrt_build_refuses_int8_graphs(int8, tmp_path):
    from export.errors import PrecisionCheckError
    from export.to_trt import build_engine

    with pytest.raises(PrecisionCheckError, match="int8 .QDQ. graph from export.quantize"):
        build_engine(int8.paths["cnn"], tmp_path / "cnn.engine", backend="tensorrt_rtx", compute_capability="8.6")


def test_python_m_export_quantize_calibrates_on_training_data(tmp_path, capsys):
    from train.clips import SYNTHETIC_MEAN, SYNTHETIC_STD
    from train.synthetic import synthetic_class_names

    config = ModelConfig(**{**TINY_CONFIG.to_dict(), "num_classes": 4})
    ckpt = save_checkpoint(tmp_path / "syn.pt", build_random_model(config, seed=3),
                           class_names=synthetic_class_names(4), mean=list(SYNTHETIC_MEAN), std=list(SYNTHETIC_STD))
    export_onnx(ckpt, tmp_path / "fp32", "fp32")
    out = tmp_path / "int8"
    res = run_cli("export.quantize", "fp32", "--out", "int8", "--data", "synthetic", "--frames", "5",
                  "--calibration-clips", "8", "--verify-clips", "16", "--min-agreement", "0", cwd=tmp_path)
    printed = res.stdout
    assert res.returncode == 0, printed + res.stderr[-3000:]
    assert "clip top-1 agreement" in printed and (out / "model.onnx").is_file()
    report = json.loads((out / "export_report.json").read_text())
    assert report["verification"]["clips"] == 16 and "synthetic" in report["quantization"]["data"]
    assert 0 <= report["verification"]["clip_accuracy_int8"] <= 1 and "clip accuracy on those clips" in printed
    assert main([str(tmp_path / "fp32"), "--out", str(tmp_path / "x"), "--data", "synthetic", "--frames", "4",
                 "--calibration-clips", "0"]) == 2
    assert "--calibration-clips must be >= 1" in capsys.readouterr().err


def test_cli_refuses_data_with_other_classes(fp32_dir, tmp_path, capsys):
    assert main([str(fp32_dir), "--out", str(tmp_path / "x"), "--data", "synthetic", "--frames", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: calibration data:") and "classes" in err


def test_benchmarks_take_a_given_int8_export_only_if_it_passed_for_this_checkpoint(int8, tiny_checkpoint, tmp_path):
    from benchmarks.contenders import prepare_contender
    from benchmarks.context import BenchContext
    from tests.conftest import TINY_CLASSES, TINY_MEAN, TINY_STD

    folder = int8.paths["model"].parent
    ctx = BenchContext(tiny_checkpoint, "cpu", tmp_path / "w1", int8_dir=folder)
    try:
        prepared = prepare_contender(ctx, "ort-int8", "model", 1, 3)
        assert prepared.precision == "int8-data" and prepared.info["int8_verified_clips"] == 48
        assert set(prepared.probe()) == {"frame_logits", "clip_logits"}
    finally:
        ctx.close()
    other = save_checkpoint(tmp_path / "other.pt", build_random_model(TINY_CONFIG, seed=5), class_names=TINY_CLASSES,
                            mean=TINY_MEAN, std=TINY_STD)
    # Another checkpoint's int8 folder is refused as soon as the context is made (by the checkpoint sha256 its
    # export records), before any contender is prepared.
    with pytest.raises(ValueError, match="was exported from another checkpoint"):
        BenchContext(other, "cpu", tmp_path / "w2", int8_dir=folder)


def test_recalibration_replaces_this_checkpoints_int8_but_not_another_checkpoints(fp32_dir, tmp_path):
    from tests.conftest import TINY_CLASSES, TINY_MEAN, TINY_STD

    out = tmp_path / "int8"
    first = quantize_export(fp32_dir, out, _clips(8, seed=1), _clips(8, seed=2), min_agreement=0.0)
    second = quantize_export(fp32_dir, out, _clips(8, seed=3), _clips(8, seed=2), min_agreement=0.0, method="percentile")
    assert json.loads(second.report_path.read_text())["quantization"]["method"] == "percentile"
    assert first.paths == second.paths
    other_ckpt = save_checkpoint(tmp_path / "other.pt", build_random_model(TINY_CONFIG, seed=7),
                                 class_names=TINY_CLASSES, mean=TINY_MEAN, std=TINY_STD)
    other_fp32 = export_onnx(other_ckpt, tmp_path / "other-fp32", "fp32").paths["model"].parent
    with pytest.raises(ExportOverwriteError, match="not this checkpoint's int8 model graph"):
        quantize_export(other_fp32, out, _clips(8), _clips(8), min_agreement=0.0)
    (out / "cnn.onnx").write_bytes(b"garbage")  # an unreadable file is another export too, not a crash
    with pytest.raises(ExportOverwriteError, match="cnn.onnx holds another export"):
        quantize_export(fp32_dir, out, _clips(8), _clips(8), min_agreement=0.0)


def test_single_clip_and_single_frame_verification(fp32_dir, tmp_path):
    # One verification clip: the padded-batch check repeats it (rows of lengths 4, 2), so padding is still checked.
    one = quantize_export(fp32_dir, tmp_path / "one", _clips(8, seed=1), _clips(1, seed=2), min_agreement=0.0)
    v = one.report["verification"]
    assert v["clips"] == 1 and v["padded_lengths"] == [4, 2] and v["padded_rel"] <= 1e-4
    assert v["composition_rel"] <= 1e-4
    # T = 1: nothing to pad; reported as not checked rather than as a fake pass.
    t1 = quantize_export(fp32_dir, tmp_path / "t1", _clips(8, t=1, seed=1), _clips(3, t=1, seed=2),
                         min_agreement=0.0)
    assert t1.report["verification"]["padded_rel"] is None and t1.report["ok"]
