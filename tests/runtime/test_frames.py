"""One way to read a clip's frames (runtime.frames): training, evaluation and `python -m runtime classify` see the same
frames in the same (natural) order, resized the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, TINY_MEAN, TINY_STD

import runtime
from runtime.__main__ import main as runtime_main
from runtime.clips import read_clip
from runtime.errors import RuntimeInputError
from runtime.frames import (
    IMAGE_SUFFIXES,
    list_frame_files,
    natural_key,
    read_frame_folder,
    resize_frame,
    resize_frames,
)
from train.image_clips import FolderClips, scan_clip_folder

H, W = TINY_CONFIG.frame_size
T = 16


def _write(folder, frames, names):
    from PIL import Image

    folder.mkdir(parents=True)
    for frame, name in zip(frames, names, strict=True):
        Image.fromarray(frame).save(folder / name)


@pytest.fixture
def unnatural_tree(tmp_path):
    """``root/<class>/<clip>/1.png .. 16.png``: plain sorting reads 1, 10, 11, ..., 16, 2, ..., 9."""
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    frames[:, 0, 0, 0] = np.arange(T) * 10  # frame t carries its index in one pixel
    root = tmp_path / "clips"
    names = [f"{t + 1}.png" for t in range(T)]
    _write(root / "moving" / "clip0", frames, names)
    _write(root / "still" / "clip0", frames[::-1].copy(), names)
    assert sorted(names) != names  # the tree really orders differently in plain and natural order
    return root, frames


def test_natural_order_and_suffixes(tmp_path):
    assert sorted(["10.png", "2.png", "1.png", "frame10.PNG", "frame9.png"], key=natural_key) == \
        ["1.png", "2.png", "10.png", "frame9.png", "frame10.PNG"]
    folder = tmp_path / "c"
    folder.mkdir()
    for name in ("3.webp", "1.PNG", "10.tiff", "2.jpg", ".5.png", "notes.txt", "11.npy"):
        (folder / name).write_bytes(b"")
    (folder / "4.png").mkdir()  # a folder with an image suffix is no frame
    assert [p.name for p in list_frame_files(folder)] == ["1.PNG", "2.jpg", "3.webp", "10.tiff"]
    assert ".webp" in IMAGE_SUFFIXES and ".tif" in IMAGE_SUFFIXES
    with pytest.raises(RuntimeInputError, match="holds no frame images"):
        list_frame_files(tmp_path / "c" / "4.png")
    with pytest.raises(RuntimeInputError, match="does not exist"):
        list_frame_files(tmp_path / "missing")


def test_training_and_classify_feed_identical_tensors_in_natural_order(unnatural_tree):
    root, frames = unnatural_tree
    names, samples = scan_clip_folder(root)
    train_ds = FolderClips(samples, names, frame_size=(H, W), mean=TINY_MEAN, std=TINY_STD)
    x_train, _ = train_ds[names.index("moving")]
    served = read_clip(root / "moving" / "clip0")  # what `python -m runtime classify` reads
    np.testing.assert_array_equal(served, frames)  # natural order, lossless PNG
    x_served = runtime.preprocess_frames(served, TINY_MEAN, TINY_STD, (H, W))[0]
    np.testing.assert_array_equal(x_train.numpy(), x_served)
    # The test can fail: the plain-sorted order would have fed other tensors.
    plain = np.stack([frames[int(p.stem) - 1] for p in sorted((root / "moving" / "clip0").iterdir())])
    assert not np.array_equal(runtime.preprocess_frames(plain, TINY_MEAN, TINY_STD)[0], x_served)


def test_training_and_classify_resize_alike(tmp_path):
    rng = np.random.default_rng(5)
    big = rng.integers(0, 256, (3, 2 * H + 3, 2 * W + 1, 3), dtype=np.uint8)
    _write(tmp_path / "r" / "a" / "clip", big, ["1.png", "2.png", "10.png"])
    names, samples = scan_clip_folder(tmp_path / "r")
    x_train, _ = FolderClips(samples, names, frame_size=(H, W), mean=TINY_MEAN, std=TINY_STD)[0]
    clip = tmp_path / "r" / "a" / "clip"
    via_read = runtime.preprocess_frames(read_clip(clip, (H, W)), TINY_MEAN, TINY_STD)[0]
    via_preprocess = runtime.preprocess_frames(read_clip(clip), TINY_MEAN, TINY_STD, (H, W), resize=True)[0]
    np.testing.assert_array_equal(x_train.numpy(), via_read)
    np.testing.assert_array_equal(x_train.numpy(), via_preprocess)
    np.testing.assert_array_equal(resize_frames(big, (H, W))[2], resize_frame(big[2], (H, W)))


def test_resize_checks_its_size():
    frame = np.zeros((4, 4, 3), np.uint8)
    for bad in [(0, 4), (-1, 2), (2.5, 2), (True, 2), (4,), "44"]:
        with pytest.raises(RuntimeInputError, match=r"\(height, width\) with two integers >= 1"):
            resize_frame(frame, bad)
    with pytest.raises(RuntimeInputError, match=r"frame_size must be \(height, width\)"):
        runtime.preprocess_frames(frame, TINY_MEAN, TINY_STD, (0, 4), resize=True)
    assert resize_frame(frame, (4, 4)) is frame  # the right size is never filtered


def test_classify_result_equals_infer_on_naturally_ordered_frames(unnatural_tree, tiny_checkpoint, tmp_path,
                                                                  capsys):
    pytest.importorskip("onnxruntime")
    from export.to_onnx import export_onnx

    model = export_onnx(tiny_checkpoint, tmp_path / "onnx", precision="fp32").paths["model"]
    root, frames = unnatural_tree
    out = tmp_path / "preds.json"
    assert runtime_main(["classify", str(model), str(root / "moving" / "clip0"), "--top-k", "3",
                         "--json", str(out)]) == 0
    pred = json.loads(out.read_text())["clips"][0]
    with runtime.load(model) as runner:
        x = runtime.preprocess_frames(frames, runner.metadata.mean, runner.metadata.std, runner.input_spec.frame_size)
        logits = runner.infer(x)["clip_logits"][0]
        plain = np.stack([frames[int(p.stem) - 1] for p in sorted((root / "moving" / "clip0").iterdir())])
        x_plain = runtime.preprocess_frames(plain, runner.metadata.mean, runner.metadata.std)
        logits_plain = runner.infer(x_plain)["clip_logits"][0]
    probs = torch.softmax(torch.from_numpy(logits), 0).numpy()
    best = np.argsort(-probs)[:3]
    assert pred["labels"] == [runner.metadata.class_names[i] for i in best]
    np.testing.assert_allclose(pred["probs"], probs[best], atol=1e-5)
    assert not np.allclose(logits, logits_plain, atol=1e-5)  # order matters to the BiLSTM: the test can fail


def test_unreadable_frame_is_one_clear_error_everywhere(tmp_path):
    clip = tmp_path / "bad" / "cls" / "clip"
    _write(clip, [np.zeros((H, W, 3), np.uint8)], ["1.png"])
    (clip / "2.png").write_bytes(b"not a png")
    with pytest.raises(RuntimeInputError, match=r"cannot read image .*2\.png"):
        read_frame_folder(clip)
    from train.clips import DataError

    names, samples = scan_clip_folder(tmp_path / "bad")
    with pytest.raises(DataError, match=r"cannot read image .*2\.png"):
        FolderClips(samples, names, frame_size=(H, W))[0]
