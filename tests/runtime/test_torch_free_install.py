"""The lightweight runtime really installs and runs without PyTorch: a fresh virtual environment gets
`pip install ".[onnx]"` (numpy, Pillow, onnxruntime) and runs the ONNX path end to end from outside the checkout:
runtime.load + infer + classify, StreamingClassifier on the export folder, and `python -m runtime info/classify`.
Its results must equal those of the full install here."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from conftest import TINY_CONFIG, fresh_venv  # noqa: E402
from conftest import run_checked as _run  # noqa: E402

H, W = TINY_CONFIG.frame_size

_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import runtime
    export, clip_path, out_path = sys.argv[1:4]
    raw = np.load(clip_path)
    result = {}
    with runtime.load(export + "/model.onnx") as r:
        x = runtime.preprocess_frames(raw, r.metadata.mean, r.metadata.std, r.input_spec.frame_size)
        result["clip_logits"] = r.infer(x)["clip_logits"].tolist()
        result["labels"] = r.classify(x, top_k=2).labels[0]
    with runtime.StreamingClassifier(export, window=4) as stream:
        for frame in raw:
            last = stream.push(frame)
    result["stream_clip_logits"] = np.asarray(last.clip_logits).tolist()
    result["torch_loaded"] = "torch" in sys.modules
    try:
        import torch  # noqa: F401
        result["torch_importable"] = True
    except ImportError:
        result["torch_importable"] = False
    json.dump(result, open(out_path, "w"))
""")


@pytest.fixture(scope="module")
def torch_free_python(tmp_path_factory):
    return fresh_venv(tmp_path_factory.mktemp("torch-free"), "onnx")


def test_onnx_path_runs_without_torch(torch_free_python, tiny_checkpoint, tmp_path):
    import runtime
    from export.to_onnx import export_onnx

    export = export_onnx(tiny_checkpoint, tmp_path / "export", precision="fp32").paths["model"].parent
    raw = np.random.default_rng(0).integers(0, 256, (6, H, W, 3), dtype=np.uint8)
    np.save(tmp_path / "clip.npy", raw)
    (tmp_path / "check.py").write_text(_SCRIPT)
    outside = tmp_path / "elsewhere"  # not the checkout: the installed package must be what runs
    outside.mkdir()
    _run([str(torch_free_python), str(tmp_path / "check.py"), str(export), str(tmp_path / "clip.npy"),
          str(tmp_path / "got.json")], cwd=outside)
    got = json.loads((tmp_path / "got.json").read_text())
    assert got["torch_importable"] is False and got["torch_loaded"] is False

    with runtime.load(export / "model.onnx") as r:  # the full install, here
        x = runtime.preprocess_frames(raw, r.metadata.mean, r.metadata.std, r.input_spec.frame_size)
        want = r.infer(x)["clip_logits"]
        want_labels = r.classify(x, top_k=2).labels[0]
    with runtime.StreamingClassifier(export, window=4) as stream:
        for frame in raw:
            last = stream.push(frame)
    np.testing.assert_allclose(got["clip_logits"], want, atol=1e-5)
    assert got["labels"] == want_labels
    np.testing.assert_allclose(got["stream_clip_logits"], np.asarray(last.clip_logits), atol=1e-5)

    info = _run([str(torch_free_python), "-m", "runtime", "info", str(export / "model.onnx")], cwd=outside).stdout
    assert "stage        model" in info and "onnxruntime" in info
    _run([str(torch_free_python), "-m", "runtime", "classify", str(export / "model.onnx"), str(tmp_path / "clip.npy"),
          "--top-k", "2", "--json", str(tmp_path / "classify.json")], cwd=outside)
    assert json.loads((tmp_path / "classify.json").read_text())["clips"][0]["labels"] == want_labels
