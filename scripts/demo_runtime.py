"""Step 5 of `make demo`: serve the exported model through `runtime.load` and check it against PyTorch.

Reads the run folder written by `python -m train` (best.pt, config.json) and `python -m export.to_onnx`
(onnx/fp32, onnx/fp16) and `python -m export.quantize` (onnx/int8), then:
  1. builds the held-out clips the run was evaluated on,
  2. runs eager PyTorch and every exported graph through the runtime and reports top-1 agreement and accuracy
     (scored by runtime.evaluation, the core of `python -m train.evaluate`),
  3. streams one held-out clip frame by frame (CNN once per frame, BiLSTM over the window) and checks the last
     window's output against the full model on the same frames.
Exits non-zero if an exported model disagrees with PyTorch on more than 1 % of clips.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from runtime.backends import load
from runtime.backends.openvino import openvino_unavailable_reason
from runtime.checkpoint import load_checkpoint
from runtime.evaluation import accuracy, agreement, collect_logits
from runtime.streaming import StreamingClassifier
from train.clips import pad_collate
from train.data import DataSpec, build_dataset
from train.eval_data import describe

BATCH = 32


def held_out_batches(run_dir: Path, ckpt, max_clips: int) -> list:
    """The run's first ``max_clips`` held-out clips as numpy batches (frames, lengths, labels) of up to BATCH."""
    cfg = json.loads((run_dir / "config.json").read_text())["args"]
    spec = DataSpec(name=cfg["data"], data_dir=cfg.get("data_dir"), frames=cfg["frames"],
                    frame_size=tuple(ckpt.config.frame_size), seed=cfg["seed"], num_clips=cfg.get("val_clips"),
                    num_classes=cfg.get("synthetic_classes", ckpt.config.num_classes), mean=ckpt.mean, std=ckpt.std)
    ds = build_dataset(spec, "test")
    n = min(max_clips, len(ds))
    return [tuple(t.numpy() for t in pad_collate([ds[i] for i in range(s, min(s + BATCH, n))]))
            for s in range(0, n, BATCH)]


class EagerModel:
    """The checkpoint's network in plain PyTorch, run as the evaluation core runs a runner (the reference)."""

    def __init__(self, model) -> None:
        self.model = model

    def infer(self, x, lengths) -> dict:
        with torch.inference_mode():
            frame_logits, clip_logits = self.model(torch.from_numpy(x), torch.from_numpy(lengths).long())
        return {"frame_logits": frame_logits.numpy(), "clip_logits": clip_logits.numpy()}


def openvino_candidates(onnx: Path) -> tuple[list, str | None]:
    """The OpenVINO rows of the runtime table, or none and the one line that says why they were skipped.

    Only when OpenVINO really runs here (the plugin lists a CPU device and runs a one-node graph): installed is not
    enough, since the plugin installs on AMD CPUs too but offers no device there.
    """
    reason = openvino_unavailable_reason()
    if reason:
        return [], f"skipped the OpenVINO rows: {reason}"
    openvino = {"providers": ["OpenVINOExecutionProvider"]}
    return [("onnx/fp32 on OpenVINO, bf16", onnx / "fp32" / "model.onnx", {**openvino, "openvino_precision": "bf16"},
             0.99),
            ("onnx/int8 on OpenVINO", onnx / "int8" / "model.onnx", openvino, 0.98)], None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="run folder of `python -m train` that `export.to_onnx` exported into")
    p.add_argument("--clips", type=int, default=256, help="held-out clips to compare (default %(default)s)")
    p.add_argument("--window", type=int, default=6,
                   help="streaming window; shorter than the clip, so the ring buffer wraps (default %(default)s)")
    args = p.parse_args(argv)

    ckpt = load_checkpoint(args.run_dir / "best.pt")
    batches = held_out_batches(args.run_dir, ckpt, args.clips)
    (reference,) = collect_logits([EagerModel(ckpt.model)], batches)
    print(f"held-out clips: {reference.clips} of shape {tuple(batches[0][0].shape[1:])}; eager PyTorch clip accuracy "
          f"{accuracy(reference)['clip_acc']:.3f}")
    print(f"{'artifact':<34} {'backend':<26} {'top-1 agree':>11} {'clip acc':>9} {'max |dlogit|':>13}")
    # (name, file, runtime.load options, least top-1 agreement): int8 is held to its own export gate's default
    # (export.quantize --min-agreement 0.98), everything else to 99 %.
    onnx = args.run_dir / "onnx"
    candidates = [("checkpoint (runtime torch)", args.run_dir / "best.pt", {}, 0.99)]
    candidates += [(f"onnx/{prec}/model.onnx", onnx / prec / "model.onnx", {}, 0.98 if prec == "int8" else 0.99)
                   for prec in ("fp32", "fp16", "int8")]
    openvino, skipped = openvino_candidates(onnx)
    candidates += openvino
    ok = True
    for name, path, options, least in candidates:
        if not path.exists():
            print(f"{name:<34} missing, skipped")
            continue
        with load(path, **options) as runner:
            (out,) = collect_logits([runner], batches)
            backend = describe(runner)
        agree = agreement(out, reference)
        ok &= agree["clip_agreement"] >= least
        print(f"{name:<34} {backend:<26} {agree['clip_agreement']:>11.4f} {accuracy(out)['clip_acc']:>9.3f} "
              f"{agree['max_abs_dlogit']:>13.2e}")

    if skipped:
        print(skipped)

    # Streaming: push the frames of one held-out clip one at a time.
    x, lengths, labels = batches[0]
    clip = x[0, : int(lengths[0])]
    window = min(args.window, len(clip))
    onnx_dir = args.run_dir / "onnx" / "fp32"
    source = onnx_dir if (onnx_dir / "cnn.onnx").exists() else args.run_dir / "best.pt"
    with StreamingClassifier(source, window=window) as stream:
        for frame in clip:
            result = stream.push(frame)
    with torch.inference_mode():
        full_frame, full_clip = ckpt.model(torch.from_numpy(clip[-window:][None]))
    stream_err = float(np.abs(np.asarray(result.clip_logits) - full_clip[0].numpy()).max())
    print(f"streaming ({source.name}, window {window}): {len(clip)} frames pushed; last window -> "
          f"{result.clip_label!r} (label {ckpt.class_names[int(labels[0])]!r}); max |clip logit - full model| "
          f"{stream_err:.2e}")
    ok = ok and stream_err < 1e-3
    print("runtime check:", "OK" if ok else "FAILED (agreement < 99 % (int8: < 98 %) or streaming differs from the "
          "full model)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
