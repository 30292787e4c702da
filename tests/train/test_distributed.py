"""Data-parallel training (train/distributed.py) on CPU with gloo and 2 processes on this machine, started by torchrun
as a user would: one step, and k steps of `python -m train`, on 2 ranks equal the same steps on 1 rank with the whole
batch; a 2-process run writes its files once and learns; resume from 2 processes to 1 and back; a killed rank ends the
job with the last checkpoint loadable; the samplers' shards; and clear errors for a wrong setup."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARGS, run_train
from torch.utils.data import DistributedSampler

from benchmarks.triton_server import free_port
from runtime.checkpoint import load_checkpoint, read_checkpoint_dict
from train import distributed
from train.__main__ import main as train_main
from train.data import DataSpec, build_dataset
from train.run_state import RUN_FILES, read_resume_state

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_step_worker.py")

# The cheapest configuration that runs the whole path and learns (resnet18 with the imagenet stem on 16x16 frames of
# 4, 2 synthetic classes). Odd clip counts: the training split leaves one clip out per epoch over 2 ranks (said in the
# log), and the held-out split's shards differ in length, which the reduced evaluation must count exactly once.
SMALL = ["--preset", "demo", "--synthetic-classes", "2", "--frames", "4", "--frame-size", "16", "--hidden-size", "32",
         "--train-clips", "129", "--val-clips", "33", "--device", "cpu", "--no-progress", "--no-eval-shuffled",
         "--lr", "3e-3", "--dist-timeout", "30"]
TRAIN, VAL = 129, 33
EPOCHS = 7  # of the 2-process run; the 1-process run (for resuming under 2 processes) takes ONE_EPOCHS
ONE_EPOCHS = 1
BATCH = 8  # per process with 2 processes: the 1-process run takes 2 x BATCH, so both take 16 clips per step
# "It learns": the held-out frame accuracy of the 2-process run after EPOCHS epochs, against 0.5 by chance. On an AMD
# EPYC (2 cores, 2026-12), 2-process runs of this configuration ended at 0.94 to 1.00 for seeds 0-9 with one thread
# per rank (0.99 for seed 0, the test's) and at 0.83 to 1.00 for seeds 0-6 with two (0.98 for seed 0): the slowest of
# those 17 runs clears 0.7 by 0.13, every other one by more than 0.2. After their first epoch they stood at 0.39 to
# 0.64, and a run that learns nothing stays near 0.5: 0.7 is 2.3 standard deviations above it even counting only the
# 33 clips as independent. (After 4 epochs, as this test once trained, seeds 0-6 spread from 0.70 to 0.95.)
LEARNED_FRAME_ACC = 0.7

# k optimizer steps of `python -m train` (tests/train/ddp_step_worker.py --train), with BatchNorm frozen: 32 training
# clips, 2 epochs of 4 steps of 8 clips (1 rank x 8, or 2 ranks x 4). SGD without gradient clipping, which would hide a
# wrong gradient scale. 9 held-out clips: shards of 5 and 4.
EXACT = ["--data", "synthetic", "--synthetic-classes", "2", "--frames", "4", "--frame-size", "16", "--backbone",
         "resnet18", "--stem", "imagenet", "--hidden-size", "16", "--num-layers", "1", "--train-clips", "32",
         "--val-clips", "9", "--epochs", "2", "--opt", "sgd", "--lr", "0.05", "--clip-grad", "0", "--device", "cpu",
         "--no-progress", "--no-eval-shuffled", "--dist-timeout", "30"]


def _torchrun_cmd(nproc: int, *argv: str, script: str | None = None) -> list[str]:
    target = [script] if script else ["-m", "train"]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), *target, *argv]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in distributed.ENV_VARS}
    env["PYTHONPATH"] = str(REPO)
    return env


def _torchrun(nproc: int, *argv: str, script: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(_torchrun_cmd(nproc, *argv, script=script), env=_env(), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _metrics(run: Path) -> list[dict]:
    return json.loads((run / "metrics.json").read_text())


def _train_state(run: Path) -> dict:
    return read_checkpoint_dict(run / "last.pt")["train_state"]


# --------------------------------------------------------------------------------------------------------------------
# one step: 2 ranks x half a batch == 1 rank x the whole batch
# --------------------------------------------------------------------------------------------------------------------
def test_one_step_on_two_ranks_equals_one_step_on_one_rank_with_the_whole_batch(tmp_path):
    import ddp_step_worker as w  # tests/train is on sys.path (pytest's rootdir insertion)

    out = tmp_path / "ddp.pt"
    res = _torchrun(2, str(out), script=str(WORKER), timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    frames, lengths, labels = w.make_batch()
    whole = w.make_model()
    want = w.one_step(whole, whole, frames, lengths, labels)
    half = w.make_model()
    half_only = w.one_step(half, half, frames[:4], lengths[:4], labels[:4])
    before = w.make_model().state_dict()

    def max_diff(a, b):
        return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())

    moved, off_by_half = max_diff(want, before), max_diff(want, half_only)
    err, ranks_apart = max_diff(ddp["rank0"], want), max_diff(ddp["rank0"], ddp["rank1"])
    print(f"step moved weights by up to {moved:.3g}; half the batch alone differs by {off_by_half:.3g}; "
          f"2 ranks vs 1 rank: max |diff| {err:.3g}; rank 0 vs rank 1: {ranks_apart:.3g}")
    assert moved > 1e-2 and off_by_half > 1e-3  # the comparison can fail: the step and the split both matter
    assert ranks_apart == 0.0
    assert err < 1e-5


def _step_gaps(got: dict, want: dict, init: dict) -> tuple[float, float]:
    """Over the floating tensors of two state dicts: the largest ``max|got - want| / max|want - init|`` (how far apart
    they are, as a share of how far training moved each tensor), and the smallest ``max|want - init|``."""
    ratios, moved = [], []
    for k, w in want.items():
        if not w.is_floating_point():
            continue
        step = float((w.double() - init[k].double()).abs().max())
        gap = float((got[k].double() - w.double()).abs().max())
        if step == 0.0:  # frozen BatchNorm statistics: both runs must have left them alone
            assert gap == 0.0, k
            continue
        ratios.append(gap / step)
        moved.append(step)
    return max(ratios), min(moved)


def test_k_steps_of_python_m_train_on_two_ranks_equal_one_rank_with_the_whole_batch(tmp_path):
    """What data-parallel training promises: 2 ranks with batch b over the same global samples take the same
    optimizer steps as 1 process with batch 2b, through the whole of `python -m train` (data, samplers, DDP, loss,
    scheduler, sharded evaluation, checkpoints).

    BatchNorm is frozen in eval mode (ddp_step_worker.py): in train mode each rank normalises over its own b clips,
    which is not what 2b clips give, and --sync-bn, which would make them equal, runs on CUDA devices only. The
    reference is `torchrun --nproc_per_node 1`: its DistributedSampler draws the same permutation per (seed, epoch) at
    every world size, so its step i takes exactly the clips of the two ranks' steps i (rank r takes every other
    clip); a plain one-process run shuffles in another order. (The one-step test above compares DDP with a model
    outside any process group.)
    """
    from runtime.model import CNNBiLSTM, ModelConfig
    from train.run_state import seed_everything

    runs = {}
    for nproc, batch in ((1, 8), (2, 4)):
        out = tmp_path / f"world{nproc}"
        res = _torchrun(nproc, "--train", *EXACT, "--batch-size", str(batch), "--out", str(out), script=str(WORKER),
                        timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        runs[nproc] = (read_checkpoint_dict(out / "last.pt"), _metrics(out))
    (one, one_records), (two, two_records) = runs[1], runs[2]
    seed_everything(0)  # fit's weight initialisation for --seed 0
    init = CNNBiLSTM(ModelConfig(**one["config"])).state_dict()
    worst, least_moved = _step_gaps(two["state_dict"], one["state_dict"], init)
    print(f"after {one['train_state']['scheduler']['last_epoch']} steps: 2 ranks vs 1 rank differ by at most "
          f"{worst:.3g} of how far training moved a tensor (the least moved tensor moved {least_moved:.3g})")
    assert one["train_state"]["steps_per_epoch"] == two["train_state"]["steps_per_epoch"] == 4
    assert one["train_state"]["scheduler"]["last_epoch"] == two["train_state"]["scheduler"]["last_epoch"] == 8
    # Both runs moved every parameter, and agree to within 1% of each tensor's move: on an AMD EPYC at most 4.1e-4 with
    # one thread per process and 5.6e-5 with two (in the first convolution, whose gradient sums the most products).
    # Half a batch alone, a summed instead of an averaged gradient or a missed synchronisation differ by a share near 1.
    assert least_moved > 0.0
    assert worst < 1e-2
    losses = ("train_loss", "train_clip_loss", "val_loss", "val_frame_loss", "val_clip_loss")
    rel = max(abs(b[k] - a[k]) / abs(a[k]) for a, b in zip(one_records, two_records, strict=True) for k in losses)
    print(f"the epochs' losses differ by at most {rel:.3g} (relative)")
    for a, b in zip(one_records, two_records, strict=True):  # the same losses, every clip counted once
        assert a["val_clips"] == b["val_clips"] == 9 and a["train_lr"] == b["train_lr"]
        for key in losses:
            assert b[key] == pytest.approx(a[key], rel=1e-5), key


# --------------------------------------------------------------------------------------------------------------------
# runs: 1 process, 2 processes, resume across world sizes
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-process torchrun run of SMALL (batch BATCH each, EPOCHS epochs) and a 1-process run (in this process, batch
    2 x BATCH, ONE_EPOCHS epochs) to resume under 2 processes."""
    root = tmp_path_factory.mktemp("ddp")
    one, two = root / "one", root / "two"
    t0 = time.perf_counter()
    assert train_main([*SMALL, "--epochs", str(ONE_EPOCHS), "--batch-size", str(2 * BATCH), "--out", str(one)]) == 0
    t1 = time.perf_counter()
    # A minute or two on 2 quiet cores; the limit only ends a hung run (2 threads per rank on a loaded 2-core machine
    # took up to 11 minutes).
    res = _torchrun(2, *SMALL, "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--out", str(two), timeout=900)
    t2 = time.perf_counter()
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    print(f"1 process: {t1 - t0:.0f} s, 2 processes: {t2 - t1:.0f} s (torchrun start included)")
    return {"root": root, "one": one, "two": two, "two_log": res.stdout + res.stderr}


def test_two_process_run_writes_its_files_once_and_learns(runs):
    two, log = runs["two"], runs["two_log"]
    assert sorted(p.name for p in two.iterdir()) == sorted(RUN_FILES)  # no temporaries, nothing else
    records = _metrics(two)
    assert [r["epoch"] for r in records] == list(range(EPOCHS))  # one record per epoch, not one per rank
    assert all(r["val_clips"] == VAL for r in records)  # uneven shards (17 + 16), each clip counted once
    for epoch in range(1, EPOCHS + 1):  # only rank 0 logs progress
        assert log.count(f"epoch {epoch}/{EPOCHS} ") == 1, log[-3000:]
    assert "rank 1" not in log.replace("rank 1 of", "")  # rank 1 logged nothing (warnings and errors would show)
    assert f"each epoch leaves out 1 of the {TRAIN} clips" in log
    config = json.loads((two / "config.json").read_text())
    assert config["world_size"] == 2 and config["dist_backend"] == "gloo" and config["args"]["batch_size"] == BATCH
    ts = _train_state(two)
    assert ts["world_size"] == 2 and len(ts["rng_per_rank"]) == 2
    assert ts["steps_per_epoch"] == -(-(TRAIN // 2) // BATCH)
    best = load_checkpoint(two / "best.pt")  # the unwrapped network: loads into a plain CNNBiLSTM
    assert not any(k.startswith("module.") for k in best.model.state_dict())
    acc = records[-1]["val_frame_acc"]
    print(f"held-out frame accuracy after {EPOCHS} epochs on 2 processes: {acc:.4f}")
    assert acc >= LEARNED_FRAME_ACC, records[-1]  # see LEARNED_FRAME_ACC for the margin


def test_resume_two_processes_to_one(runs):
    run = runs["root"] / "two-to-one"
    shutil.copytree(runs["two"], run)
    assert train_main(["--resume", str(run), "--epochs", str(EPOCHS + 1), "--batch-size", str(2 * BATCH)]) == 0
    ts, records = _train_state(run), _metrics(run)
    steps = -(-TRAIN // (2 * BATCH))
    assert ts["epoch"] == EPOCHS and ts["world_size"] == 1 and len(ts["rng_per_rank"]) == 1
    # The schedule went on from the start of the resumed epoch in the new steps per epoch.
    assert ts["steps_per_epoch"] == steps and ts["scheduler"]["last_epoch"] == (EPOCHS + 1) * steps
    assert records[:EPOCHS] == _metrics(runs["two"]) and records[-1]["val_clips"] == VAL


def test_resume_one_process_to_two(runs):
    run = runs["root"] / "one-to-two"
    shutil.copytree(runs["one"], run)
    res = _torchrun(2, "--resume", str(run), "--epochs", str(ONE_EPOCHS + 1), "--batch-size", str(BATCH))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"the learning-rate schedule continues from the start of epoch {ONE_EPOCHS + 1}" in res.stderr
    ts, records = _train_state(run), _metrics(run)
    steps = -(-(TRAIN // 2) // BATCH)
    assert ts["epoch"] == ONE_EPOCHS and ts["world_size"] == 2 and len(ts["rng_per_rank"]) == 2
    assert ts["steps_per_epoch"] == steps and ts["scheduler"]["last_epoch"] == (ONE_EPOCHS + 1) * steps
    assert records[:ONE_EPOCHS] == _metrics(runs["one"]) and records[-1]["val_clips"] == VAL


# --------------------------------------------------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------------------------------------------------
def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker ``rank`` (its children, told apart by their RANK variable)."""
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        try:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(child)
    return None


def _start_and_hit_rank_1(out: Path, timeout: int, sig: int) -> tuple[str, int, float]:
    """Start a 2-process tiny run, send ``sig`` to rank 1 once the first epoch is saved; returns torchrun's output,
    its exit status and the seconds from the signal to its end."""
    cmd = _torchrun_cmd(2, *TINY_ARGS, "--stem", "imagenet", "--train-clips", "32", "--epochs", "50",
                        "--no-eval-shuffled", "--dist-timeout", str(timeout), "--out", str(out))
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = None
    try:
        deadline = time.monotonic() + 240
        while not (out / "last.pt").exists():  # the first epoch is saved
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended or never saved an epoch"
            time.sleep(0.2)
        time.sleep(0.5)  # into the next epoch
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, sig)
        hit = time.monotonic()
        log, _ = proc.communicate(timeout=timeout + 120)
        return log, proc.returncode, time.monotonic() - hit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if victim is not None and sig == signal.SIGSTOP:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)


def _assert_last_checkpoint_intact(out: Path) -> None:
    ts = read_resume_state(out, 50)["train_state"]  # the last complete checkpoint: loadable and resumable
    assert ts["epoch"] >= 0 and load_checkpoint(out / "last.pt").model is not None


def test_killing_one_rank_mid_epoch_ends_the_job_within_the_timeout(tmp_path):
    out, timeout = tmp_path / "run", 20
    log, rc, took = _start_and_hit_rank_1(out, timeout, signal.SIGKILL)
    print(f"the job ended {took:.1f} s after rank 1 was killed (timeout {timeout} s)")
    assert rc != 0 and took < timeout, log[-3000:]
    # Rank 0 says why it stopped: the collective with the dead rank failed, or torchrun's SIGTERM reached it first.
    assert ("rank 0 of 2: a collective operation with the other ranks failed" in log
            or "rank 0 of 2: received SIGTERM" in log), log[-3000:]
    _assert_last_checkpoint_intact(out)


def test_a_hung_rank_ends_the_job_after_the_collective_timeout(tmp_path):
    out, timeout = tmp_path / "run", 10
    log, rc, took = _start_and_hit_rank_1(out, timeout, signal.SIGSTOP)  # alive but silent: only the timeout helps
    print(f"the job ended {took:.1f} s after rank 1 was stopped (timeout {timeout} s)")
    assert rc != 0, log[-3000:]
    assert "rank 0 of 2: a collective operation with the other ranks failed" in log, log[-3000:]
    assert f"hung for longer than --dist-timeout {timeout} s" in log
    # Rank 0 fails once the timeout has passed; torchrun then takes up to its own 30 s grace to end the stopped rank.
    assert timeout - 1 <= took < timeout + 90
    _assert_last_checkpoint_intact(out)


def test_a_peer_silent_during_ddps_buffer_broadcast_counts_as_a_collective_failure(tmp_path):
    # DDP broadcasts BatchNorm's buffers at the start of every forward; gloo's timeout there says only "Application
    # timeout caused pair closure". A run whose rank 1 was stopped at that moment once fell through as a plain error.
    out = tmp_path / "caught.json"
    res = _torchrun(2, "--hang-in-forward", str(out), script=str(WORKER), timeout=120)
    assert out.exists(), res.stdout[-3000:] + res.stderr[-3000:]
    caught = json.loads(out.read_text())
    print(caught)
    assert caught["caught"] is not None and caught["is_collective_failure"], caught


def test_an_error_of_the_models_own_code_is_not_taken_for_a_failed_peer():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")

    with pytest.raises(RuntimeError) as caught:
        Broken()(torch.zeros(1))
    assert not distributed.is_collective_failure(caught.value)
    assert not distributed.is_collective_failure(ValueError("gloo"))  # only RuntimeErrors and DistErrors
    assert distributed.is_collective_failure(RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed"))


# --------------------------------------------------------------------------------------------------------------------
# shards
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, world", [(10, 2), (11, 2), (11, 3), (2, 2)])
def test_training_shards_are_disjoint_equal_and_leave_out_only_the_remainder(n, world):
    data = list(range(n))
    for epoch in (0, 1):
        shards = [list(distributed.train_sampler(data, distributed.DistContext(r, world, r, "gloo"), 3, epoch))
                  for r in range(world)]
        flat = [i for s in shards for i in s]
        assert len(set(flat)) == len(flat) == n - n % world  # no clip twice; only the remainder left out
        assert {len(s) for s in shards} == {n // world}  # equal shards: every rank takes the same number of steps
    orders = [list(distributed.train_sampler(data, distributed.DistContext(0, world, 0, "gloo"), 3, e))
              for e in range(4)]
    assert n < 4 or len({tuple(o) for o in orders}) > 1  # set_epoch: epochs differ


@pytest.mark.parametrize("n, world", [(101, 2), (5, 3), (2, 3), (8, 4)])
def test_evaluation_shards_cover_every_clip_exactly_once(n, world):
    shards = [list(distributed.ShardSampler(n, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(s) for s in shards] == [len(distributed.ShardSampler(n, r, world)) for r in range(world)]
    if n % world:  # why not DistributedSampler: it pads the last shards with repeated clips
        padded = [list(DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=False)) for r in range(world)]
        assert sum(map(len, padded)) > n


def _clip_digest(item) -> str:
    return hashlib.sha256(item[0].numpy().tobytes()).hexdigest()


def test_synthetic_and_cifar_style_sources_shard_into_distinct_clips(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):  # an ImageFolder tree: the cifar10 source's reader, 6 images per class
        for split in ("train", "test"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (8, 8), (40 * i, 100 if c == "cat" else 200, 7 * i)).save(
                    tmp_path / split / c / f"{i}.png")
    sources = [build_dataset(DataSpec(name="synthetic", frames=4, frame_size=(8, 8), num_clips=9, num_classes=2),
                             "train"),
               build_dataset(DataSpec(name="cifar10", data_dir=str(tmp_path), frames=2, frame_size=(8, 8)), "train")]
    for ds in sources:
        world = 2
        digests = [[_clip_digest(ds[i]) for i in distributed.train_sampler(
            ds, distributed.DistContext(r, world, r, "gloo"), 0, 1)] for r in range(world)]
        flat = [d for s in digests for d in s]
        assert len(set(flat)) == len(flat) == len(ds) - len(ds) % world, type(ds).__name__
        held_out = [_clip_digest(ds[i]) for r in range(world) for i in distributed.ShardSampler(len(ds), r, world)]
        assert sorted(held_out) == sorted(_clip_digest(ds[i]) for i in range(len(ds)))


# --------------------------------------------------------------------------------------------------------------------
# a wrong setup is one clear line
# --------------------------------------------------------------------------------------------------------------------
def _set_env(monkeypatch, **values):
    for k in distributed.ENV_VARS:
        monkeypatch.delenv(k, raising=False)
    for k, v in values.items():
        monkeypatch.setenv(k, str(v))


def test_missing_torchrun_variables_are_named(tmp_path, monkeypatch, capsys):
    _set_env(monkeypatch, RANK=0, WORLD_SIZE=2)
    assert run_train(tmp_path / "run", "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert "LOCAL_RANK, MASTER_ADDR, MASTER_PORT missing" in err and "torchrun" in err
    assert not (tmp_path / "run").exists()


def test_a_port_in_use_is_named(tmp_path, monkeypatch, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _set_env(monkeypatch, RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        assert run_train(tmp_path / "run", "--epochs", "1", "--dist-timeout", "5") == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port} is already in use" in err and "--master-port" in err, err


def test_a_world_size_with_missing_ranks_times_out_with_a_clear_message(tmp_path, monkeypatch, capsys):
    _set_env(monkeypatch, RANK=0, WORLD_SIZE=2, LOCAL_RANK=0, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())
    t0 = time.monotonic()
    assert run_train(tmp_path / "run", "--epochs", "1", "--dist-timeout", "3") == 2
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert "not all of WORLD_SIZE=2 processes joined" in err and "nproc_per_node x nnodes" in err, err


def test_sync_bn_on_cpu_is_refused_with_the_reason(tmp_path, capsys):
    assert run_train(tmp_path / "run", "--epochs", "1", "--sync-bn") == 2
    err = capsys.readouterr().err
    assert "--sync-bn needs CUDA devices" in err and not (tmp_path / "run").exists()
