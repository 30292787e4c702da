"""ONNX export: three graphs, native LSTM with sequence_lens, metadata, ONNX Runtime parity at unseen shapes,
padded-batch exactness, overwrite refusal. Real torch, onnx and onnxruntime on CPU."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import run_cli  # noqa: E402

from export.errors import ExportError, ExportOverwriteError, ExportVerificationError  # noqa: E402
from export.onnx_graph import check_lstm_structure, read_metadata  # noqa: E402
from export.spec import SPEC  # noqa: E402
from export.to_onnx import export_onnx, main  # noqa: E402
from runtime._io import sha256_file  # noqa: E402
from runtime.checkpoint import load_checkpoint  # noqa: E402
from runtime.spec import GRAPHS, METADATA_KEY  # noqa: E402


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory, tiny_checkpoint):
    """``python -m export.to_onnx CKPT --out onnx --precision fp32 --precision fp16`` as a user runs it (a new process
    in a new folder, --out relative to it); the finished process and the folder it wrote."""
    cwd = tmp_path_factory.mktemp("onnx")
    res = run_cli("export.to_onnx", tiny_checkpoint, "--out", "onnx", "--precision", "fp32", "--precision", "fp16",
                  cwd=cwd)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res, cwd / "onnx"


@pytest.fixture(scope="module")
def exports(cli_export):
    """The fp32 and fp16 exports of :func:`cli_export` (DIR/fp32 and DIR/fp16), shared by the module (each export
    takes a few seconds)."""
    _, root = cli_export
    out = {}
    for p in ("fp32", "fp16"):
        report_path = root / p / "export_report.json"
        out[p] = SimpleNamespace(paths={g: root / p / f"{g}.onnx" for g in GRAPHS}, report_path=report_path,
                                 report=json.loads(report_path.read_text()))
    return out


def test_python_m_export_to_onnx_as_a_user_runs_it(cli_export, exports):
    res, _ = cli_export
    for p, exp in exports.items():
        assert exp.report["ok"] and exp.report["precision"] == p
        for graph in GRAPHS:  # every graph verified against PyTorch, and said so
            assert f"onnx/{p}/{graph}.onnx" in res.stdout + res.stderr, res.stdout
    assert "ok" in res.stdout and "Traceback" not in res.stderr


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _ref(model, graph, feeds):
    with torch.inference_mode():
        lengths = torch.from_numpy(feeds["lengths"]).long() if "lengths" in feeds else None
        if graph == "cnn":
            return [model.extract_features(torch.from_numpy(feeds["frames"])).numpy()]
        if graph == "bilstm":
            return [o.numpy() for o in model.classify(torch.from_numpy(feeds["features"]), lengths)]
        return [o.numpy() for o in model(torch.from_numpy(feeds["frames"]), lengths)]


def _feeds(graph, b, t, lengths=None, seed=7):
    rng = np.random.default_rng(seed)
    f = {}
    if graph in ("model", "cnn"):
        f["frames"] = rng.standard_normal((b, t, 3, 16, 16)).astype(np.float32)
    else:
        f["features"] = np.abs(rng.standard_normal((b, t, 512))).astype(np.float32)
    if graph != "cnn":
        f["lengths"] = np.asarray(lengths or [t] * b, dtype=np.int32)
    return f


def _rel(a, b):
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


def test_three_graphs_with_contract_names(exports):
    res = exports["fp32"]
    assert set(res.paths) == set(GRAPHS)
    for graph, path in res.paths.items():
        m = onnx.load(str(path))
        spec = SPEC.graph(graph)
        assert [i.name for i in m.graph.input] == list(spec.inputs)
        assert [o.name for o in m.graph.output] == list(spec.outputs)
        for vi in list(m.graph.input) + list(m.graph.output):
            dims = vi.type.tensor_type.shape.dim
            for axis, name in spec.dynamic_axes[vi.name].items():
                assert dims[axis].dim_param == name, (graph, vi.name, axis)
            want = onnx.TensorProto.INT32 if vi.name == "lengths" else onnx.TensorProto.FLOAT
            assert vi.type.tensor_type.elem_type == want
        onnx.checker.check_model(m, full_check=True)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_native_bidirectional_lstm_per_layer_with_sequence_lens(exports, tiny_model, precision):
    for graph in ("model", "bilstm"):
        m = onnx.load(str(exports[precision].paths[graph]))
        nodes = [n for n in m.graph.node if n.op_type == "LSTM"]
        assert len(nodes) == tiny_model.config.num_layers
        assert not [n for n in m.graph.node if n.op_type in ("Loop", "Scan")]
        for n in nodes:
            assert n.input[4] == "lengths"
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            assert attrs["direction"] == b"bidirectional"
    cnn = onnx.load(str(exports[precision].paths["cnn"]))
    assert not [n for n in cnn.graph.node if n.op_type == "LSTM"]


def test_fp16_graph_has_half_cnn_and_float_lstm(exports):
    m = onnx.load(str(exports["fp16"].paths["model"]))
    half = onnx.TensorProto.FLOAT16
    casts_to_half = [n for n in m.graph.node if n.op_type == "Cast" and n.attribute[0].i == half]
    assert casts_to_half, "fp16 graph needs an explicit Cast to float16"
    inits = {i.name: i.data_type for i in m.graph.initializer}
    conv_w = [inits[n.input[1]] for n in m.graph.node if n.op_type == "Conv"]
    assert conv_w and set(conv_w) == {half}
    lstm_w = [inits[n.input[1]] for n in m.graph.node if n.op_type == "LSTM"]
    assert set(lstm_w) == {onnx.TensorProto.FLOAT}


def test_metadata_round_trip(exports, tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    for precision, res in exports.items():
        for graph, path in res.paths.items():
            meta = read_metadata(path)
            assert meta["graph"] == graph and meta["precision"] == precision
            assert meta["class_names"] == ckpt.class_names
            assert meta["frame_size"] == list(ckpt.config.frame_size)
            assert meta["mean"] == ckpt.mean and meta["std"] == ckpt.std
            assert meta["model_config"] == ckpt.config.to_dict()
            assert meta["checkpoint_sha256"] == sha256_file(tiny_checkpoint)
            assert meta["exporter"]["opset"] == 17 and meta["exporter"]["torch"] == torch.__version__
            raw = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
            assert json.loads(raw[METADATA_KEY]) == meta


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("graph", GRAPHS)
def test_onnxruntime_parity_at_unseen_shapes(exports, tiny_model, precision, graph):
    tol = SPEC.tolerance(precision).rel
    sess = _session(exports[precision].paths[graph])
    for b, t, lengths in [(1, 1, None), (3, 23, None), (5, 9, [9, 1, 4, 9, 2])]:  # example was (2, 5)
        feeds = _feeds(graph, b, t, lengths)
        got = sess.run(None, feeds)
        ref = _ref(tiny_model, graph, feeds)
        for g, r in zip(got, ref, strict=True):
            assert g.shape == r.shape
            assert _rel(g, r) <= tol, (graph, precision, b, t)


@pytest.mark.parametrize("graph", ["bilstm", "model"])
def test_padded_batch_is_exact(exports, tiny_model, graph):
    """A short clip padded into a batch gives the same outputs as the clip alone (both directions skip padding)."""
    sess = _session(exports["fp32"].paths[graph])
    feeds = _feeds(graph, 3, 12, [12, 4, 1], seed=3)
    frame_logits, clip_logits = sess.run(None, feeds)
    key = "frames" if graph == "model" else "features"
    for i, n in enumerate([12, 4, 1]):
        alone = {key: feeds[key][i:i + 1, :n], "lengths": np.asarray([n], np.int32)}
        f1, c1 = sess.run(None, alone)
        np.testing.assert_allclose(clip_logits[i:i + 1], c1, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(frame_logits[i:i + 1, :n], f1, rtol=1e-5, atol=1e-5)
    # The check is sensitive: without sequence_lens the reverse direction reads the padding first.
    ref_clip = _ref(tiny_model, graph, feeds)[1]
    m = onnx.load(str(exports["fp32"].paths[graph]))
    for n in m.graph.node:
        if n.op_type == "LSTM":
            n.input[4] = ""
    unwired = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    assert _rel(unwired.run(None, feeds)[1], ref_clip) > 1e-3
    assert _rel(clip_logits, ref_clip) <= 1e-5


def test_cli_wrote_precisions_into_subfolders(exports):
    for p, res in exports.items():
        assert res.report_path.parent.name == p and all(path.is_file() for path in res.paths.values())


def test_report_covers_required_shapes(exports):
    for precision, res in exports.items():
        report = json.loads(res.report_path.read_text())
        assert report["ok"] and report["precision"] == precision
        for graph in GRAPHS:
            cases = report["graphs"][graph]["cases"]
            times = [c["time"] for c in cases]
            assert 1 in times and max(times) >= 3 * report["example_shape"][1]
            assert any(c["lengths"] and min(c["lengths"]) < c["time"] for c in cases)
            for c in cases:
                for o in c["outputs"].values():
                    assert o["rel"] <= report["tolerance"]["rel"] and o["max_abs"] >= 0


def test_check_lstm_structure_rejects_missing_sequence_lens(exports):
    m = onnx.load(str(exports["fp32"].paths["bilstm"]))
    for n in m.graph.node:
        if n.op_type == "LSTM":
            n.input[4] = ""
    with pytest.raises(ExportError, match="sequence_lens"):
        check_lstm_structure(m, 2)
    with pytest.raises(ExportError, match="expected 3 native ONNX LSTM nodes"):
        check_lstm_structure(m, 3, None)


def test_reexport_same_is_fine_other_model_is_refused(exports, tiny_checkpoint, tmp_path):
    out = exports["fp32"].paths["model"].parent
    before = {g: p.stat().st_mtime_ns for g, p in exports["fp32"].paths.items()}
    export_onnx(tiny_checkpoint, out, "fp32")  # same checkpoint and precision: allowed
    assert all(p.stat().st_mtime_ns >= before[g] for g, p in exports["fp32"].paths.items())
    with pytest.raises(ExportOverwriteError, match="precision"):
        export_onnx(tiny_checkpoint, out, "fp16")
    # A different checkpoint (other weights) is refused too, and --force overrides.
    ckpt = load_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        ckpt.model.clip_head.bias.add_(1.0)
    other = tmp_path / "other.pt"
    from runtime.checkpoint import save_checkpoint
    save_checkpoint(other, ckpt.model, class_names=ckpt.class_names, mean=ckpt.mean, std=ckpt.std)
    with pytest.raises(ExportOverwriteError, match="checkpoint_sha256"):
        export_onnx(other, out, "fp32")
    assert read_metadata(out / "model.onnx")["checkpoint_sha256"] == sha256_file(tiny_checkpoint)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "cnn.onnx").write_bytes(b"not onnx")
    with pytest.raises(ExportOverwriteError, match="not a cnn_bilstm_deploy export"):
        export_onnx(other, tmp_path / "x", "fp32")


def test_verification_failure_raises_and_writes_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    from export import spec as spec_mod
    from export.spec import Tolerance

    monkeypatch.setitem(spec_mod.SPEC.tolerances, "fp16", Tolerance(1e-9, "impossible, for the test"))
    monkeypatch.setattr("export.to_onnx.GRAPHS", ("bilstm", "cnn"))  # fewer graphs: faster, same code path
    with pytest.raises(ExportVerificationError, match="above tolerance") as info:
        export_onnx(tiny_checkpoint, tmp_path / "o", "fp16")
    assert info.value.report and not info.value.report["ok"]
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_bad_arguments_are_clear(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="valid choices: fp32, fp16, fp16-all"):
        export_onnx(tiny_checkpoint, tmp_path, "int8")
    with pytest.raises(ValueError, match="B >= 2 and T >= 2"):
        export_onnx(tiny_checkpoint, tmp_path, example_shape=(1, 5))


@pytest.mark.slow
def test_fp16_all_verified_at_longest_time(tiny_checkpoint, tmp_path):
    res = export_onnx(tiny_checkpoint, tmp_path, "fp16-all")
    times = [c["time"] for c in res.report["graphs"]["model"]["cases"]]
    assert SPEC.longest_time in times and res.report["ok"]


def test_cli_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "y")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
