"""ONNX Runtime backend: one InferenceSession per runner, tuned for latency.

Providers: TensorRT EP > CUDA EP > CPU EP, by availability (``providers`` overrides, :mod:`.ort_providers`; the one in
use is ``runner.provider``). On the CUDA or TensorRT EP, inputs and outputs go through IO binding: a torch CUDA tensor
is bound in place (no copy) and the outputs are written into torch CUDA tensors; numpy inputs are bound from host
memory. ``providers=["OpenVINOExecutionProvider"]`` runs on Intel CPUs through :mod:`runtime.backends.openvino`.

Threading: ``InferenceSession.run`` is thread-safe, so CPU calls run concurrently; IO binding is per call.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..base import BaseRunner
from ..errors import RuntimeInputError
from ..inputs import Feed, check_count, check_device, check_flag
from ..spec import METADATA_KEY, InputSpec, ModelMetadata, check_export_file
from .ort_providers import (
    GPU_PROVIDERS,
    OPENVINO,
    choose_providers,
    gpu_device_id,
    import_ort,
    split_provider,
)
from .ort_session import session_options

logger = logging.getLogger(__name__)


class OrtGraph:
    """One checked ONNX session of an export: its metadata, and I/O names matching docs/ARCHITECTURE.md.

    ``providers=None`` means the provider is a plugin device already added to ``opts`` (named by ``plugin``, for the
    message); the file was then opened once on the CPU EP before (so a failure here is the plugin's, not the file's),
    and ``check=False`` skips hashing it a second time.
    """

    def __init__(self, ort, path: Path, opts, providers: Optional[list], check: bool = True,
                 plugin: str = "the plugin execution provider") -> None:
        if check:
            check_export_file(path)  # damage inside a graph parses and runs: only the export's digest tells
        try:
            if providers is None:
                self.session = ort.InferenceSession(os.fspath(path), sess_options=opts)
            else:
                self.session = ort.InferenceSession(os.fspath(path), sess_options=opts, providers=providers)
        except Exception as e:  # InvalidProtobuf, Fail, ...: all mean "not a usable ONNX file" to the caller
            said = " ".join(str(e).split())
            if providers is None:
                raise RuntimeInputError(f"{plugin} could not compile {path}: {type(e).__name__}: {said[:600]}") from e
            raise RuntimeInputError(f"{path} is not a loadable ONNX model (damaged, truncated or another "
                                    f"format): {type(e).__name__}: {said[:300]}") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise RuntimeInputError(f"{path} is an ONNX model but lacks the {METADATA_KEY!r} metadata; export it "
                                    "with `python -m export.to_onnx CHECKPOINT --out DIR`")
        self.metadata = ModelMetadata.from_json(meta[METADATA_KEY], str(path))
        self.spec = InputSpec.for_graph(self.metadata.graph, self.metadata)
        self.spec.check_io_names([i.name for i in self.session.get_inputs()],
                                 [o.name for o in self.session.get_outputs()], str(path))
        self.provider = self.session.get_providers()[0]


class OnnxRuntimeRunner(BaseRunner):
    """Runs ``model.onnx``, ``cnn.onnx`` or ``bilstm.onnx`` (the graph kind comes from the file's metadata).

    ``load_options`` holds the keyword options it was made with (``device`` is ``device``), so that the export's
    other graphs can be opened alike (:func:`runtime.stages.open_stages`).

    Args:
        path (str | PathLike): an ONNX file written by ``python -m export.to_onnx``.
        device (str | None): "cpu", "cuda", "cuda:N" or None (best available provider). Defaults to None.
        providers (Sequence | None): explicit ONNX Runtime providers (names or (name, options) pairs); None picks
            TensorRT EP > CUDA EP > CPU. ``"OpenVINOExecutionProvider"`` is opt-in and runs in an
            :class:`~runtime.backends.openvino.OpenVinoRunner` (which ``runtime.load`` picks for it; this class refuses
            it). Defaults to None.
        intra_op_threads (int | None): threads per operator; None lets ONNX Runtime decide (all cores).
            Defaults to None.
        check_finite (bool): refuse NaN/Inf at the real steps of every call (padding may hold anything;
            see :meth:`runtime.base.BaseRunner.check_input`); False skips the check. Defaults to True.
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
    runs_openvino = False  # OpenVINO runs a graph as two sessions on two providers: OpenVinoRunner does that

    def __init__(self, path, device=None, *, providers: Optional[Sequence] = None,
                 intra_op_threads: Optional[int] = None, check_finite: bool = True,
                 allow_spinning: bool = True, openvino_precision: Optional[str] = None) -> None:
        check_device(device)
        ort = import_ort()
        self.path = Path(path)
        self.device = device
        check_count(intra_op_threads, "intra_op_threads", allow_none=True)
        check_flag(allow_spinning, "allow_spinning")
        check_flag(check_finite, "check_finite")
        if providers is None and self.runs_openvino:
            providers = [OPENVINO]
        self._providers = choose_providers(ort.get_available_providers(), device, providers)
        names = [split_provider(p)[0] for p in self._providers]
        openvino = OPENVINO in names
        if openvino != self.runs_openvino:
            raise RuntimeInputError(
                f"{OPENVINO} runs in OpenVinoRunner (its CNN on OpenVINO, its BiLSTM on the CPU EP): open "
                f"{self.path} with runtime.load(path, providers=[{OPENVINO!r}])" if openvino else
                f"OpenVinoRunner runs on {OPENVINO}, but providers are {names}; for other providers use "
                "runtime.load(path, providers=...)")
        if openvino_precision is not None and not openvino:
            raise RuntimeInputError(f"openvino_precision applies to {OPENVINO} only; add it to providers= (providers "
                                    f"now: {names})")
        self._threads, self._allow_spinning = intra_op_threads, allow_spinning
        # What runtime.load was given (with device), so that another graph of the export opens the same way.
        self.load_options = {"providers": providers, "intra_op_threads": intra_op_threads,
                             "check_finite": check_finite, "allow_spinning": allow_spinning,
                             "openvino_precision": openvino_precision}
        self._openvino = None
        if openvino:
            precision = "f32" if openvino_precision is None else openvino_precision  # "" is refused, not "f32"
            self._openvino = (precision, split_provider(self._providers[names.index(OPENVINO)])[1])
        graph = self._open(ort)  # here, not at activation, so that file errors surface from load()
        super().__init__(graph.metadata, graph.spec, check_finite=check_finite)
        # Which provider runs each part of the graph; provider is the one that runs the CNN when there is one.
        self.stage_providers = {k: v for k, v in self._stage_providers(graph).items() if self.stage in ("model", k)}
        self.provider = self.stage_providers.get("cnn", graph.provider)
        self._on_gpu = self.provider in GPU_PROVIDERS
        self._serialize = False
        logger.debug("%s: providers %s", self.name, self.stage_providers)

    def _open(self, ort) -> OrtGraph:
        """Create the session (again after a deactivate: it holds the model's memory, on a GPU too)."""
        opts = session_options(ort, intra_op_threads=self._threads, allow_spinning=self._allow_spinning)
        graph = OrtGraph(ort, self.path, opts, self._providers)
        self.session, self._options = graph.session, opts
        return graph

    def _stage_providers(self, graph: OrtGraph) -> dict:
        return {"cnn": graph.provider, "bilstm": graph.provider}

    def activate_impl(self) -> None:
        if self.session is not None:  # the session(s) made by __init__, not yet released
            return
        graph = self._open(import_ort())
        if graph.metadata != self.metadata:
            self.deactivate_impl()
            raise RuntimeInputError(f"{self.path} changed on disk since it was loaded (it now holds another model); "
                                    "load it again with runtime.load")

    def deactivate_impl(self) -> None:
        self.session = None  # ONNX Runtime frees a session's memory with its last reference

    def release_idle_impl(self) -> None:
        self.deactivate_impl()  # the session(s) load() made for a runner that never ran

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
            return dict(zip(names, self._run_on_host(feeds, names), strict=True))
        return self._infer_bound(feed)

    def _run_on_host(self, feeds: dict, names: list) -> list:
        return self.session.run(names, feeds)

    def _infer_bound(self, feed: Feed) -> dict:
        """IO binding on a GPU provider: CUDA tensors in place, outputs into torch CUDA tensors when torch is in."""
        binding = self.session.io_binding()
        name = self.input_spec.input_name
        x = feed.x
        on_cuda = feed.is_torch and x.is_cuda
        if on_cuda:
            import torch

            index = x.device.index if x.device.index is not None else torch.cuda.current_device()
            session_id = gpu_device_id(self._providers)
            if index != session_id:  # ONNX Runtime would read another GPU's address
                raise RuntimeInputError(f"the input is on cuda:{index}, but the runner's ONNX Runtime session runs on "
                                        f"cuda:{session_id}; move it there (x.to('cuda:{session_id}'))")
            binding.bind_input(name, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        else:
            binding.bind_cpu_input(name, x.detach().cpu().numpy() if feed.is_torch else x)
        if self.input_spec.takes_lengths:
            binding.bind_cpu_input("lengths", feed.lengths_or_full())
        shapes = self._output_shapes(feed)
        outputs = {}
        if on_cuda:
            for out_name, shape in shapes.items():
                t = torch.empty(shape, dtype=torch.float32, device=x.device)
                binding.bind_output(out_name, "cuda", index, np.float32, shape, t.data_ptr())
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
