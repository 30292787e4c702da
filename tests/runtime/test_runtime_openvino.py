"""The ONNX Runtime runner on OpenVINO's execution provider (the real onnxruntime-ep-openvino plugin, CPU device).

What must hold: the CNN really runs on OpenVINO (a plain providers list would silently fall back to the CPU EP), fp32
is exact on padded batches (OpenVINO's own LSTM is not: the BiLSTM stays on the CPU EP), bf16 is opt-in and within
its tolerance, and every misuse is refused with a message that says what is valid.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import runtime
from benchmarks.accuracy import TOLERANCES
from runtime.errors import RuntimeInputError
from runtime.streaming import StreamingClassifier

pytest.importorskip("onnxruntime")

from runtime.backends.openvino import openvino_unavailable_reason  # noqa: E402

if openvino_unavailable_reason():  # installed is not usable: on AMD CPUs the plugin lists no device
    pytest.skip(f"OpenVINO cannot run here: {openvino_unavailable_reason()}", allow_module_level=True)

from conftest import TINY_CONFIG, assert_threads_agree_with_one_thread  # noqa: E402

OPENVINO = "OpenVINOExecutionProvider"
H, W = TINY_CONFIG.frame_size


@pytest.fixture(scope="module")
def onnx_paths(tiny_checkpoint, tmp_path_factory):
    from export.to_onnx import export_onnx

    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("onnx-ov"), precision="fp32").paths


@pytest.fixture(scope="module")
def ov_model(onnx_paths):
    with runtime.load(onnx_paths["model"], providers=[OPENVINO], intra_op_threads=2) as r:
        yield r


def _frames(b, t, seed=0):
    return torch.randn(b, t, 3, H, W, generator=torch.Generator().manual_seed(seed)).numpy()


def _eager(model, x, lengths=None):
    with torch.no_grad():
        frame, clip = model(torch.from_numpy(x), None if lengths is None else torch.tensor(lengths))
    return {"frame_logits": frame.numpy(), "clip_logits": clip.numpy()}


def _rel(got, ref, lengths=None):
    """Norm-relative error over real (unpadded) frames and the clip logits, the larger of the two."""
    b, t = ref["frame_logits"].shape[:2]
    mask = np.ones((b, t), bool) if lengths is None else np.arange(t)[None] < np.asarray(lengths)[:, None]
    frame = np.linalg.norm(got["frame_logits"][mask] - ref["frame_logits"][mask]) / np.linalg.norm(
        ref["frame_logits"][mask])
    clip = np.linalg.norm(got["clip_logits"] - ref["clip_logits"]) / np.linalg.norm(ref["clip_logits"])
    return max(frame, clip)


@pytest.mark.parametrize("b,t,lengths", [(1, 1, None), (2, 6, None), (3, 8, [8, 5, 1]), (4, 5, [5, 5, 3, 1])])
def test_fp32_on_openvino_matches_eager_including_padded_batches(ov_model, tiny_model, b, t, lengths):
    x = _frames(b, t, seed=b * 10 + t)
    out = ov_model.infer(x, None if lengths is None else np.array(lengths))
    assert out["frame_logits"].shape == (b, t, 3) and out["clip_logits"].shape == (b, 3)
    assert _rel(out, _eager(tiny_model, x, lengths), lengths) <= 1e-4


def test_the_cnn_runs_on_openvino_and_the_bilstm_on_the_cpu_ep(ov_model, onnx_paths):
    assert ov_model.provider == OPENVINO
    assert ov_model.stage_providers == {"cnn": OPENVINO, "bilstm": "CPUExecutionProvider"}
    assert ov_model._cnn_session.get_providers()[0] == OPENVINO  # not a silent fallback to the CPU EP
    with runtime.load(onnx_paths["cnn"], providers=[OPENVINO]) as cnn:
        assert cnn.session.get_providers()[0] == OPENVINO and cnn.stage_providers == {"cnn": OPENVINO}
        x = _frames(2, 3)
        with runtime.load(onnx_paths["cnn"], device="cpu") as ref:
            np.testing.assert_allclose(cnn.infer(x)["features"], ref.infer(x)["features"], rtol=1e-4, atol=1e-5)
    with runtime.load(onnx_paths["bilstm"], providers=[OPENVINO]) as bilstm:
        # OpenVINO's LSTM ignores sequence_lens in the reverse direction, so this graph stays on the CPU EP.
        assert bilstm.provider == "CPUExecutionProvider" and bilstm.stage_providers == {"bilstm": "CPUExecutionProvider"}


def test_bf16_is_opt_in_and_within_its_tolerance(onnx_paths, tiny_model, ov_model):
    import onnxruntime as ort

    x = _frames(2, 8, seed=3)
    lengths = [8, 3]
    with runtime.load(onnx_paths["model"], providers=[OPENVINO], openvino_precision="bf16") as bf16:
        err = _rel(bf16.infer(x, np.array(lengths)), _eager(tiny_model, x, lengths), lengths)
    assert err <= TOLERANCES["bf16"]
    device = next(d for d in ort.get_ep_devices() if d.ep_name == OPENVINO)
    if "BF16" in device.ep_metadata.get("OPTIMIZATION_CAPABILITIES", ""):
        assert err > 1e-4  # bf16 really ran (f32 errs by ~4e-7 here): the option was not lost on the way
    # The default (f32) is the exact one: OpenVINO's own default on AMX/AVX-512 bf16 CPUs would be bf16.
    assert _rel(ov_model.infer(x, np.array(lengths)), _eager(tiny_model, x, lengths), lengths) <= 1e-4


def test_streaming_on_openvino_equals_the_full_model(onnx_paths, tiny_model):
    window = 4
    frames = np.random.default_rng(0).standard_normal((6, 3, H, W)).astype(np.float32)
    folder = onnx_paths["model"].parent
    with StreamingClassifier(folder, window=window, providers=[OPENVINO]) as stream:
        assert stream.cnn.provider == OPENVINO and stream.bilstm.provider == "CPUExecutionProvider"
        for n in range(1, len(frames) + 1):
            res = stream.push(frames[n - 1])
            ref = _eager(tiny_model, frames[max(0, n - window):n][None])
            np.testing.assert_allclose(res.clip_logits, ref["clip_logits"][0], rtol=1e-4, atol=1e-5)


def test_threads_give_the_same_results_as_one_thread(ov_model):
    inputs = [(_frames(1 + i % 2, 1 + i % 3, seed=i), None if i % 2 == 0 else np.array([1 + i % 3, 1]))
              for i in range(6)]
    assert_threads_agree_with_one_thread(ov_model, inputs)


def test_misuse_is_refused_with_what_is_valid(onnx_paths):
    # The refusals that need no OpenVINO device are in test_openvino_detection.py and run on every machine.
    model = onnx_paths["model"]
    with pytest.raises(RuntimeInputError, match=r"OpenVINOExecutionProvider could not compile .*PERFORMANCE_HINT"):
        runtime.load(onnx_paths["cnn"], providers=[(OPENVINO, {"load_config": {"CPU": {"PERFORMANCE_HINT": "NOPE"}}})])
    # Once the plugin is registered, ONNX Runtime also lists "OpenVINOExecutionProvider.AUTO", which a plain
    # providers list would activate with none of the runner's safeguards (BiLSTM on OpenVINO, OpenVINO's precision).
    with pytest.raises(RuntimeInputError, match=r"use 'OpenVINOExecutionProvider', not \['OpenVINOExecutionProvider.AUTO'"):
        runtime.load(model, providers=["OpenVINOExecutionProvider.AUTO"])
    runtime.load(model, device="cpu", providers=[OPENVINO, "CPUExecutionProvider"]).deactivate()  # both is fine


def test_openvino_properties_reach_openvino_through_load_config(onnx_paths, tmp_path):
    cache = tmp_path / "ov-cache"
    config = {"load_config": json.dumps({"CPU": {"CACHE_DIR": str(cache)}})}  # a JSON string works as well as a dict
    with runtime.load(onnx_paths["cnn"], providers=[(OPENVINO, config)], openvino_precision="bf16") as r:
        r.infer(_frames(1, 2))
    assert cache.is_dir() and any(cache.iterdir())  # OpenVINO wrote its compiled-model cache there


def test_model_graph_without_its_export_folder_is_refused(onnx_paths, tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(onnx_paths["model"], alone / "model.onnx")
    with pytest.raises(RuntimeInputError, match=r"lacks \['cnn.onnx', 'bilstm.onnx'\].*export.to_onnx writes all"):
        runtime.load(alone / "model.onnx", providers=[OPENVINO])
    runtime.load(alone / "model.onnx", device="cpu").deactivate()  # the CPU EP needs nothing beside it


def test_model_graph_beside_another_checkpoints_cnn_is_refused(onnx_paths, tmp_path):
    from conftest import TINY_CLASSES, TINY_MEAN, TINY_STD, _tiny_model

    from export.to_onnx import export_onnx
    from runtime.checkpoint import save_checkpoint

    # Same architecture and class names, other weights: only the recorded checkpoint digests differ.
    ckpt = save_checkpoint(tmp_path / "other.pt", _tiny_model(seed=7), class_names=TINY_CLASSES, mean=TINY_MEAN,
                           std=TINY_STD)
    other = export_onnx(ckpt, tmp_path / "other", precision="fp32").paths
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(onnx_paths["model"], mixed / "model.onnx")
    shutil.copy(other["cnn"], mixed / "cnn.onnx")  # no export_report.json here: only the metadata can tell
    shutil.copy(onnx_paths["bilstm"], mixed / "bilstm.onnx")
    with pytest.raises(RuntimeInputError, match="exported from different checkpoints"):
        runtime.load(mixed / "model.onnx", providers=[OPENVINO])


@pytest.mark.xfail(strict=False, reason="OpenVINO 2026.4's LSTM ignores sequence_lens in the reverse direction; the "
                   "runner keeps the BiLSTM on the CPU EP. An XPASS here means OpenVINO fixed it and the split in "
                   "runtime/backends/openvino.py could go.")
def test_openvino_lstm_honours_sequence_lens_upstream(onnx_paths):
    # The bug the runner works around, reproduced on a raw ONNX Runtime session with the plugin's CPU device.
    import onnxruntime as ort

    from runtime.backends.openvino import add_openvino
    from runtime.backends.ort_session import session_options

    opts = session_options(ort)
    add_openvino(ort, opts, "f32", None)
    on_openvino = ort.InferenceSession(str(onnx_paths["bilstm"]), sess_options=opts)
    assert on_openvino.get_providers()[0] == OPENVINO
    on_cpu = ort.InferenceSession(str(onnx_paths["bilstm"]), providers=["CPUExecutionProvider"])
    feeds = {"features": np.random.default_rng(0).standard_normal((2, 8, on_cpu.get_inputs()[0].shape[2]))
             .astype(np.float32), "lengths": np.array([8, 5], np.int32)}
    got, want = on_openvino.run(["clip_logits"], feeds)[0], on_cpu.run(["clip_logits"], feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_int8_export_runs_its_cnn_on_openvino(onnx_paths, tmp_path):
    # export.quantize's folder loads unchanged: the int8 cnn.onnx compiles on OpenVINO, the fp32 BiLSTM stays on the
    # CPU EP. Two int8 engines round differently, so compare against the same graph on the CPU EP loosely. Not by top-1:
    # the random model's clip logits are near-ties (on an AMD EPYC, the 6 clips' CPU-EP int8 top-2 margins are 0.0004
    # to 0.013 against the 0.058 of deviation the norm bound allows), and the gate's 0.5 keeps the near-ties of the 24
    # verification clips (all 24 agree there) from deciding the test: see tests/export/test_quantize.py.
    from export.quantize import quantize_export

    rng = np.random.default_rng(0)
    calibration, verification = (rng.standard_normal((n, 4, 3, H, W)).astype(np.float32) for n in (16, 24))
    int8 = quantize_export(onnx_paths["model"].parent, tmp_path / "int8", calibration, verification,
                           min_agreement=0.5).paths["model"]
    x = _frames(6, 5, seed=11)
    lengths = np.array([5, 5, 3, 1, 4, 2])
    with runtime.load(int8, providers=[OPENVINO]) as ov, runtime.load(int8, device="cpu") as cpu:
        assert ov.stage_providers == {"cnn": OPENVINO, "bilstm": "CPUExecutionProvider"}
        got, want = ov.infer(x, lengths)["clip_logits"], cpu.infer(x, lengths)["clip_logits"]
    assert np.linalg.norm(got - want) <= 0.1 * np.linalg.norm(want)
