"""Data-parallel training with BatchNorm frozen, run by ``torchrun`` from tests/train/test_distributed.py.

``python ddp_step_worker.py OUT.pt`` (2 ranks): one optimisation step of the real training loop. Each rank takes its
half of one batch; rank 0 saves the weights after the step, rank 1 its own beside them. The test compares them with
one process taking the whole batch, built by the same functions here.

``python ddp_step_worker.py --train ARGS...`` (any number of ranks): ``python -m train ARGS...`` itself (its ``main``),
with every CNNBiLSTM's BatchNorm layers kept in eval mode. The test runs it on 1 rank with batch 2b and on 2 ranks with
batch b and compares the run folders.

``python ddp_step_worker.py --hang-in-forward OUT.json``: rank 1 stays silent after DDP is built while rank 0 starts a
forward pass, whose buffer broadcast then times out; rank 0 writes what it caught and whether
:func:`train.distributed.is_collective_failure` takes it for a failed peer.

BatchNorm is in eval mode during the step (:class:`FrozenBNModel`): it normalises with its running statistics, the
same on every rank whatever its share of the batch, so the two runs can differ only through the gradient
synchronisation. (In train mode each rank would normalise over its own half batch, and in torch 2.14 SyncBatchNorm,
which would fix that, refuses CPU tensors.)
"""

from __future__ import annotations

import os
import sys

import torch

from runtime.model import CNNBiLSTM, ModelConfig

CONFIG = ModelConfig(num_classes=3, backbone="resnet18", stem="cifar", frame_size=(16, 16), hidden_size=16,
                     num_layers=1, dropout=0.0)
BATCH = 8


def _train_with_frozen_bn(self: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
    """``Module.train``, except that BatchNorm layers stay in eval mode."""
    torch.nn.Module.train(self, mode)
    for m in self.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return self


class FrozenBNModel(CNNBiLSTM):
    """The network with its BatchNorm layers kept in eval mode when the loop puts it in train mode."""

    train = _train_with_frozen_bn


def make_model() -> FrozenBNModel:
    torch.manual_seed(0)
    model = FrozenBNModel(CONFIG)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial running statistics, so eval-mode BN really normalises
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def make_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    frames = torch.randn(BATCH, 5, 3, *CONFIG.frame_size, generator=g)
    lengths = torch.tensor([5, 3, 5, 1, 4, 5, 2, 5])  # packed sequences of different lengths on both ranks
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    return frames, lengths, labels


def one_step(model: CNNBiLSTM, trained: torch.nn.Module, frames, lengths, labels) -> dict:
    """One step of :func:`train.loop.train_one_epoch` (SGD with momentum and weight decay; no gradient clipping,
    which would hide a wrong gradient scale); returns the weights after it."""
    from train.loop import train_one_epoch
    from train.options import build_optimizer

    optimizer = build_optimizer(model, "sgd", lr=0.5, weight_decay=0.05, momentum=0.9)
    train_one_epoch(trained, [(frames, lengths, labels)], optimizer, torch.device("cpu"), 0, clip_grad_norm=0.0)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def main(out: str) -> int:
    from train import distributed

    with distributed.session("cpu", "gloo", 30.0) as (ctx, device):
        assert ctx.world_size == 2, ctx
        model = make_model()
        trained = distributed.wrap_model(model, ctx, device)
        frames, lengths, labels = make_batch()
        half = slice(ctx.rank * BATCH // 2, (ctx.rank + 1) * BATCH // 2)
        weights = one_step(model, trained, frames[half], lengths[half], labels[half])
        every = distributed.all_gather_objects(ctx, weights)
        if ctx.is_main:
            torch.save({"rank0": every[0], "rank1": every[1]}, out)
    return 0


def train_frozen_bn(argv: list[str]) -> int:
    """``python -m train`` with BatchNorm frozen in every CNNBiLSTM that training builds; its exit status."""
    from train.__main__ import main as train_main

    CNNBiLSTM.train = _train_with_frozen_bn  # in this worker process only; fit builds its network as a CNNBiLSTM
    return train_main(argv)


HANG_TIMEOUT_S = 3.0


def hang_in_forward(out: str) -> int:
    import json
    import time

    from train import distributed

    with distributed.session("cpu", "gloo", HANG_TIMEOUT_S) as (ctx, device):
        trained = distributed.wrap_model(make_model(), ctx, device)
        if ctx.rank == 1:  # alive but silent, as a stopped rank is, until rank 0 has written what it caught
            deadline = time.monotonic() + HANG_TIMEOUT_S + 60
            while not os.path.exists(out) and time.monotonic() < deadline:
                time.sleep(0.1)
            os._exit(0)
        frames, lengths, _ = make_batch()
        try:
            trained(frames, lengths)
            caught = None
        except Exception as e:  # noqa: BLE001 - the test judges what came
            caught = e
        with open(out + ".part", "w") as f:
            json.dump({"caught": None if caught is None else f"{type(caught).__name__}: {caught}",
                       "is_collective_failure": caught is not None and distributed.is_collective_failure(caught)}, f)
        os.replace(out + ".part", out)
        os._exit(0)  # leave at once: tearing the broken group down would wait on rank 1 again


if __name__ == "__main__":
    if sys.argv[1] == "--hang-in-forward":
        raise SystemExit(hang_in_forward(sys.argv[2]))
    if sys.argv[1] == "--train":
        raise SystemExit(train_frozen_bn(sys.argv[2:]))
    raise SystemExit(main(sys.argv[1]))
