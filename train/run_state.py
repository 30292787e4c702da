"""The run folder of :func:`train.engine.fit`: its checks, the resume state read back from ``last.pt``, RNG state
as plain tensors, lists and numbers (loadable with ``weights_only=True``), a forced restart, and what an interruption
leaves behind."""

from __future__ import annotations

import argparse
import json
import logging
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from runtime._io import atomic_write_json, check_output_dir, remove_stale_temporaries
from runtime.checkpoint import CheckpointError, read_checkpoint_dict

from ._checks import TrainError

logger = logging.getLogger(__name__)

RUN_FILES = ("last.pt", "best.pt", "metrics.json", "config.json")


def check_out_dir(out: Path, resume: bool, force: bool) -> None:
    """Refuse an unusable run folder (a file, not writable), and a non-empty one unless resuming it or forced. The
    temporaries that killed runs left there are removed first, so they never count as an earlier run.

    Raises:
        OutputPathError: ``out`` is a file, or cannot be written.
        TrainError: the folder holds files and neither ``resume`` nor ``force`` is set.
    """
    check_output_dir(out, what="--resume" if resume else "--out")
    remove_stale_temporaries(out, RUN_FILES)
    if resume or force or not out.exists():
        return
    if any(out.iterdir()):
        raise TrainError(
            f"--out {out} is not empty (an earlier run?); continue it with --resume {out}, "
            f"overwrite it with --force, or pick another --out"
        )


def capture_rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python RNG states, as tensors, lists and numbers only."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": list(py_state), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`; the message says what the run folder holds and how to go on from there."""


@dataclass
class RunProgress:
    """What this call of :func:`fit` has on disk so far: the epoch ``last.pt`` holds, and whether best.pt exists."""

    out: Path
    last_epoch: Optional[int] = None
    best: bool = False

    def interrupted(self) -> str:
        if self.last_epoch is not None:
            return f"last.pt in {self.out} holds epoch {self.last_epoch + 1}; continue with --resume {self.out}"
        if self.best:
            return (f"stopped while saving the first epoch: best.pt in {self.out} holds its weights, but last.pt "
                    f"(the training state) was not written, so there is nothing to resume; start again with --force")
        return ("stopped before the first epoch finished; no checkpoint was written, so there is nothing to resume; "
                f"start again (with --force if {self.out} is not empty)")

    def where(self) -> str:
        return ("no epoch was saved" if self.last_epoch is None
                else f"last.pt in {self.out} holds epoch {self.last_epoch + 1}")


def _read_config(out: Path) -> dict:
    try:
        return json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TrainError(f"--resume {out}: cannot read the run's config.json ({e})") from e


def read_resume_state(out: Path, epochs: int) -> dict:
    """The checked ``last.pt`` of a run to resume: it has a training state, belongs to the run's config.json (the same
    run id) and has not gone past ``epochs``.

    Raises:
        TrainError: no last.pt, last.pt of another run, or more epochs done than ``epochs``.
        CheckpointError: a damaged last.pt, or one without a training state.
    """
    last = out / "last.pt"
    if not last.exists():
        if (out / "best.pt").exists():
            raise TrainError(f"--resume {out}: no last.pt there, only best.pt: the run was stopped while saving its "
                             "first epoch, so there is no training state to resume (best.pt holds that epoch's "
                             "weights only); start it again with --force")
        raise TrainError(f"--resume {out}: no last.pt there (the run never finished an epoch); start it again "
                         f"with --force")
    ckpt = read_checkpoint_dict(last)
    ts = ckpt.get("train_state")
    if not isinstance(ts, dict):
        raise CheckpointError(f"{last} has no train_state (an inference-only checkpoint); cannot resume from it")
    config_id = _read_config(out).get("run_id")
    if config_id != ts.get("run_id"):
        raise TrainError(f"--resume {out}: config.json (run {config_id}) and last.pt (run {ts.get('run_id')}) "
                         "belong to different runs (an interrupted --force restart, or files copied between "
                         "runs); start it again with --force")
    done = int(ts["epoch"]) + 1
    if epochs < done:
        raise TrainError(f"--resume {out}: the run has already finished {done} epochs, so --epochs {epochs} would "
                         f"end before where it stands; give --epochs {done + 1} or more to extend it")
    return ckpt


def _clear_old_run(out: Path) -> None:
    # config.json first: a kill part-way then leaves a folder that --resume refuses (no config), never old
    # checkpoints under a new config.
    removed = []
    for name in ("config.json", "last.pt", "best.pt", "metrics.json"):
        if (out / name).is_file():
            (out / name).unlink()
            removed.append(name)
    if removed:
        logger.info("--force: removed the old run's %s from %s", ", ".join(removed), out)


def start_run_folder(out: Path, args: argparse.Namespace, resume_state: Optional[dict], config_json: dict) -> str:
    """Write config.json (after clearing an old run unless resuming); returns the run id shared with last.pt."""
    if resume_state is None:
        if out.exists():
            _clear_old_run(out)
        run_id = uuid.uuid4().hex
    else:
        run_id = resume_state["train_state"].get("run_id")  # None only for runs of versions before run ids
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", {"run_id": run_id, "args": _jsonable(vars(args)), **config_json})
    return run_id


def _jsonable(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if _is_json(v)}


def _is_json(v) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False
