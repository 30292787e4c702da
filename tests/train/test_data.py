"""Data sources (synthetic, CIFAR-10 / ImageFolder clips, folder of clips), padding collate, and model shapes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, run_cli

from train.clips import CIFAR10_CLASSES, DATASETS, DataError, normalize_frames, pad_collate
from train.data import DataSpec, build_dataset
from train.image_clips import FolderClips, ImageClips, scan_clip_folder
from train.synthetic import SyntheticClips, make_synthetic_clip, synthetic_steps

# The `data` test's CIFAR-10 copy: $CNN_BILSTM_CIFAR10, default data/cifar10 in the checkout (docs/development.md).
CIFAR10_COPY = Path(os.environ.get("CNN_BILSTM_CIFAR10", Path(__file__).resolve().parents[2] / "data" / "cifar10"))


def _png(path: Path, value: int, size=(10, 12)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((*size, 3), value, dtype=np.uint8)
    arr[0, 0] = (value * 7) % 256  # not uniform, so resizing and ordering are visible
    Image.fromarray(arr).save(path)


@pytest.fixture
def clip_tree(tmp_path):
    """root/<class>/<clip>/<frames>: 2 classes, clips of 2, 3 and 5 frames, frame names that sort naturally."""
    root = tmp_path / "clips"
    lengths = {"jump": {"a": 2, "b": 5}, "wave": {"c": 3, "d": 10}}
    for cls, clips in lengths.items():
        for clip, n in clips.items():
            for t in range(n):
                _png(root / cls / clip / f"frame{t + 1}.png", value=10 * t + (100 if cls == "wave" else 0))
    return root


# --------------------------------------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------------------------------------
def test_synthetic_items_shapes_labels_and_determinism():
    ds = SyntheticClips(8, frames=8, frame_size=(16, 20), num_classes=4, split="test", seed=3)
    x, y = ds[5]
    assert x.shape == (8, 3, 16, 20) and x.dtype == torch.float32
    assert y == 1 and [ds[i][1] for i in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert ds.class_names == ["clockwise", "counterclockwise", "clockwise_fast", "counterclockwise_fast"]
    assert torch.equal(SyntheticClips(8, 8, (16, 20), 4, "test", 3)[5][0], x)  # same seed, same clip
    assert not torch.equal(SyntheticClips(8, 8, (16, 20), 4, "test", 4)[5][0], x)  # other seed, other clip
    # Normalised with the dataset's statistics: raw uint8 -> (x/255 - mean) / std exactly.
    raw, _ = ds.raw_clip(5)
    assert torch.allclose(normalize_frames(raw, ds.mean, ds.std), x)


def test_synthetic_train_split_draws_new_clips_each_epoch_test_split_does_not():
    tr = SyntheticClips(4, frames=5, split="train", seed=0)
    te = SyntheticClips(4, frames=5, split="test", seed=0)
    a, t0 = tr[0][0], te[0][0]
    tr.set_epoch(1)
    te.set_epoch(1)
    assert not torch.equal(tr[0][0], a)
    assert torch.equal(te[0][0], t0)
    assert not torch.equal(t0, a)  # train and test splits are different clips


@pytest.mark.parametrize("frames", [5, 8, 9])
def test_synthetic_classes_differ_only_in_frame_order(frames):
    """Every class shows the same multiset of frames (same seed, no noise): only the order carries the class."""
    clips = [make_synthetic_clip(c, np.random.default_rng(7), frames=frames, num_classes=4, noise=0.0)
             for c in range(4)]
    as_sets = [sorted(f.tobytes() for f in clip) for clip in clips]
    assert all(s == as_sets[0] for s in as_sets)
    assert len(set(as_sets[0])) == frames  # T distinct positions, each visited once
    orders = {tuple(f.tobytes() for f in clip) for clip in clips}
    assert len(orders) == 4  # but four different orders


def test_synthetic_bad_parameters():
    with pytest.raises(DataError, match="T=6 has none"):
        synthetic_steps(4, 6)
    with pytest.raises(DataError, match="2 or 4 classes"):
        SyntheticClips(4, num_classes=3)
    with pytest.raises(DataError, match="valid choices: train, test"):
        SyntheticClips(4, split="val")


def test_unknown_data_set_lists_choices():
    with pytest.raises(DataError, match="unknown data set 'imagenet'; valid choices: synthetic, cifar10, folder"):
        build_dataset(DataSpec(name="imagenet"), "train")
    assert issubclass(DataError, ValueError)
    assert DATASETS == ("synthetic", "cifar10", "folder", "video")


# --------------------------------------------------------------------------------------------------------------------
# collate and model shapes / padding exactness
# --------------------------------------------------------------------------------------------------------------------
def test_pad_collate_pads_with_zeros_and_reports_lengths():
    items = [(torch.randn(t, 3, 4, 5), label) for t, label in [(3, 0), (1, 2), (4, 1)]]
    frames, lengths, labels = pad_collate(items)
    assert frames.shape == (3, 4, 3, 4, 5)
    assert lengths.tolist() == [3, 1, 4] and lengths.dtype == torch.int64
    assert labels.tolist() == [0, 2, 1] and labels.dtype == torch.int64
    assert torch.equal(frames[0, :3], items[0][0]) and torch.all(frames[0, 3:] == 0)
    assert torch.all(frames[1, 1:] == 0)
    with pytest.raises(DataError, match="one \\(3, H, W\\) shape"):
        pad_collate([(torch.zeros(2, 3, 4, 4), 0), (torch.zeros(2, 3, 5, 4), 0)])


@pytest.mark.parametrize("b,t", [(1, 1), (3, 1), (2, 4), (1, 7)])
def test_model_output_shapes(tiny_model, b, t):
    h, w = TINY_CONFIG.frame_size
    x = torch.randn(b, t, 3, h, w)
    with torch.no_grad():
        feats = tiny_model.extract_features(x)
        frame_logits, clip_logits = tiny_model.classify(feats, torch.full((b,), t))
    assert feats.shape == (b, t, TINY_CONFIG.feature_dim)
    assert frame_logits.shape == (b, t, TINY_CONFIG.num_classes)
    assert clip_logits.shape == (b, TINY_CONFIG.num_classes)


def test_folder_batch_padding_is_exact_through_the_model(tiny_model, clip_tree):
    """Clips of 2, 3, 5 and 10 frames padded into one batch give the logits each clip gives alone."""
    ds = FolderClips.from_root(clip_tree, frame_size=TINY_CONFIG.frame_size)
    items = [ds[i] for i in range(len(ds))]
    frames, lengths, _ = pad_collate(items)
    assert sorted(lengths.tolist()) == [2, 3, 5, 10]
    with torch.no_grad():
        batch_frame, batch_clip = tiny_model(frames, lengths)
        for i, (clip, _) in enumerate(items):
            alone_frame, alone_clip = tiny_model(clip.unsqueeze(0))
            n = clip.shape[0]
            torch.testing.assert_close(batch_clip[i], alone_clip[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(batch_frame[i, :n], alone_frame[0], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# folder of clips
# --------------------------------------------------------------------------------------------------------------------
def test_folder_clips_order_lengths_resize_and_normalisation(clip_tree):
    names, samples = scan_clip_folder(clip_tree)
    assert names == ["jump", "wave"]
    by_clip = {paths[0].parent.name: (paths, label) for paths, label in samples}
    paths, label = by_clip["d"]
    assert label == 1 and [p.name for p in paths][:3] == ["frame1.png", "frame2.png", "frame3.png"]
    assert paths[-1].name == "frame10.png"  # natural order: frame10 after frame9
    ds = FolderClips(samples, names, frame_size=(8, 8), max_frames=None, mean=(0, 0, 0), std=(1, 1, 1))
    x, y = ds[[p[0].parent.name for p, _ in samples].index("d")]
    assert x.shape == (10, 3, 8, 8) and y == 1
    # frame t has value 100 + 10 t (with one odd pixel): the order survived loading.
    centre = x[:, 0, 4, 4] * 255
    assert torch.allclose(centre, torch.tensor([100.0 + 10 * t for t in range(10)]), atol=1.0)
    # Longer clips keep max_frames evenly spaced frames, first and last included.
    capped = FolderClips(samples, names, frame_size=(8, 8), max_frames=4, mean=(0, 0, 0), std=(1, 1, 1))
    xc, _ = capped[[p[0].parent.name for p, _ in samples].index("d")]
    assert xc.shape[0] == 4
    assert torch.allclose(xc[[0, -1], 0, 4, 4] * 255, torch.tensor([100.0, 190.0]), atol=1.0)


def test_folder_splits(clip_tree, tmp_path):
    spec = DataSpec(name="folder", data_dir=str(clip_tree), frames=16, frame_size=(8, 8), seed=0, val_fraction=0.5)
    train, test = build_dataset(spec, "train"), build_dataset(spec, "test")
    train_clips = {p[0].parent for p, _ in train.samples}
    test_clips = {p[0].parent for p, _ in test.samples}
    assert len(train_clips) == 2 and len(test_clips) == 2 and not train_clips & test_clips
    assert sorted(y for _, y in test.samples) == [0, 1]  # one held-out clip per class
    # An explicit train/ and test/ split is used as it is.
    root = tmp_path / "split"
    for split, clip in [("train", "x"), ("test", "y")]:
        for cls in ("a", "b"):
            _png(root / split / cls / clip / "0.png", 10)
    spec = DataSpec(name="folder", data_dir=str(root), frame_size=(8, 8))
    assert {p[0].parent.name for p, _ in build_dataset(spec, "test").samples} == {"y"}


@pytest.mark.parametrize("have", ["train", "test"])
def test_half_split_trees_are_refused(tmp_path, have):
    # One split folder without the other: the folder source read "train" as a class, and CIFAR-10 took the other
    # split from elsewhere (or downloaded it with --download).
    missing = "test" if have == "train" else "train"
    _png(tmp_path / "clips" / have / "a" / "c1" / "0.png", 10)
    _png(tmp_path / "img" / have / "a" / "0.png", 10)
    for name, root in [("folder", "clips"), ("cifar10", "img")]:
        for split in ("train", "test"):
            with pytest.raises(DataError, match=rf"{root} has {have}/ but no {missing}/: .* needs both .*train/<class>"):
                build_dataset(DataSpec(name=name, data_dir=str(tmp_path / root), frames=1, download=True), split)
    with pytest.raises(DataError, match="or neither, and --val-fraction"):
        build_dataset(DataSpec(name="folder", data_dir=str(tmp_path / "clips")), "train")


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_clip_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        scan_clip_folder(tmp_path / "empty")
    (tmp_path / "noclips" / "cls").mkdir(parents=True)
    (tmp_path / "noclips" / "cls" / "stray.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"class folder .*cls has no clip folders"):
        scan_clip_folder(tmp_path / "noclips")
    (tmp_path / "noframes" / "cls" / "clip1").mkdir(parents=True)
    (tmp_path / "noframes" / "cls" / "clip1" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"clip1 has no frame images"):
        scan_clip_folder(tmp_path / "noframes")
    bad = tmp_path / "bad" / "cls" / "clip1"
    _png(bad / "0.png", 5)
    (bad / "1.png").write_bytes(b"this is not a png")
    ds = FolderClips.from_root(tmp_path / "bad", frame_size=(8, 8))
    with pytest.raises(DataError, match=r"cannot read image .*clip1.1\.png"):
        ds[0]
    with pytest.raises(DataError, match="needs --data-dir"):
        build_dataset(DataSpec(name="folder"), "train")


def test_train_refuses_a_data_folder_of_one_class_naming_it(clip_tree, tmp_path):
    """As a user runs it: one class folder is refused by the data layer, naming the folder and its class (the
    model config alone could only say "num_classes must be >= 2, got 1")."""
    shutil.rmtree(clip_tree / "wave")
    out = tmp_path / "run"
    proc = run_cli("train", "--data", "folder", "--data-dir", clip_tree, "--frames", "8", "--frame-size", "16",
                      "--epochs", "1", "--device", "cpu", "--no-progress", "--out", out, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: the train split of {clip_tree} has one class, 'jump': a classifier needs at least 2 classes "
        "(one folder each)"]
    assert not out.exists()


# --------------------------------------------------------------------------------------------------------------------
# CIFAR-10 clips (ImageFolder layout)
# --------------------------------------------------------------------------------------------------------------------
def test_image_folder_clips_one_class_per_clip_and_splits(tmp_path):
    root = tmp_path / "cifar"
    for split, n in [("train", 9), ("test", 4)]:
        for ci, cls in enumerate(["cat", "dog", "frog"]):
            for i in range(n):
                # pixel value encodes (split, class) so every frame's origin can be checked
                _png(root / split / cls / f"{i:04d}.png", (0 if split == "train" else 128) + 40 * ci, size=(32, 32))
    spec = DataSpec(name="cifar10", data_dir=str(root), frames=4, frame_size=(32, 32), seed=1,
                    mean=(0, 0, 0), std=(1, 1, 1))
    train, test = build_dataset(spec, "train"), build_dataset(spec, "test")
    assert isinstance(train, ImageClips) and train.class_names == ["cat", "dog", "frog"]
    assert len(train) == 6 and len(test) == 3  # 9 // 4 = 2 and 4 // 4 = 1 clips per class
    for ds, offset in [(train, 0), (test, 128)]:
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (4, 3, 32, 32)
            values = (x[:, 0, 5, 5] * 255).round()
            assert torch.all(values == offset + 40 * y)  # every frame from this split and the clip's class
    assert [test[i][1] for i in range(3)] == [0, 1, 2]  # classes interleaved: any prefix is balanced
    capped = build_dataset(DataSpec(name="cifar10", data_dir=str(root), frames=4, num_clips=2), "train")
    assert len(capped) == 2 and {capped.clips[i][1] for i in range(2)} == {0, 1}


def test_cifar10_missing_folder_explains_download(tmp_path):
    with pytest.raises(DataError, match="--download"):
        build_dataset(DataSpec(name="cifar10", data_dir=str(tmp_path)), "train")
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "test" / "cat").mkdir(parents=True)  # both splits: a tree with one is refused (test_half_split_trees)
    with pytest.raises(DataError, match=r"class folder .*cat holds no images"):
        build_dataset(DataSpec(name="cifar10", data_dir=str(tmp_path)), "train")


@pytest.mark.data
@pytest.mark.skipif(not (CIFAR10_COPY / "train").is_dir(),
                    reason=f"no CIFAR-10 copy at {CIFAR10_COPY} (set CNN_BILSTM_CIFAR10 to an ImageFolder tree)")
def test_cifar10_copy_reads_as_clips():
    spec = DataSpec(name="cifar10", data_dir=str(CIFAR10_COPY), frames=3, frame_size=(32, 32), num_clips=20)
    ds = build_dataset(spec, "test")
    assert tuple(ds.class_names) == CIFAR10_CLASSES and len(ds) == 20
    assert sorted(ds[i][1] for i in range(10)) == list(range(10))
    x, _ = ds[0]
    assert x.shape == (3, 3, 32, 32) and -3 < float(x.mean()) < 3 and float(x.std()) > 0.1
