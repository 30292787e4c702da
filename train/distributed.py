"""Data-parallel training across processes started by ``torchrun`` (``torch.distributed`` + DistributedDataParallel):
the process group, the samplers, the reductions and what a failed rank turns into.

One process per device. ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
with none of them set, training runs in one process. The backend is NCCL for CUDA devices and gloo for CPUs unless
``--dist-backend`` says otherwise; each rank trains on ``cuda:LOCAL_RANK``.

Every collective has a timeout (``--dist-timeout``, default :data:`DEFAULT_TIMEOUT_S`): a rank that hangs makes the
others fail after it instead of waiting forever. A rank that dies ends the job sooner: gloo's and NCCL's connections to
it close at once, and torchrun stops the other ranks (SIGTERM, turned into :class:`RankStopped` here). The timeout must
exceed the longest stretch in which one rank works while the others wait: rank 0 writing a checkpoint, or building its
data set (``--download``) before the others build theirs.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, TypeVar

import torch
from torch.utils.data import Sampler

from ._checks import TrainError

logger = logging.getLogger(__name__)

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
BACKENDS = ("auto", "nccl", "gloo")
# Long enough for rank 0 to write a ResNet-34 checkpoint while the others wait, short enough that a hung rank ends a
# CPU test in well under a minute; raise it for slow file systems or long single-rank stretches (see the module doc).
DEFAULT_TIMEOUT_S = 60.0
T = TypeVar("T")


class DistributedError(TrainError):
    """A distributed setup that cannot work: missing or inconsistent environment, a port in use, missing ranks."""


class RankFailure(RuntimeError):
    """A collective with the other ranks failed during training: another rank died, hung past the timeout or stopped."""


class RankStopped(KeyboardInterrupt):
    """SIGTERM in a distributed run: torchrun stops every rank when one has failed (or the job was cancelled)."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, local rank (its GPU on its node), backend (None: one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def active(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


SINGLE = DistContext()


def read_env(environ=None) -> Optional[dict[str, Any]]:
    """torchrun's variables, checked; None when none is set (a plain one-process run).

    Raises:
        DistributedError: some but not all are set, or a value is not a valid number / rank.
    """
    env = os.environ if environ is None else environ
    present = [k for k in ENV_VARS if env.get(k)]
    if not present:
        return None
    missing = [k for k in ENV_VARS if not env.get(k)]
    if missing:
        raise DistributedError(
            f"distributed training needs all of {', '.join(ENV_VARS)} in the environment; {', '.join(present)} "
            f"set but {', '.join(missing)} missing. Start it with torchrun (torchrun --nproc_per_node N -m train "
            f"...), which sets them all, or unset {', '.join(present)} to train in one process")
    out: dict[str, Any] = {"MASTER_ADDR": env["MASTER_ADDR"]}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        try:
            out[k] = int(env[k])
        except ValueError:
            raise DistributedError(f"environment variable {k}={env[k]!r} is not an integer") from None
    if out["WORLD_SIZE"] < 1 or not 0 <= out["RANK"] < out["WORLD_SIZE"]:
        raise DistributedError(f"RANK={out['RANK']} and WORLD_SIZE={out['WORLD_SIZE']} do not fit: need "
                               "WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE")
    if out["LOCAL_RANK"] < 0 or not 0 < out["MASTER_PORT"] < 65536:
        raise DistributedError(f"LOCAL_RANK={out['LOCAL_RANK']} must be >= 0 and MASTER_PORT={out['MASTER_PORT']} "
                               "in 1..65535")
    return out


def rank_device(name: str, local_rank: int) -> torch.device:
    """The device of a distributed rank: ``cuda:LOCAL_RANK`` for ``auto`` (with CUDA) and ``cuda``, or the CPU.

    Raises:
        DistributedError: an explicit ``cuda:N`` (ranks pick their GPU by local rank), or fewer GPUs than ranks here.
    """
    from .options import resolve_device

    device = resolve_device(name)  # checks the name and that CUDA is there
    if device.type == "cpu":
        return device
    if name not in ("auto", "cuda"):
        raise DistributedError(f"--device {name}: under torchrun each process uses cuda:LOCAL_RANK; give --device cuda "
                               "(or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DistributedError(f"LOCAL_RANK={local_rank} but torch sees {count} CUDA GPU(s) on this node: start at "
                               f"most {count} processes per node (--nproc_per_node {count})")
    return torch.device("cuda", local_rank)


def choose_backend(requested: str, device: torch.device) -> str:
    """``auto``: NCCL for CUDA, gloo for CPU; an explicit choice is checked against the device.

    Raises:
        DistributedError: an unknown name, NCCL without CUDA, or a backend this torch build lacks.
    """
    import torch.distributed as dist

    if requested not in BACKENDS:
        raise DistributedError(f"--dist-backend {requested!r}; valid choices: {', '.join(BACKENDS)}")
    backend = ("nccl" if device.type == "cuda" else "gloo") if requested == "auto" else requested
    if backend == "nccl" and device.type != "cuda":
        raise DistributedError("--dist-backend nccl needs CUDA devices; on CPUs use gloo (or auto)")
    available = {"nccl": dist.is_nccl_available(), "gloo": dist.is_gloo_available()}[backend]
    if not available:
        raise DistributedError(f"this torch build has no {backend} backend; use --dist-backend "
                               f"{'gloo' if backend == 'nccl' else 'nccl'} or another build")
    return backend


def _explain_init_failure(e: Exception, env: dict, timeout_s: float) -> DistributedError:
    text = " ".join(str(e).split())
    where = f"MASTER_ADDR:MASTER_PORT={env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    if "EADDRINUSE" in text or "address already in use" in text.lower():
        return DistributedError(f"{where} is already in use (another job, or an earlier one still running): pick a "
                                "free port (torchrun --master-port PORT, or --rdzv-endpoint HOST:PORT)")
    if "clients joined" in text or "timed out" in text.lower() or "timeout" in text.lower():
        return DistributedError(
            f"rank {env['RANK']}: not all of WORLD_SIZE={env['WORLD_SIZE']} processes joined at {where} within "
            f"--dist-timeout {timeout_s:g} s: check that nproc_per_node x nnodes equals the world size, that every "
            f"node was started, and that they reach {env['MASTER_ADDR']} ({text[:200]})")
    return DistributedError(f"rank {env['RANK']}: cannot set up the process group at {where}: {text[:300]}")


def _raise_rank_stopped(signum, frame):
    raise RankStopped(f"received {signal.Signals(signum).name}: torchrun stops every rank when one has failed (or "
                      "the job was cancelled)")


@contextlib.contextmanager
def session(device_name: str, backend: str = "auto",
            timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[tuple[DistContext, torch.device]]:
    """The process group for one training run, and this rank's device; one process when torchrun's variables are
    absent. A process group someone else set up (a script calling ``fit``) is used and left alone; one set up here is
    destroyed on every way out. While it lives, SIGTERM raises :class:`RankStopped` (so atomic writes clean up and the
    rank says why it stopped).

    Raises:
        DistributedError: see :func:`read_env`, :func:`rank_device`, :func:`choose_backend`, and a failed set-up
            (port in use, not every rank joined within ``timeout_s``).
    """
    import torch.distributed as dist

    from .options import resolve_device

    if not timeout_s > 0:
        raise DistributedError(f"--dist-timeout must be > 0 seconds, got {timeout_s}")
    if dist.is_available() and dist.is_initialized():
        ctx = DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                          dist.get_backend())
        yield ctx, (rank_device(device_name, ctx.local_rank) if ctx.backend == "nccl" else resolve_device(device_name))
        return
    env = read_env()
    if env is None:
        yield SINGLE, resolve_device(device_name)
        return
    device = rank_device(device_name, env["LOCAL_RANK"])
    name = choose_backend(backend, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(name, timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if name == "nccl" else None)
    except (RuntimeError, ValueError) as e:  # DistNetworkError, DistStoreError and friends are RuntimeErrors
        raise _explain_init_failure(e, env, timeout_s) from e
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), env["LOCAL_RANK"], name)
    main_thread = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGTERM, _raise_rank_stopped) if main_thread else None
    try:
        yield ctx, device
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_handler)
        with contextlib.suppress(Exception):  # after a failed peer the group may be half-broken: free what we can
            dist.destroy_process_group()


# Messages of gloo's and NCCL's failures that reach Python as plain RuntimeErrors.
_COLLECTIVE_ERROR_TEXTS = ("gloo", "NCCL", "Connection closed", "Connection reset", "Timed out", "timed out",
                           "Broken pipe", "pair closure", "Application timeout")
# Where torch's own collectives are called from Python: DDP's buffer broadcasts and torch.distributed's functions.
_COLLECTIVE_CALLERS = ("torch/distributed/", "torch/nn/parallel/distributed.py")


def is_collective_failure(e: BaseException) -> bool:
    """Whether an exception raised in a distributed run comes from a collective (a dead, hung or stopped peer).

    A DistError is one; so is a RuntimeError that gloo or NCCL worded, or one raised by a collective that torch
    calls itself (DDP syncs its buffers at the start of each forward: a peer that hangs there gives only gloo's
    terse "Application timeout caused pair closure"). The innermost Python frame decides, so an error of the
    model's own code inside DDP's forward is not taken for one.
    """
    import torch.distributed as dist

    if isinstance(e, dist.DistError):
        return True
    if not isinstance(e, RuntimeError):
        return False
    if any(s in str(e) for s in _COLLECTIVE_ERROR_TEXTS):
        return True
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    raised_in = "" if tb is None else tb.tb_frame.f_code.co_filename.replace("\\", "/")
    return any(part in raised_in for part in _COLLECTIVE_CALLERS)


def main_first(ctx: DistContext, fn: Callable[[], T], *, others: bool = True) -> Optional[T]:
    """Run ``fn`` on rank 0 first, then (with ``others``) on the other ranks; returns this rank's result.

    A ValueError or OSError on rank 0 (an unusable run folder, nothing to resume, missing data) is raised there and,
    as a :class:`DistributedError` with the same message, on every other rank, instead of leaving them waiting for a
    collective that rank 0 never reaches. Rank 0 going first also keeps the ranks from racing for one download.
    """
    if not ctx.active:
        return fn()
    import torch.distributed as dist

    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except (ValueError, OSError) as e:
            error = e
    box = [None if error is None else f"{type(error).__name__}: {error}"]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0] is not None:
        raise DistributedError(f"rank 0 stopped the run before training: {box[0]}")
    if not ctx.is_main and others:
        result = fn()
    return result


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over every rank (``t`` itself in one process); the result is on ``t``'s device."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return t
    work = t.to(f"cuda:{torch.cuda.current_device()}") if dist.get_backend() == "nccl" else t.clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(t.device)


def broadcast_buffers(model: torch.nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), which each rank updated with its own batches
    since DDP's last copy: the ranks then evaluate with the statistics of the checkpoint rank 0 writes."""
    if not ctx.active:
        return
    import torch.distributed as dist

    for buf in model.buffers():
        dist.broadcast(buf, src=0)


def all_gather_objects(ctx: DistContext, obj: Any) -> list:
    """Every rank's ``obj`` in rank order (``[obj]`` in one process)."""
    if not ctx.active:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def train_sampler(dataset, ctx: DistContext, seed: int, epoch: int):
    """This rank's shard of the training set for ``epoch`` (None in one process: the loader shuffles): a
    :class:`~torch.utils.data.DistributedSampler` with ``set_epoch``, one permutation per (seed, epoch) split into
    equal disjoint shards. ``drop_last=True``, so no clip is seen twice in an epoch; the last ``len % world`` clips of
    each epoch's permutation (other ones every epoch) are left out, which :func:`describe_train_split` says once."""
    if not ctx.active:
        return None
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed,
                                 drop_last=True)
    sampler.set_epoch(epoch)
    return sampler


def describe_train_split(num_clips: int, ctx: DistContext, batch_size: int) -> str:
    """One line on how an epoch's clips are split over the ranks, naming any left out.

    Raises:
        DistributedError: fewer clips than ranks.
    """
    if num_clips < ctx.world_size:
        raise DistributedError(f"{num_clips} training clips cannot be split over {ctx.world_size} processes; use "
                               "more clips or fewer processes")
    per_rank, left = divmod(num_clips, ctx.world_size)
    line = (f"data-parallel over {ctx.world_size} processes ({ctx.backend}): {per_rank} training clips per process "
            f"per epoch, batch {batch_size} per process = {batch_size * ctx.world_size} clips per optimizer step")
    if left:
        line += (f"; each epoch leaves out {left} of the {num_clips} clips (the last {left} of its "
                 "shuffled order, so different ones every epoch)")
    return line


class ShardSampler(Sampler[int]):
    """Rank ``rank``'s share of an evaluation set: indices ``rank, rank + world, ...``, so the ranks together visit
    every index exactly once (DistributedSampler pads its shards to one length with repeated indices, which would
    count those clips twice; evaluation needs no equal shards: it runs no collective until its sums are reduced)."""

    def __init__(self, num_items: int, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.num_items, self.rank, self.world_size = int(num_items), int(rank), int(world_size)

    def __iter__(self):
        return iter(range(self.rank, self.num_items, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_items, self.world_size))


def eval_sampler(dataset, ctx: DistContext) -> Optional[ShardSampler]:
    """This rank's :class:`ShardSampler` of an evaluation set (None in one process: the whole set, in order)."""
    return ShardSampler(len(dataset), ctx.rank, ctx.world_size) if ctx.active else None


def wrap_model(model: torch.nn.Module, ctx: DistContext, device: torch.device, sync_bn: bool = False):
    """The module to train: ``model`` itself in one process, otherwise ``DistributedDataParallel`` over it (with
    BatchNorm turned into SyncBatchNorm first when ``sync_bn``). ``model`` stays the unwrapped network that
    checkpoints hold; DDP broadcasts rank 0's weights and buffers to every rank here.

    Raises:
        DistributedError: ``sync_bn`` on a CPU device.
    """
    check_sync_bn(sync_bn, device)
    if not ctx.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        # In place: the converted layers keep the names and state-dict keys of the BatchNorm they replace.
        converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if converted is not model:  # the root itself was a BatchNorm: never the case for CNNBiLSTM
            raise DistributedError("--sync-bn cannot convert a model whose root module is a BatchNorm layer")
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def check_sync_bn(sync_bn: bool, device: torch.device) -> None:
    """``--sync-bn`` needs CUDA devices: in torch 2.14 DistributedDataParallel refuses a model with SyncBatchNorm on
    the CPU ("SyncBatchNorm layers only work with GPU modules"), and SyncBatchNorm refuses CPU tensors.

    Raises:
        DistributedError: ``sync_bn`` with a CPU device.
    """
    if sync_bn and device.type != "cuda":
        raise DistributedError("--sync-bn needs CUDA devices: torch's SyncBatchNorm (and DistributedDataParallel "
                               "with it) refuses CPU modules and tensors, so on CPUs (gloo) each process normalises "
                               "over its own batch; drop --sync-bn (or give --no-sync-bn when resuming)")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DistributedDataParallel wrapper (``model`` itself otherwise)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model
