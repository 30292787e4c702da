"""Pretrained backbones (``python -m train --pretrained``) and fine-tuning, with weights files written here from
seeded torchvision networks (nothing is downloaded): exact loading, one-line refusals, the ImageNet path through
torch.hub's cache (and its one-line failure offline), frozen epochs and BatchNorm, resume, torchrun, and what the
checkpoint and ``python -m runtime info`` record."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runtime._io import sha256_file
from runtime.checkpoint import load_checkpoint, read_checkpoint_dict
from runtime.model import CNNBiLSTM, ModelConfig, classifier_name
from train.__main__ import main as train_main
from train.pretrained import apply_weights, imagenet_file, imagenet_weights, load_pretrained

REPO = Path(__file__).resolve().parents[2]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# The cheapest run of the whole path: 2 synthetic classes, 8 clips of 4 frames of 16x16, BiLSTM 1x16.
SMALL = ["--data", "synthetic", "--synthetic-classes", "2", "--frames", "4", "--train-clips", "8", "--val-clips", "4",
         "--frame-size", "16", "--hidden-size", "16", "--num-layers", "1", "--batch-size", "4", "--lr", "3e-3",
         "--device", "cpu", "--no-progress", "--no-eval-shuffled", "--seed", "3"]
FAST_BACKBONE = "mobilenet_v3_small"  # the smallest: the fine-tuning runs use it


def _head(backbone: str) -> str:
    import torchvision

    with torch.device("meta"):
        return classifier_name(torchvision.models.get_model(backbone)) + "."


def _backbone_tensors(path: Path, backbone: str) -> dict:
    return {k: v for k, v in torch.load(path, weights_only=True).items() if not k.startswith(_head(backbone))}


def _cnn_state(checkpoint: Path) -> dict:
    state = read_checkpoint_dict(checkpoint)["state_dict"]
    return {k[len("cnn."):]: v for k, v in state.items() if k.startswith("cnn.")}


def _equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _no_network(monkeypatch_or_env, torch_home: Path):
    """TORCH_HOME at ``torch_home`` and every download sent to a proxy that refuses at once (127.0.0.1:9)."""
    values = {"TORCH_HOME": str(torch_home), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
              "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    if isinstance(monkeypatch_or_env, dict):
        monkeypatch_or_env.update(values)
    else:
        for k, v in values.items():
            monkeypatch_or_env.setenv(k, v)


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0"])
def test_a_weights_file_is_loaded_exactly(torchvision_weights, backbone):
    path = torchvision_weights(backbone)
    weights = load_pretrained(str(path), backbone)
    assert weights.label == f"file:{path.name} sha256:{sha256_file(path)[:16]}"
    model = CNNBiLSTM(ModelConfig(num_classes=2, backbone=backbone, stem="imagenet", hidden_size=8, num_layers=1,
                                  pretrained=weights.label))
    apply_weights(model, weights)
    assert _equal(model.cnn.state_dict(), _backbone_tensors(path, backbone))  # every backbone tensor, buffers too


def test_a_file_of_torchvisions_older_weights_without_batchnorm_counters_loads(torchvision_weights, tmp_path):
    state = torch.load(torchvision_weights("resnet18"), weights_only=True)
    old = tmp_path / "old.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, old)
    model = CNNBiLSTM(ModelConfig(num_classes=2, backbone="resnet18", stem="imagenet", hidden_size=8, num_layers=1))
    apply_weights(model, load_pretrained(str(old), "resnet18"))
    want = _backbone_tensors(torchvision_weights("resnet18"), "resnet18")
    got = model.cnn.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want if not k.endswith("num_batches_tracked"))


@pytest.mark.parametrize(("source", "backbone", "first"), [
    ("resnet18", "resnet34", "layer1.2.conv1.weight is missing (80 mismatches in all)"),
    ("mobilenet_v3_small", "mobilenet_v3_large", "features.1.block.1.0.weight is missing (290 mismatches in all)"),
    ("efficientnet_b0", "resnet18", "conv1.weight is missing (462 mismatches in all)"),
    ("resnet18 with a 3x3 stem", "resnet18", "conv1.weight has shape (64, 3, 3, 3), resnet18 needs (64, 3, 7, 7) "
                                             "(1 mismatches in all)"),
])
def test_a_file_for_another_backbone_is_refused_in_one_line(torchvision_weights, tmp_path, capsys, source,
                                                             backbone, first):
    path = torchvision_weights(source.split()[0])
    if source.endswith("3x3 stem"):  # what a cifar-stem network's state dict holds there
        state = torch.load(path, weights_only=True)
        state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
        torch.save(state, path := tmp_path / "stem.pth")
    assert train_main([*SMALL, "--backbone", backbone, "--pretrained", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: --pretrained {path} is not a torchvision {backbone} state dict: ")
    assert first in err and not (tmp_path / "r").exists()


def test_bad_pretrained_values_are_refused_in_one_line(tmp_path, capsys):
    text = tmp_path / "weights.pth"
    text.write_text("not weights")
    cases = [(["--pretrained", str(tmp_path / "nothere.pth")], "not 'none', 'imagenet' or a file"),
             (["--pretrained", str(text)], "is not a readable torch state dict file"),
             (["--pretrained", str(text), "--stem", "cifar"], "keeps the backbone's own stem: give --stem imagenet")]
    for extra, message in cases:
        assert train_main([*SMALL, "--backbone", "resnet18", *extra, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_imagenet_without_network_or_cached_file_is_one_line_naming_the_file(tmp_path):
    """`python -m train --pretrained imagenet` as a user runs it, with an empty TORCH_HOME and downloads refused."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV",)}
    env["PYTHONPATH"] = str(REPO)
    _no_network(env, tmp_path / "torch-home")
    proc = subprocess.run([sys.executable, "-m", "train", *SMALL, "--backbone", "resnet18", "--pretrained",
                           "imagenet", "--out", str(tmp_path / "run")], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    folder = tmp_path / "torch-home" / "hub" / "checkpoints"
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: cannot download the ImageNet weights ResNet18_Weights.IMAGENET1K_V1 (")
    assert f"put the file resnet18-f37072fd.pth (from https://download.pytorch.org/models/resnet18-f37072fd.pth) " \
           f"into {folder} (TORCH_HOME/hub/checkpoints)" in proc.stderr
    assert not (tmp_path / "run").exists() and not list(folder.glob("*"))  # nothing half-written


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory, torchvision_weights):
    """``--pretrained imagenet`` from torch.hub's cache (a seeded file where torch.hub keeps the real one: no
    network), the backbone frozen for the one epoch."""
    home = tmp_path_factory.mktemp("torch-home")
    with pytest.MonkeyPatch.context() as mp:
        _no_network(mp, home)
        cached = imagenet_file(imagenet_weights(FAST_BACKBONE))
        cached.parent.mkdir(parents=True)
        shutil.copyfile(torchvision_weights(FAST_BACKBONE), cached)
        out = tmp_path_factory.mktemp("imagenet") / "run"
        assert train_main([*SMALL, "--backbone", FAST_BACKBONE, "--pretrained", "imagenet", "--epochs", "1",
                           "--freeze-backbone-epochs", "1", "--out", str(out)]) == 0
    return out, cached


def test_imagenet_weights_come_from_torch_hubs_cache(imagenet_run):
    out, cached = imagenet_run
    assert cached.name == "mobilenet_v3_small-047dcff4.pth"
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt.config.pretrained == "imagenet:MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    assert ckpt.config.stem == "imagenet"  # its own stem, chosen because --stem was left out
    assert ckpt.mean == IMAGENET_MEAN and ckpt.std == IMAGENET_STD  # what the runtime's preprocessing uses
    # Frozen for its one epoch: weights and BatchNorm statistics exactly as the file holds them.
    assert _equal(_cnn_state(out / "best.pt"), _backbone_tensors(cached, FAST_BACKBONE))
    config = json.loads((out / "config.json").read_text())
    assert config["model_config"]["pretrained"] == ckpt.config.pretrained and config["mean"] == IMAGENET_MEAN


def test_runtime_info_shows_the_backbone_and_its_weights(imagenet_run):
    out, _ = imagenet_run
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "runtime", "info", str(out / "best.pt"), "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ("backbone     mobilenet_v3_small (imagenet stem), feature width 576; pretrained: "
            "imagenet:MobileNet_V3_Small_Weights.IMAGENET1K_V1") in proc.stdout
    assert f"mean {IMAGENET_MEAN}, std {IMAGENET_STD}" in proc.stdout


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory, torchvision_weights):
    """The same 2-epoch fine-tuning run (weights file, backbone frozen for epoch 1, its learning rate a tenth)
    straight through, and interrupted after epoch 1 (a copy kept as "after-1") then resumed."""
    from train import engine

    root = tmp_path_factory.mktemp("fine-tune")
    args = [*SMALL, "--backbone", FAST_BACKBONE, "--pretrained", str(torchvision_weights(FAST_BACKBONE)),
            "--freeze-backbone-epochs", "1", "--backbone-lr-scale", "0.1", "--epochs", "2"]
    assert train_main([*args, "--out", str(root / "straight")]) == 0
    real = engine.train_one_epoch

    def interrupted_in_epoch_2(model, loader, optimizer, device, epoch, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(model, loader, optimizer, device, epoch, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "train_one_epoch", interrupted_in_epoch_2)
        assert train_main([*args, "--out", str(root / "resumed")]) == 130
    shutil.copytree(root / "resumed", root / "after-1")
    assert train_main(["--resume", str(root / "resumed")]) == 0
    return root


def test_a_frozen_backbone_keeps_its_weights_and_statistics(fine_tuned, torchvision_weights):
    file = _backbone_tensors(torchvision_weights(FAST_BACKBONE), FAST_BACKBONE)
    assert _equal(_cnn_state(fine_tuned / "after-1" / "last.pt"), file)
    after_2 = _cnn_state(fine_tuned / "straight" / "last.pt")
    assert not torch.equal(after_2["features.0.0.weight"], file["features.0.0.weight"])  # trained in epoch 2
    assert not torch.equal(after_2["features.0.1.running_mean"], file["features.0.1.running_mean"])


def test_the_backbone_learning_rate_is_scaled(fine_tuned):
    groups = read_checkpoint_dict(fine_tuned / "straight" / "last.pt")["train_state"]["optimizer"]["param_groups"]
    assert len(groups) == 4  # backbone (decay, no decay), then BiLSTM and heads (decay, no decay)
    assert [g["initial_lr"] for g in groups] == pytest.approx([3e-4, 3e-4, 3e-3, 3e-3], rel=1e-12)
    assert groups[0]["lr"] == pytest.approx(0.1 * groups[2]["lr"], rel=1e-12)


def test_resume_keeps_fine_tuning_and_is_exact(fine_tuned, capsys):
    straight = read_checkpoint_dict(fine_tuned / "straight" / "last.pt")
    resumed = read_checkpoint_dict(fine_tuned / "resumed" / "last.pt")
    assert _equal(straight["state_dict"], resumed["state_dict"])
    assert straight["config"] == resumed["config"]
    for option, value in (("--backbone-lr-scale", "0.5"), ("--freeze-backbone-epochs", "0"), ("--freeze-bn", None),
                          ("--pretrained", "none")):
        extra = [option] if value is None else [option, value]
        assert train_main(["--resume", str(fine_tuned / "resumed"), "--epochs", "3", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"the run was started with {option} " in err and "keeps it" in err, err


def test_freeze_bn_keeps_the_statistics_and_trains_the_rest(tmp_path, torchvision_weights):
    path = torchvision_weights(FAST_BACKBONE)
    assert train_main([*SMALL, "--backbone", FAST_BACKBONE, "--pretrained", str(path), "--freeze-bn", "--epochs", "1",
                       "--out", str(tmp_path / "run")]) == 0
    file, got = _backbone_tensors(path, FAST_BACKBONE), _cnn_state(tmp_path / "run" / "last.pt")
    stats = [k for k in file if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats and all(torch.equal(got[k], file[k]) for k in stats)
    assert not torch.equal(got["features.0.1.weight"], file["features.0.1.weight"])  # BatchNorm's scale trains
    assert not torch.equal(got["features.0.0.weight"], file["features.0.0.weight"])


def test_checkpoints_and_runs_from_before_stay_loadable_and_resumable(finished_run, tmp_path):
    """Files written before the pretrained field and the fine-tuning options: the defaults fill them in."""
    run = tmp_path / "old"
    shutil.copytree(finished_run, run)
    for name in ("best.pt", "last.pt"):
        d = read_checkpoint_dict(run / name)
        del d["config"]["pretrained"]
        torch.save(d, run / name)
    config = json.loads((run / "config.json").read_text())
    for key in ("pretrained", "backbone_lr_scale", "freeze_backbone_epochs", "freeze_bn"):
        del config["args"][key]
    del config["model_config"]["pretrained"]
    (run / "config.json").write_text(json.dumps(config))
    assert load_checkpoint(run / "best.pt").config.pretrained == "none"
    assert train_main(["--resume", str(run), "--epochs", "3"]) == 0
    assert read_checkpoint_dict(run / "last.pt")["train_state"]["epoch"] == 2


def test_fine_tuning_under_torchrun(tmp_path, torchvision_weights):
    """2 processes: rank 0 alone reads the weights (DDP hands them to rank 1), a frozen epoch leaves the backbone as
    the file holds it, and a run unfreezes it at epoch 2 (DDP rebuilt over the trainable backbone)."""
    from benchmarks.triton_server import free_port

    path = torchvision_weights(FAST_BACKBONE)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["PYTHONPATH"] = str(REPO)

    def torchrun(*argv):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "train", *argv]
        return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)

    args = [*SMALL, "--backbone", FAST_BACKBONE, "--pretrained", str(path), "--freeze-backbone-epochs", "1",
            "--backbone-lr-scale", "0.1", "--dist-timeout", "60"]
    file = _backbone_tensors(path, FAST_BACKBONE)
    frozen = torchrun(*args, "--epochs", "1", "--out", str(tmp_path / "frozen"))
    assert frozen.returncode == 0, frozen.stderr[-3000:]
    assert _equal(_cnn_state(tmp_path / "frozen" / "last.pt"), file)
    unfrozen = torchrun(*args, "--epochs", "2", "--out", str(tmp_path / "unfrozen"))
    assert unfrozen.returncode == 0, unfrozen.stderr[-3000:]
    assert "epoch 2: the backbone trains from here on (frozen for the first 1)" in unfrozen.stderr
    after = _cnn_state(tmp_path / "unfrozen" / "last.pt")
    assert not torch.equal(after["features.0.0.weight"], file["features.0.0.weight"])
