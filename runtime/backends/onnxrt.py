"""ONNX Runtime backend: one InferenceSession per runner, tuned for latency.

Providers: TensorRT EP > CUDA EP > CPU EP, by availability (``providers`` overrides; the one in use is
``runner.provider``). On the CUDA or TensorRT EP, inputs and outputs go through IO binding: a torch CUDA tensor is
bound in place (no copy) and the outputs are written into torch CUDA tensors; numpy inputs are bound from host memory.

Threading: ``InferenceSession.run`` is thread-safe, so CPU calls run concurrently; IO binding is per call.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..base import BaseRunner, Feed, check_device
from ..errors import RuntimeInputError
from ..spec import METADATA_KEY, InputSpec, ModelMetadata, check_export_file

logger = logging.getLogger(__name__)

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise RuntimeInputError("the ONNX Runtime backend needs onnxruntime: `pip install onnxruntime` (CPU) or "
                                "`pip install onnxruntime-gpu` (CUDA; never both)") from e
    return ort


def choose_providers(available: Sequence[str], device: Optional[str], requested: Optional[Sequence] = None) -> list:
    """The provider list to create a session with.

    Args:
        available (Sequence[str]): ``onnxruntime.get_available_providers()``.
        device (str | None): "cpu" keeps only the CPU EP; "cuda"/"cuda:N" needs a GPU EP; None takes the best.
        requested (Sequence | None): explicit providers (names or (name, options) tuples); checked against
            ``available``. Defaults to None.

    Returns:
        list: providers in priority order, always ending with the CPU EP.

    Raises:
        RuntimeInputError: a requested provider is not available, or a CUDA device without a GPU EP.
    """
    dev = str(device) if device is not None else None
    if requested is not None:
        names = [p[0] if isinstance(p, (tuple, list)) else p for p in requested]
        missing = [n for n in names if n not in available]
        if missing:
            raise RuntimeInputError(f"providers {missing} are not available in this onnxruntime; available: "
                                    f"{list(available)}")
        gpu = [n for n in names if n != "CPUExecutionProvider"]
        if (dev == "cpu" and gpu) or (dev is not None and dev.startswith("cuda") and not gpu):
            raise RuntimeInputError(f"device {dev!r} contradicts providers {names}; give one of them (device='cpu' "
                                    "means CPUExecutionProvider only, device='cuda' needs a GPU provider)")
        return list(requested)
    if dev == "cpu":
        return ["CPUExecutionProvider"]
    chosen = [p for p in PREFERRED if p in available]
    if dev is not None and dev.startswith("cuda"):
        if not any(p != "CPUExecutionProvider" for p in chosen):
            raise RuntimeInputError(f"device {dev!r} asked for, but this onnxruntime has no GPU provider (available: "
                                    f"{list(available)}); install onnxruntime-gpu or use device='cpu'")
        device_id = int(dev.split(":")[1]) if ":" in dev else 0
        chosen = [(p, {"device_id": device_id}) if p != "CPUExecutionProvider" else p for p in chosen]
    return chosen or ["CPUExecutionProvider"]


class OnnxRuntimeRunner(BaseRunner):
    """Runs ``model.onnx``, ``cnn.onnx`` or ``bilstm.onnx`` (the graph kind comes from the file's metadata).

    Args:
        path (str | PathLike): an ONNX file written by ``python -m export.to_onnx``.
        device (str | None): "cpu", "cuda", "cuda:N" or None (best available provider). Defaults to None.
        providers (Sequence | None): explicit ONNX Runtime providers; None picks TensorRT EP > CUDA EP > CPU.
            Defaults to None.
        intra_op_threads (int | None): threads per operator; None lets ONNX Runtime decide (all cores).
            Defaults to None.
        check_finite (bool): reject NaN/Inf inputs in every call. Defaults to False.
        allow_spinning (bool): let idle intra-op threads busy-wait for the next operator (lowest latency for one
            session). Turn it off when several sessions alternate on the same cores, as the streaming classifier's
            cnn and bilstm sessions do: their spinning threads steal each other's cores (measured on 2 cores: a
            streaming step took 32-37 ms with spinning, 17 ms without). Defaults to True.

    Raises:
        RuntimeInputError: not an ONNX file, damaged (including a sha256 that differs from the one the folder's
            ``export_report.json`` records), not written by this package's exporter, or I/O names that do not match
            docs/ARCHITECTURE.md.
    """

    backend_name = "onnxruntime"

    def __init__(self, path, device=None, *, providers: Optional[Sequence] = None,
                 intra_op_threads: Optional[int] = None, check_finite: bool = False,
                 allow_spinning: bool = True) -> None:
        check_device(device)
        ort = _ort()
        self.path = Path(path)
        self.device = device
        if intra_op_threads is not None and int(intra_op_threads) < 1:
            raise RuntimeInputError(f"intra_op_threads must be >= 1 (or None), got {intra_op_threads}")
        self._providers = choose_providers(ort.get_available_providers(), device, providers)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one clip is a chain: parallel branches add latency
        opts.inter_op_num_threads = 1
        if intra_op_threads is not None:
            opts.intra_op_num_threads = int(intra_op_threads)
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        self._options = opts
        check_export_file(self.path)  # damage inside a graph parses and runs: only the export's digest tells
        try:
            self.session = ort.InferenceSession(os.fspath(self.path), sess_options=opts, providers=self._providers)
        except Exception as e:  # InvalidProtobuf, Fail, ...: all mean "not a usable ONNX file" to the caller
            raise RuntimeInputError(f"{self.path} is not a loadable ONNX model (damaged, truncated or another "
                                    f"format): {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                                    ) from e
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise RuntimeInputError(f"{self.path} is an ONNX model but lacks the {METADATA_KEY!r} metadata; export it "
                                    "with `python -m export.to_onnx CHECKPOINT --out DIR`")
        metadata = ModelMetadata.from_json(meta[METADATA_KEY], str(self.path))
        spec = InputSpec.for_graph(metadata.graph, metadata)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        want_in = [spec.input_name] + (["lengths"] if spec.takes_lengths else [])
        if sorted(inputs) != sorted(want_in) or sorted(outputs) != sorted(spec.output_names):
            raise RuntimeInputError(f"{self.path}: a {metadata.graph} graph must have inputs {want_in} and outputs "
                                    f"{list(spec.output_names)}, got {inputs} and {outputs}")
        super().__init__(metadata, spec, check_finite=check_finite)
        self.provider = self.session.get_providers()[0]
        self._on_gpu = self.provider != "CPUExecutionProvider"
        self._serialize = False
        logger.debug("%s: providers %s", self.name, self.session.get_providers())

    def activate_impl(self) -> None:
        pass  # the session is created in __init__ so that file errors surface from load()

    def deactivate_impl(self) -> None:
        pass

    def _feeds(self, feed: Feed) -> dict:
        feeds = {self.input_spec.input_name: feed.x}
        if self.input_spec.takes_lengths:
            feeds["lengths"] = feed.lengths_or_full()
        return feeds

    def infer_impl(self, feed: Feed) -> dict:
        if not self._on_gpu:
            x = feed.x.detach().cpu().numpy() if feed.is_torch else feed.x
            feeds = self._feeds(Feed(x, feed.lengths, feed.batch, feed.time, feed.profile, False))
            names = list(self.input_spec.output_names)
            return dict(zip(names, self.session.run(names, feeds), strict=True))
        return self._infer_bound(feed)

    def _infer_bound(self, feed: Feed) -> dict:
        """IO binding on a GPU provider: CUDA tensors in place, outputs into torch CUDA tensors when torch is in."""
        binding = self.session.io_binding()
        name = self.input_spec.input_name
        x = feed.x
        on_cuda = feed.is_torch and x.is_cuda
        if on_cuda:
            binding.bind_input(name, "cuda", x.device.index or 0, np.float32, tuple(x.shape), x.data_ptr())
        else:
            binding.bind_cpu_input(name, x.detach().cpu().numpy() if feed.is_torch else x)
        if self.input_spec.takes_lengths:
            binding.bind_cpu_input("lengths", feed.lengths_or_full())
        shapes = self._output_shapes(feed)
        outputs = {}
        if on_cuda:
            import torch

            for out_name, shape in shapes.items():
                t = torch.empty(shape, dtype=torch.float32, device=x.device)
                binding.bind_output(out_name, "cuda", x.device.index or 0, np.float32, shape, t.data_ptr())
                outputs[out_name] = t
            torch.cuda.current_stream(x.device).synchronize()  # x must be written before ORT's stream reads it
            self.session.run_with_iobinding(binding)
            return outputs
        for out_name in shapes:
            binding.bind_output(out_name, "cpu")
        self.session.run_with_iobinding(binding)
        return dict(zip(shapes, binding.copy_outputs_to_cpu(), strict=True))

    def _output_shapes(self, feed: Feed) -> dict:
        b, t = feed.batch, feed.time
        if self.stage == "cnn":
            return {"features": (b, t, self.metadata.feature_dim)}
        c = self.metadata.num_classes
        return {"frame_logits": (b, t, c), "clip_logits": (b, c)}
