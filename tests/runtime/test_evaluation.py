"""runtime.evaluation, the one evaluation core: logits collected over batches (split to what a runner takes, padding
kept out of every score), accuracy, confusion and agreement computed exactly on hand-made numbers, and the core
loads without torch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import modules_loaded_by

import runtime
from runtime.evaluation import ClipOutputs, accuracy, agreement, averaged_scores, collect_logits, compare
from runtime.spec import InputSpec, ModelMetadata, Profile


class FakeRunner:
    """A fake runner for the core's glue (splitting, stacking): frame logits are the frames' channel-0 means per step
    and class, so every output can be predicted; records the batch sizes it was called with."""

    def __init__(self, classes: int = 3, max_batch=None) -> None:
        meta = ModelMetadata(graph="model", class_names=[str(c) for c in range(classes)], mean=[0.0] * 3,
                             std=[1.0] * 3, frame_size=(2, 2), feature_dim=4)
        self.input_spec = InputSpec.for_graph("model", meta, [Profile((1, max_batch), (1, None))])
        self.classes, self.calls = classes, []

    def infer(self, x, lengths):
        self.calls.append(len(x))
        base = x[:, :, 0].mean((2, 3))  # (B, T)
        frame = np.stack([base * (c + 1) for c in range(self.classes)], -1).astype(np.float32)
        frame[np.arange(x.shape[1])[None, :] >= lengths[:, None]] = np.nan  # padding: anything, even NaN
        clip = np.nan_to_num(frame).sum(1) / lengths[:, None]
        return {"frame_logits": frame, "clip_logits": clip.astype(np.float32)}


def _batch(values, t, labels):
    """Frames whose every pixel at step s of clip b is values[b][s] (clips shorter than t are zero-padded)."""
    x = np.zeros((len(values), t, 3, 2, 2), np.float32)
    for b, v in enumerate(values):
        x[b, :len(v)] = np.asarray(v, np.float32)[:, None, None, None]
    return x, np.array([len(v) for v in values]), np.array(labels)


def test_batches_are_split_to_what_the_runner_takes_and_padding_is_kept_out():
    runner = FakeRunner(max_batch=2)
    batches = [_batch([[1, 2], [-1], [3, 3]], 2, [2, 0, 2]), _batch([[-2, -2, -2]], 3, [1])]
    (out,) = collect_logits([runner], batches)
    assert runner.calls == [2, 1, 1]  # 3 clips in batches of at most 2, then 1
    assert out.frame_logits.shape == (4, 3, 3) and out.lengths.tolist() == [2, 1, 2, 3]
    assert np.isfinite(out.frame_logits).all() and out.frame_logits[1, 1:].tolist() == [[0, 0, 0], [0, 0, 0]]
    scores = accuracy(out)
    # Positive clips score class 2 (largest multiplier), negative ones class 0, per frame as per clip.
    assert scores["confusion"] == [[1, 0, 0], [1, 0, 0], [0, 0, 2]]
    assert scores["clip_acc"] == 0.75 and scores["frame_acc"] == 5 / 8  # 2 + 1 + 2 real frames right of 8
    assert scores["per_class_acc"] == [1.0, 0.0, 1.0]
    assert np.isfinite(scores["loss"])


def test_agreement_counts_real_frames_and_names_the_differing_clips():
    ref = ClipOutputs(clip_logits=np.array([[1, 0], [0, 1], [2, 1]], np.float32),
                      frame_logits=np.array([[[1, 0], [1, 0]], [[0, 1], [0, 0]], [[0, 1], [1, 0]]], np.float32),
                      lengths=np.array([2, 1, 2]), labels=np.array([0, 1, 1]))
    got = ClipOutputs(clip_logits=np.array([[1, 0.5], [0.25, 1], [0.5, 1]], np.float32),
                      frame_logits=np.array([[[1, 0], [0, 1]], [[0, 1], [9, 9]], [[0, 1], [1, 0]]], np.float32),
                      lengths=ref.lengths, labels=ref.labels)
    a = agreement(got, ref)
    assert a["differing_clips"] == [2] and a["clip_agreement"] == pytest.approx(2 / 3)
    assert a["frame_agreement"] == 0.8  # 5 real frames, one differs; the padded step of clip 1 is not counted
    assert a["max_abs_dlogit"] == 1.5 and a["max_abs_dframe_logit"] == 1.0 and a["finite"]
    assert a["clip_logits_rel"] == pytest.approx(compare(got.clip_logits, ref.clip_logits)["rel"])
    assert agreement(ref, ref)["clip_logits_rel"] == 0.0
    with pytest.raises(runtime.RuntimeInputError, match="evaluate both on the same clips"):
        agreement(ClipOutputs(clip_logits=np.zeros((2, 2), np.float32)), ref)


def test_averaged_window_scores_rank_as_the_averaged_probabilities():
    windows = [np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]), np.array([[1.0, 0.0]])]
    scores = averaged_scores(windows)
    assert scores.argmax(1).tolist() == [1, 0]
    np.testing.assert_allclose(np.exp(scores[0]), [1.4 / 3, 1.6 / 3], rtol=1e-6)
    assert np.isfinite(scores).all()  # a probability of 0 scores log(float32 tiny), not -inf
    out = accuracy(ClipOutputs(clip_logits=scores, labels=np.array([1, 1])))
    assert out["clip_acc"] == 0.5 and out["frame_acc"] is None


def test_compare_is_inf_for_non_finite_or_other_shapes():
    assert compare(np.ones(3), np.ones(3)) == {"max_abs": 0.0, "rel": 0.0}
    assert compare(np.full(3, np.nan), np.ones(3))["rel"] == float("inf")
    assert compare(np.ones(3), np.ones(4))["max_abs"] == float("inf")


def test_the_core_loads_without_torch():
    loaded = modules_loaded_by("import runtime.evaluation", ["torch", "onnxruntime", "train", "export"])
    assert loaded == []
