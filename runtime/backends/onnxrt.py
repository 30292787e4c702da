"""ONNX Runtime backend: one InferenceSession per runner, tuned for latency.

Providers: TensorRT EP > CUDA EP > CPU EP, by availability (``providers`` overrides; the one in use is
``runner.provider``). On the CUDA or TensorRT EP, inputs and outputs go through IO binding: a torch CUDA tensor is
bound in place (no copy) and the outputs are written into torch CUDA tensors; numpy inputs are bound from host memory.

OpenVINO (Intel CPUs, opt-in): ``providers=["OpenVINOExecutionProvider"]`` with the ``onnxruntime-ep-openvino`` plugin
(the ``openvino`` extra). ONNX Runtime >= 1.23 loads it as a plugin EP, which a plain ``providers=[...]`` list silently
ignores (the session falls back to the CPU EP), so the runner registers the plugin and adds its CPU device itself, and
fails if the session does not end up on it. ``openvino_precision`` ("f32" by default; "bf16" uses AMX/AVX-512 bf16,
about 3x faster than fp32 on the dev machine's Xeon) becomes OpenVINO's ``INFERENCE_PRECISION_HINT``: OpenVINO's own
default on such CPUs is bf16, which would lower the precision without being asked. The BiLSTM never runs on OpenVINO:
OpenVINO 2026.4's LSTM ignores ``sequence_lens`` in the reverse direction (a clip padded from 5 to 8 frames erred by
0.03 in its logits, at f32), so a ``model.onnx`` runs as its export folder's ``cnn.onnx`` on OpenVINO followed by
``bilstm.onnx`` on the CPU EP, and a ``bilstm.onnx`` runs on the CPU EP (``runner.stage_providers`` says which ran
what). The CNN is where the time goes (the BiLSTM took 2.8 ms of ~190 ms on the reference model at B=1, T=16).

Threading: ``InferenceSession.run`` is thread-safe, so CPU calls run concurrently; IO binding is per call.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..base import BaseRunner, Feed, check_device
from ..errors import RuntimeInputError
from ..spec import METADATA_KEY, InputSpec, ModelMetadata, check_export_file

logger = logging.getLogger(__name__)

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
OPENVINO = "OpenVINOExecutionProvider"
OPENVINO_PRECISIONS = ("f32", "bf16", "f16")
_PLUGIN_LOCK = threading.Lock()  # one registration of the OpenVINO plugin per process, even from several threads


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
        if OPENVINO in names and any(n not in (OPENVINO, "CPUExecutionProvider") for n in names):
            raise RuntimeInputError(f"{OPENVINO} runs on the CPU and combines only with CPUExecutionProvider, got "
                                    f"{names}")
        missing = [n for n in names if n not in available and n != OPENVINO]  # a plugin: registered when used
        if missing:
            plugin = "" if OPENVINO in available else f" (and {OPENVINO} through the onnxruntime-ep-openvino plugin)"
            raise RuntimeInputError(f"providers {missing} are not available in this onnxruntime; available: "
                                    f"{list(available)}{plugin}")
        gpu = [n for n in names if n in GPU_PROVIDERS]
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


def _session_options(ort, intra_op_threads: Optional[int], allow_spinning: bool):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one clip is a chain: parallel branches add latency
    opts.inter_op_num_threads = 1
    if intra_op_threads is not None:
        opts.intra_op_num_threads = int(intra_op_threads)
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    return opts


def _openvino_cpu_devices(ort) -> list:
    return [d for d in ort.get_ep_devices() if d.ep_name == OPENVINO and d.ep_metadata.get("ov_device") == "CPU"]


def add_openvino(ort, opts, precision: str, threads: Optional[int], ep_options: Optional[dict] = None) -> None:
    """Register the OpenVINO plugin EP (once per process) and put its CPU device first in ``opts``.

    Args:
        ort (module): onnxruntime.
        opts (SessionOptions): options of the session to create.
        precision (str): OpenVINO's INFERENCE_PRECISION_HINT, one of ``OPENVINO_PRECISIONS``.
        threads (int | None): INFERENCE_NUM_THREADS; None lets OpenVINO decide.
        ep_options (dict | None): further OpenVINO EP options (e.g. ``cache_dir``); not ``load_config``, which is
            built from ``precision`` and ``threads``. Defaults to None.

    Raises:
        RuntimeInputError: an unknown precision, ``load_config`` in ``ep_options``, the plugin package missing, an
            onnxruntime without plugin EPs (< 1.23), or no OpenVINO CPU device.
    """
    if precision not in OPENVINO_PRECISIONS:
        raise RuntimeInputError(f"openvino_precision must be one of {OPENVINO_PRECISIONS}, got {precision!r}")
    ep_options = {str(k): str(v) for k, v in (ep_options or {}).items()}
    if "load_config" in ep_options:
        raise RuntimeInputError("the runner builds OpenVINO's load_config itself: set the precision with "
                                "openvino_precision= and the threads with intra_op_threads= instead")
    try:
        import onnxruntime_ep_openvino as plugin
    except ImportError as e:
        raise RuntimeInputError(f"{OPENVINO} needs its plugin package: `pip install onnxruntime-ep-openvino` (the "
                                "`openvino` extra), beside onnxruntime >= 1.23") from e
    if not hasattr(ort, "register_execution_provider_library"):
        raise RuntimeInputError(f"onnxruntime {ort.__version__} cannot load plugin execution providers; {OPENVINO} "
                                "needs onnxruntime >= 1.23")
    with _PLUGIN_LOCK:
        devices = _openvino_cpu_devices(ort)
        if not devices:  # not registered yet (by us or by the application)
            ort.register_execution_provider_library("openvino", plugin.get_library_path())
            devices = _openvino_cpu_devices(ort)
    if not devices:
        raise RuntimeInputError(f"the OpenVINO plugin offers no CPU device here (devices: "
                                f"{[(d.ep_name, dict(d.ep_metadata).get('ov_device')) for d in ort.get_ep_devices()]})")
    cpu_config = {"INFERENCE_PRECISION_HINT": precision}
    if threads is not None:
        cpu_config["INFERENCE_NUM_THREADS"] = str(int(threads))
    opts.add_provider_for_devices(devices[:1], {**ep_options, "load_config": json.dumps({"CPU": cpu_config})})


class _Graph:
    """One checked ONNX session of an export: its metadata, and I/O names matching docs/ARCHITECTURE.md."""

    def __init__(self, ort, path: Path, opts, providers: Optional[list]) -> None:
        check_export_file(path)  # damage inside a graph parses and runs: only the export's digest tells
        try:
            if providers is None:  # the providers were added to opts as plugin devices
                self.session = ort.InferenceSession(os.fspath(path), sess_options=opts)
            else:
                self.session = ort.InferenceSession(os.fspath(path), sess_options=opts, providers=providers)
        except Exception as e:  # InvalidProtobuf, Fail, ...: all mean "not a usable ONNX file" to the caller
            raise RuntimeInputError(f"{path} is not a loadable ONNX model (damaged, truncated or another "
                                    f"format): {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                                    ) from e
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise RuntimeInputError(f"{path} is an ONNX model but lacks the {METADATA_KEY!r} metadata; export it "
                                    "with `python -m export.to_onnx CHECKPOINT --out DIR`")
        self.metadata = ModelMetadata.from_json(meta[METADATA_KEY], str(path))
        self.spec = InputSpec.for_graph(self.metadata.graph, self.metadata)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        want_in = [self.spec.input_name] + (["lengths"] if self.spec.takes_lengths else [])
        if sorted(inputs) != sorted(want_in) or sorted(outputs) != sorted(self.spec.output_names):
            raise RuntimeInputError(f"{path}: a {self.metadata.graph} graph must have inputs {want_in} and outputs "
                                    f"{list(self.spec.output_names)}, got {inputs} and {outputs}")
        self.provider = self.session.get_providers()[0]


class OnnxRuntimeRunner(BaseRunner):
    """Runs ``model.onnx``, ``cnn.onnx`` or ``bilstm.onnx`` (the graph kind comes from the file's metadata).

    Args:
        path (str | PathLike): an ONNX file written by ``python -m export.to_onnx``.
        device (str | None): "cpu", "cuda", "cuda:N" or None (best available provider). Defaults to None.
        providers (Sequence | None): explicit ONNX Runtime providers (names or (name, options) pairs); None picks
            TensorRT EP > CUDA EP > CPU. ``"OpenVINOExecutionProvider"`` is opt-in (see the module docstring).
            Defaults to None.
        intra_op_threads (int | None): threads per operator; None lets ONNX Runtime decide (all cores).
            Defaults to None.
        check_finite (bool): reject NaN/Inf inputs in every call. Defaults to False.
        allow_spinning (bool): let idle intra-op threads busy-wait for the next operator (lowest latency for one
            session). Turn it off when several sessions alternate on the same cores, as the streaming classifier's
            cnn and bilstm sessions do: their spinning threads steal each other's cores (measured on 2 cores: a
            streaming step took 32-37 ms with spinning, 17 ms without). Defaults to True.
        openvino_precision (str): OpenVINO's inference precision, one of "f32", "bf16", "f16"; only with the
            OpenVINO provider. Defaults to "f32".

    Raises:
        RuntimeInputError: not an ONNX file, damaged (including a sha256 that differs from the one the folder's
            ``export_report.json`` records), not written by this package's exporter, I/O names that do not match
            docs/ARCHITECTURE.md; with OpenVINO, a ``model.onnx`` without its export folder's cnn/bilstm graphs.
    """

    backend_name = "onnxruntime"

    def __init__(self, path, device=None, *, providers: Optional[Sequence] = None,
                 intra_op_threads: Optional[int] = None, check_finite: bool = False,
                 allow_spinning: bool = True, openvino_precision: Optional[str] = None) -> None:
        check_device(device)
        ort = _ort()
        self.path = Path(path)
        self.device = device
        if intra_op_threads is not None and int(intra_op_threads) < 1:
            raise RuntimeInputError(f"intra_op_threads must be >= 1 (or None), got {intra_op_threads}")
        self._providers = choose_providers(ort.get_available_providers(), device, providers)
        names = [p[0] if isinstance(p, (tuple, list)) else p for p in self._providers]
        openvino = OPENVINO in names
        if openvino_precision is not None and not openvino:
            raise RuntimeInputError(f"openvino_precision applies to {OPENVINO} only; add it to providers= (providers "
                                    f"now: {names})")
        opts = _session_options(ort, intra_op_threads, allow_spinning)
        if openvino:
            ep_options = dict(self._providers[names.index(OPENVINO)][1]) if isinstance(
                self._providers[names.index(OPENVINO)], (tuple, list)) else None
            add_openvino(ort, opts, openvino_precision or "f32", intra_op_threads, ep_options)
        graph = _Graph(ort, self.path, opts, None if openvino else self._providers)
        self._cnn_session = None  # set when a model graph runs as cnn (OpenVINO) + bilstm (CPU EP)
        if openvino:
            if graph.provider != OPENVINO:
                raise RuntimeInputError(f"{self.path}: {OPENVINO} was added, but the session runs on "
                                        f"{graph.session.get_providers()}")
            if graph.metadata.graph != "cnn":
                graph = self._keep_lstm_off_openvino(ort, graph, opts, intra_op_threads)
        self.session = graph.session
        self._options = opts
        super().__init__(graph.metadata, graph.spec, check_finite=check_finite)
        # Which provider runs each part of the graph; provider is the one that runs the CNN when there is one.
        self.stage_providers = {"cnn": graph.provider, "bilstm": graph.provider}
        if self._cnn_session is not None:
            self.stage_providers["cnn"] = OPENVINO
        self.stage_providers = {k: v for k, v in self.stage_providers.items() if self.stage in ("model", k)}
        self.provider = self.stage_providers.get("cnn", graph.provider)
        self._on_gpu = self.provider in GPU_PROVIDERS
        self._serialize = False
        logger.debug("%s: providers %s", self.name, self.stage_providers)

    def _keep_lstm_off_openvino(self, ort, graph: _Graph, openvino_opts, threads: Optional[int]) -> _Graph:
        """The graph that runs the BiLSTM on the CPU EP (OpenVINO's LSTM ignores sequence_lens in reverse).

        A bilstm graph is reopened on the CPU EP. A model graph becomes its export folder's ``cnn.onnx`` on OpenVINO
        (kept in ``self._cnn_session``) plus ``bilstm.onnx`` on the CPU EP (returned); both must come from the same
        checkpoint as the model graph.
        """
        # The CPU EP's threads would spin between calls and slow OpenVINO's threads on the same cores.
        cpu_opts = _session_options(ort, threads, allow_spinning=False)
        if graph.metadata.graph == "bilstm":
            logger.info("%s: the BiLSTM runs on the CPU EP, not %s (its LSTM ignores sequence_lens in reverse)",
                        self.path, OPENVINO)
            return _Graph(ort, self.path, cpu_opts, ["CPUExecutionProvider"])
        folder = self.path.parent
        missing = [f"{g}.onnx" for g in ("cnn", "bilstm") if not (folder / f"{g}.onnx").is_file()]
        if missing:
            raise RuntimeInputError(f"{self.path}: on {OPENVINO} a model graph runs as its export folder's cnn.onnx "
                                    f"(OpenVINO) + bilstm.onnx (CPU EP), because OpenVINO's LSTM ignores "
                                    f"sequence_lens in the reverse direction; {folder} lacks {missing} (python -m "
                                    "export.to_onnx writes all three)")
        cnn = _Graph(ort, folder / "cnn.onnx", openvino_opts, None)
        bilstm = _Graph(ort, folder / "bilstm.onnx", cpu_opts, ["CPUExecutionProvider"])
        if (cnn.metadata.graph, bilstm.metadata.graph) != ("cnn", "bilstm"):
            raise RuntimeInputError(f"{folder}: cnn.onnx and bilstm.onnx hold {cnn.metadata.graph!r} and "
                                    f"{bilstm.metadata.graph!r} graphs")
        for part in (cnn, bilstm):
            graph.metadata.check_same_model(part.metadata, f"{self.path.name} and {part.metadata.graph}.onnx in "
                                                           f"{folder}")
        if cnn.provider != OPENVINO:
            raise RuntimeInputError(f"{folder / 'cnn.onnx'}: {OPENVINO} was added, but the session runs on "
                                    f"{cnn.session.get_providers()}")
        self._cnn_session = cnn.session
        bilstm.metadata = graph.metadata  # the runner serves the model graph
        bilstm.spec = graph.spec
        return bilstm

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
            if self._cnn_session is not None:  # a model graph on OpenVINO: its CNN there, the BiLSTM on the CPU EP
                features = self._cnn_session.run(["features"], {"frames": feeds.pop("frames")})[0]
                feeds["features"] = features
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
