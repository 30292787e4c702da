"""Accuracy of everything the project deploys on CIFAR-10's held-out clips, as one markdown table.

    CNN_BILSTM_CIFAR10=path/to/cifar10 TRITON_SERVER_PYTHON=.venv-triton/bin/python \\
        python scripts/eval_table.py --run runs/cifar-cpu --out runs/cifar-cpu/eval

Steps, each a command a user would type (printed, and listed under the table):
  1. train the ``cifar10-cpu`` preset into ``--run`` (skipped when ``--run`` already holds ``best.pt``);
  2. export it to ONNX fp32 and quantize that to int8 (calibrated on the training split; int8 export's own gate);
  3. write a python-kind Triton repository of the fp32 export and serve it with the bundled tritonserver
     (``benchmarks/triton_server.py``, in ``--server-python``'s environment; skipped, with the reason, where that
     server cannot run);
  4. ``python -m train.evaluate`` each of them on the run's held-out clips (its seed, clip count and length),
     with ``--reference best.pt``;
  5. write ``--out/eval_table.md``: clip and frame accuracy and agreement with the checkpoint, per model, with the
     date, CPU, versions and commands. Each evaluation's JSON and confusion matrix lie beside it.

The CIFAR-10 folder (an ImageFolder tree with train/ and test/) comes from ``--cifar-dir`` or ``CNN_BILSTM_CIFAR10``; the
commands under the table name it ``$CNN_BILSTM_CIFAR10``; the served model's URL is the one this script's server had.
``--train-args`` and ``--quantize-args`` add options to those commands (a quick check at tiny scale, whose barely
trained model fails the int8 gate: ``--train-args "--train-clips 64 --val-clips 32 --epochs 1" --quantize-args
"--min-agreement 0 --verify-clips 32"``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks/ is not installed: import it from the checkout

from benchmarks.triton_server import LocalTritonServer, server_unavailable_reason  # noqa: E402
from runtime._io import atomic_write_text  # noqa: E402

CIFAR_ENV = "CNN_BILSTM_CIFAR10"


class Steps:
    """Runs the commands, printing each, and keeps them (the data folder shown as ``$CNN_BILSTM_CIFAR10``)."""

    def __init__(self, cifar: str) -> None:
        self.cifar, self.shown = cifar, []

    def run(self, *args: str, check: bool = True) -> int:
        cmd = [sys.executable, *map(str, args)]
        shown = " ".join(shlex.quote(a) if a != self.cifar else f"${CIFAR_ENV}" for a in ["python", *cmd[1:]])
        print(f"$ {shown}", flush=True)
        self.shown.append(shown)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        rc = subprocess.run(cmd, env=env).returncode
        if check and rc != 0:
            raise SystemExit(f"error: the step above exited {rc}")
        return rc


def held_out(run: Path) -> dict:
    """The run's data options (``config.json``): its held-out clips are what every model is evaluated on."""
    args = json.loads((run / "config.json").read_text())["args"]
    return {"frames": args["frames"], "seed": args["seed"], "val_clips": args.get("val_clips")}


def build(steps: Steps, args, out: Path) -> dict:
    """Train (unless done), export, quantize; the models to evaluate (name -> path), with notes for those skipped."""
    run = args.run
    if not (run / "best.pt").is_file():
        steps.run("-m", "train", "--preset", "cifar10-cpu", "--data-dir", steps.cifar, "--out", run, "--no-progress",
                  *shlex.split(args.train_args))
    out.mkdir(parents=True, exist_ok=True)  # after training: python -m train wants an empty or new run folder
    data = held_out(run)
    steps.run("-m", "export.to_onnx", run / "best.pt", "--out", run / "onnx" / "fp32", "--precision", "fp32")
    models = {"checkpoint": run / "best.pt", "ONNX fp32": run / "onnx" / "fp32"}
    rc = steps.run("-m", "export.quantize", run / "onnx" / "fp32", "--out", run / "onnx" / "int8", "--data", "cifar10",
                   "--data-dir", steps.cifar, "--frames", data["frames"], "--seed", data["seed"], "--force",
                   *shlex.split(args.quantize_args), check=False)
    models["ONNX int8"] = run / "onnx" / "int8" if rc == 0 else \
        f"not written: export.quantize exited {rc} (its agreement gate refused it: see its error line)"
    steps.run("-m", "export.to_triton", run / "onnx" / "fp32", "--out", out / "triton", "--kind", "python",
              "--no-stream", "--force")
    return models


def evaluate(steps: Steps, args, out: Path, name: str, model) -> dict:
    data = held_out(args.run)
    stem = name.lower().replace(" ", "-").replace("/", "-")
    options = ["--val-clips", data["val_clips"]] if data["val_clips"] else []
    steps.run("-m", "train.evaluate", model, "--data", "cifar10", "--data-dir", steps.cifar, "--split", "test",
              "--frames", data["frames"], "--seed", data["seed"], *options, "--batch-size", args.batch_size,
              "--reference", args.run / "best.pt", "--no-shuffled", "--json", out / f"{stem}.json",
              "--confusion", out / f"confusion-{stem}.png", "--force")
    return json.loads((out / f"{stem}.json").read_text())


def table(results: dict, notes: dict, steps: Steps, data: dict) -> str:
    lines = [f"CIFAR-10 held-out clips ({data['val_clips'] or 'all'} clips of {data['frames']} images, test split, "
             f"seed {data['seed']}), {datetime.date.today().isoformat()}, {_cpu()}, Python {platform.python_version()}"
             f", {_versions()}.", "",
             "| model | backend | clip acc | frame acc | clip agreement | frame agreement | max abs dlogit | "
             "clips that differ |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        a = r["agreement"]
        lines.append(f"| {name} | {r['backend']} ({r['precision']}) | {r['clip_acc']:.4f} | {r['frame_acc']:.4f} | "
                     f"{a['clip_agreement']:.4f} | {a['frame_agreement']:.4f} | {a['max_abs_dlogit']:.2e} | "
                     f"{len(a['differing_clips'])} of {a['clips']} |")
    lines += [f"| {name} | {note} | | | | | | |" for name, note in notes.items()]
    return "\n".join(lines + ["", "Commands:", "", "```bash", *steps.shown, "```", ""])


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for pkg in ("torch", "onnxruntime", "tritonclient"):
        try:
            found.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass
    return ", ".join(found)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cifar-dir", default=os.environ.get(CIFAR_ENV),
                   help=f"CIFAR-10 ImageFolder tree with train/ and test/ (default: ${CIFAR_ENV})")
    p.add_argument("--run", type=Path, default=Path("runs/cifar-cpu"), help="run folder (trained here when it holds "
                   "no best.pt)")
    p.add_argument("--out", type=Path, default=None, help="folder for the table, JSONs and PNGs (default RUN/eval)")
    p.add_argument("--server-python", default=None,
                   help="the Triton server environment's python (default: $TRITON_SERVER_PYTHON, else this one)")
    p.add_argument("--batch-size", type=int, default=32, help="clips per batch of every evaluation")
    p.add_argument("--train-args", default="", help="extra options for the training command (quoted)")
    p.add_argument("--quantize-args", default="", help="extra options for export.quantize (quoted)")
    args = p.parse_args(argv)
    if not args.cifar_dir or not (Path(args.cifar_dir) / "test").is_dir():
        p.error(f"--cifar-dir (or ${CIFAR_ENV}) must name a CIFAR-10 ImageFolder tree with train/ and test/, got "
                f"{args.cifar_dir!r}")
    out = args.out or args.run / "eval"
    steps = Steps(args.cifar_dir)
    models = build(steps, args, out)
    notes = {k: v for k, v in models.items() if isinstance(v, str)}
    results = {name: evaluate(steps, args, out, name, m) for name, m in models.items() if name not in notes}
    reason = server_unavailable_reason(args.server_python)  # None: benchmarks.triton_server's default_python()
    if reason:
        notes["Triton python kind"] = f"skipped: {reason}"
    else:
        with LocalTritonServer(out / "triton", python=args.server_python, startup_timeout=180) as server:
            results["Triton python kind (fp32)"] = evaluate(steps, args, out, "triton-python",
                                                            f"{server.grpc_url}/cnn_bilstm")
    text = table(results, notes, steps, held_out(args.run))
    atomic_write_text(out / "eval_table.md", text)
    print(text)
    print(f"wrote {out / 'eval_table.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
