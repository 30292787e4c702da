"""ONNX Runtime backend: one InferenceSession per runner, tuned for latency.

Providers: TensorRT EP > CUDA EP > CPU EP, by availability (``providers`` overrides; the one in use is
``runner.provider``). On the CUDA or TensorRT EP, inputs and outputs go through IO binding: a torch CUDA tensor is
bound in place (no copy) and the outputs are written into torch CUDA tensors; numpy inputs are bound from host memory.

OpenVINO (Intel CPUs, opt-in): ``providers=["OpenVINOExecutionProvider"]`` with the ``onnxruntime-ep-openvino`` plugin
(the ``openvino`` extra). ONNX Runtime >= 1.23 loads it as a plugin EP, which a plain ``providers=[...]`` list silently
ignores (the session falls back to the CPU EP), so the runner registers the plugin and adds its CPU device itself, and
fails if the session does not end up on it. ``openvino_precision`` ("f32" by default; "bf16" uses AMX/AVX-512 bf16:
on the dev machine's Xeon 3.2x faster than eager PyTorch fp32 and 2.7x faster than OpenVINO f32 at B=1, T=16) becomes
OpenVINO's ``INFERENCE_PRECISION_HINT``. Further OpenVINO properties go in the plugin's only option, ``load_config``:
``providers=[("OpenVINOExecutionProvider", {"load_config": {"CPU": {"CACHE_DIR": "ov-cache"}}})]``. OpenVINO's own
default on such CPUs is bf16, which would lower the precision without being asked. The BiLSTM never runs on OpenVINO:
OpenVINO 2026.4's LSTM ignores ``sequence_lens`` in the reverse direction (a clip padded from 5 to 8 frames erred by
0.03 in its logits, at f32), so a ``model.onnx`` runs as its export folder's ``cnn.onnx`` on OpenVINO followed by
``bilstm.onnx`` on the CPU EP, and a ``bilstm.onnx`` runs on the CPU EP (``runner.stage_providers`` says which ran
what). The CNN is where the time goes (the BiLSTM took 2.8 ms of ~190 ms on the reference model at B=1, T=16).

Threading: ``InferenceSession.run`` is thread-safe, so CPU calls run concurrently; IO binding is per call.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..base import BaseRunner, Feed, check_count, check_device, check_flag
from ..errors import RuntimeInputError
from ..spec import METADATA_KEY, InputSpec, ModelMetadata, check_export_file
from .ort_session import session_options

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
    dev = _device_name(device)
    if requested is not None:
        if isinstance(requested, str) or not isinstance(requested, (list, tuple)):
            raise RuntimeInputError(f"providers must be a list of provider names (or (name, options) pairs), got "
                                    f"{requested!r}; e.g. providers=['CPUExecutionProvider']")
        names = [_split_provider(p)[0] for p in requested]
        variants = [n for n in names if str(n).startswith(OPENVINO + ".")]
        if variants:
            raise RuntimeInputError(f"use {OPENVINO!r}, not {variants}: the runner picks the plugin's CPU device, sets "
                                    "its precision and keeps the BiLSTM on the CPU EP")
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


def _split_provider(entry) -> tuple:
    """``"Name"`` or ``("Name", {options})`` -> (name, options dict or None)."""
    if isinstance(entry, (tuple, list)):
        return entry[0], (dict(entry[1]) if len(entry) > 1 and entry[1] is not None else None)
    return entry, None


def _device_name(device) -> Optional[str]:
    """None, "cpu", "cuda" or "cuda:N" for a device that passed :func:`runtime.base.check_device` (an int N is
    CUDA device N, as for the other backends)."""
    if device is None:
        return None
    if isinstance(device, (int, np.integer)) and not isinstance(device, bool):
        return f"cuda:{int(device)}"
    return str(device)


def gpu_device_id(providers: Sequence) -> Optional[int]:
    """The CUDA device a session of ``providers`` runs on (its first GPU provider's ``device_id``, else 0), or None
    without a GPU provider."""
    for p in providers:
        name, options = _split_provider(p)
        if name in GPU_PROVIDERS:
            return int((options or {}).get("device_id", 0))
    return None


def openvino_installed() -> bool:
    """Whether the OpenVINO plugin package (``onnxruntime-ep-openvino``, the ``openvino`` extra) is importable.

    Installed is not usable: the plugin installs on any x86-64 machine but lists a CPU device only on Intel CPUs. Ask
    :func:`openvino_unavailable_reason` whether it can run here.
    """
    import importlib.util

    return importlib.util.find_spec("onnxruntime_ep_openvino") is not None


def _openvino_cpu_devices(ort) -> list:
    """The OpenVINO plugin's CPU devices as ONNX Runtime lists them (empty on AMD CPUs, where the plugin, though
    installed and registered, offers none). Tests replace this one function to simulate such a machine."""
    return [d for d in ort.get_ep_devices() if d.ep_name == OPENVINO and d.ep_metadata.get("ov_device") == "CPU"]


_registered = False  # whether this module registered the plugin (guarded by _PLUGIN_LOCK)


def _openvino_devices(ort) -> list:
    """Register the OpenVINO plugin EP (once per process) and return its CPU devices.

    Raises:
        RuntimeInputError: the plugin package is missing, or onnxruntime cannot load plugin EPs (< 1.23).
    """
    global _registered
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
        if not devices and not _registered:  # the application may have registered it already
            try:
                ort.register_execution_provider_library("openvino", plugin.get_library_path())
            except Exception as e:  # "already registered" under our name by someone else: the device check says more
                logger.debug("registering the OpenVINO plugin: %s", e)
            _registered = True
            devices = _openvino_cpu_devices(ort)
    return devices


def _no_openvino_device(ort) -> str:
    listed = [(d.ep_name, dict(d.ep_metadata).get("ov_device"), d.device.vendor) for d in ort.get_ep_devices()]
    return (f"the OpenVINO plugin is installed but offers no CPU device on this machine (it lists Intel CPUs only; "
            f"devices here: {listed})")


# The OpenVINO probe's one-node graph, y = Relu(x) with x float32 (1, 8), opset 17, IR 8: serialized bytes, so the
# probe needs no onnx package (the runtime installs without it); tests check it equals what onnx.helper makes.
PROBE_GRAPH = base64.b64decode(
    "CAg6PwoMCgF4EgF5IgRSZWx1EgVwcm9iZVoTCgF4Eg4KDAgBEggKAggBCgIICGITCgF5Eg4KDAgBEggKAggBCgIICEIECgAQEQ==")


_USABLE: dict = {}  # the probe's answer, once per process: {"reason": str | None}


def openvino_unavailable_reason() -> Optional[str]:
    """Why the OpenVINO execution provider cannot run on this machine, or None when it can.

    Decided by what the plugin really does here, once per process: it must be importable, list a CPU device, and
    compile and run a one-node graph on that device with the right result. An import that succeeds is not enough: on
    AMD CPUs the plugin installs and registers but lists no device. Demos, tests and benchmarks skip their OpenVINO
    paths with this reason; ``runtime.load(..., providers=["OpenVINOExecutionProvider"])`` still raises.
    """
    with _PLUGIN_LOCK:
        if "reason" in _USABLE:
            return _USABLE["reason"]
    reason = _probe_openvino()
    with _PLUGIN_LOCK:
        _USABLE.setdefault("reason", reason)
        return _USABLE["reason"]


def _probe_openvino() -> Optional[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed (pip install '.[onnx]')"
    if not openvino_installed():
        return "the OpenVINO plugin is not installed (pip install '.[openvino]', Intel CPUs only)"
    try:
        if not _openvino_devices(ort):
            return _no_openvino_device(ort)
        opts = session_options(ort, intra_op_threads=1, allow_spinning=False)
        add_openvino(ort, opts, "f32", 1)
        x = np.linspace(-1.0, 1.0, 8, dtype=np.float32).reshape(1, 8)
        session = ort.InferenceSession(PROBE_GRAPH, sess_options=opts)
        if session.get_providers()[0] != OPENVINO:
            return f"the OpenVINO plugin lists a CPU device, but a session on it runs on {session.get_providers()}"
        y = session.run(["y"], {"x": x})[0]
        if not np.array_equal(y, np.maximum(x, 0)):
            return f"the OpenVINO plugin ran a one-node Relu graph here and returned a wrong result: {y.tolist()}"
    except Exception as e:  # RuntimeInputError, or whatever the plugin raised while compiling or running
        return f"the OpenVINO plugin failed a one-node test run here: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
    return None


def _openvino_load_config(precision: str, threads: Optional[int], ep_options: Optional[dict]) -> str:
    """The plugin's ``load_config`` JSON: the caller's OpenVINO properties plus the runner's precision and threads.

    The plugin reads nothing but ``load_config`` (it ignores ``cache_dir``, ``num_of_threads``, ... with a warning
    that ONNX Runtime's log level hides), so any other option is refused rather than silently dropped.
    """
    if precision not in OPENVINO_PRECISIONS:
        raise RuntimeInputError(f"openvino_precision must be one of {OPENVINO_PRECISIONS}, got {precision!r}")
    options = dict(ep_options or {})
    user = options.pop("load_config", None)
    if options:
        raise RuntimeInputError(f"the OpenVINO plugin ignores provider options {sorted(options)}; give OpenVINO "
                                "properties in load_config instead, e.g. (\"OpenVINOExecutionProvider\", "
                                "{\"load_config\": {\"CPU\": {\"CACHE_DIR\": \"ov-cache\"}}})")
    try:
        config = json.loads(user) if isinstance(user, str) else dict(user or {})
    except (TypeError, ValueError) as e:
        raise RuntimeInputError(f"load_config must be a dict or JSON object of device -> properties, such as "
                                f"{{\"CPU\": {{\"CACHE_DIR\": \"ov-cache\"}}}}; got {user!r} ({e})") from e
    if not isinstance(config, dict) or not all(isinstance(v, dict) for v in config.values()):
        raise RuntimeInputError(f"load_config must map a device to its properties, such as {{\"CPU\": "
                                f"{{\"CACHE_DIR\": \"ov-cache\"}}}}; got {user!r}")
    cpu = dict(config.get("CPU") or {})
    clash = sorted(set(cpu) & {"INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS"})
    if clash:
        raise RuntimeInputError(f"load_config sets {clash}; set the precision with openvino_precision= and the "
                                "threads with intra_op_threads= instead")
    cpu["INFERENCE_PRECISION_HINT"] = precision
    if threads is not None:
        cpu["INFERENCE_NUM_THREADS"] = str(int(threads))
    return json.dumps({**config, "CPU": cpu})


def add_openvino(ort, opts, precision: str, threads: Optional[int], ep_options: Optional[dict] = None) -> None:
    """Register the OpenVINO plugin EP (once per process) and put its CPU device first in ``opts``.

    Args:
        ort (module): onnxruntime.
        opts (SessionOptions): options of the session to create.
        precision (str): OpenVINO's INFERENCE_PRECISION_HINT, one of ``OPENVINO_PRECISIONS``.
        threads (int | None): INFERENCE_NUM_THREADS; None lets OpenVINO decide.
        ep_options (dict | None): ``{"load_config": {...}}`` with further OpenVINO properties per device (e.g.
            ``{"CPU": {"CACHE_DIR": "ov-cache"}}``), merged with the precision and threads. Defaults to None.

    Raises:
        RuntimeInputError: an unknown precision, options other than ``load_config``, a ``load_config`` that is not
            device -> properties or sets the precision or threads, the plugin package missing, an onnxruntime without
            plugin EPs (< 1.23), or no OpenVINO CPU device.
    """
    load_config = _openvino_load_config(precision, threads, ep_options)
    devices = _openvino_devices(ort)
    if not devices:
        raise RuntimeInputError(_no_openvino_device(ort))
    opts.add_provider_for_devices(devices[:1], {"load_config": load_config})


class _Graph:
    """One checked ONNX session of an export: its metadata, and I/O names matching docs/ARCHITECTURE.md.

    ``providers=None`` means the provider is a plugin device already added to ``opts`` (OpenVINO); the file was then
    opened once on the CPU EP before (so a failure here is OpenVINO's, not the file's), and ``check=False`` skips
    hashing it a second time.
    """

    def __init__(self, ort, path: Path, opts, providers: Optional[list], check: bool = True) -> None:
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
                raise RuntimeInputError(f"{OPENVINO} could not compile {path}: {type(e).__name__}: {said[:600]}") from e
            raise RuntimeInputError(f"{path} is not a loadable ONNX model (damaged, truncated or another "
                                    f"format): {type(e).__name__}: {said[:300]}") from e
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


def _peek_options(ort):
    """Options for opening a file only to read its metadata: no graph optimizations (0.15 s for the reference
    model.onnx on the CPU EP, against 1 s to compile it on OpenVINO)."""
    return session_options(ort, optimize=False)


def _compile_on_openvino(ort, path: Path, opts, peek: Optional[_Graph] = None) -> _Graph:
    """``path`` compiled on the OpenVINO device in ``opts``; opened on the CPU EP first (unless ``peek`` is that), so
    a damaged file is reported as one and a failure here is OpenVINO's."""
    if peek is None:
        _Graph(ort, path, _peek_options(ort), ["CPUExecutionProvider"])
    graph = _Graph(ort, path, opts, None, check=False)
    if graph.provider != OPENVINO:
        raise RuntimeInputError(f"{path}: {OPENVINO} was added, but the session runs on "
                                f"{graph.session.get_providers()}")
    return graph


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

    def __init__(self, path, device=None, *, providers: Optional[Sequence] = None,
                 intra_op_threads: Optional[int] = None, check_finite: bool = True,
                 allow_spinning: bool = True, openvino_precision: Optional[str] = None) -> None:
        check_device(device)
        ort = _ort()
        self.path = Path(path)
        self.device = device
        check_count(intra_op_threads, "intra_op_threads", allow_none=True)
        check_flag(allow_spinning, "allow_spinning")
        check_flag(check_finite, "check_finite")
        self._providers = choose_providers(ort.get_available_providers(), device, providers)
        names = [_split_provider(p)[0] for p in self._providers]
        openvino = OPENVINO in names
        if openvino_precision is not None and not openvino:
            raise RuntimeInputError(f"openvino_precision applies to {OPENVINO} only; add it to providers= (providers "
                                    f"now: {names})")
        self._threads, self._allow_spinning = intra_op_threads, allow_spinning
        self._openvino = None
        if openvino:
            precision = "f32" if openvino_precision is None else openvino_precision  # "" is refused, not "f32"
            self._openvino = (precision, _split_provider(self._providers[names.index(OPENVINO)])[1])
        graph = self._open(ort)  # here, not at activation, so that file errors surface from load()
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

    def _open(self, ort) -> _Graph:
        """Create the session(s) (again after a deactivate: they hold the model's memory, on a GPU too)."""
        opts = session_options(ort, intra_op_threads=self._threads, allow_spinning=self._allow_spinning)
        self._cnn_session = None  # set when a model graph runs as cnn (OpenVINO) + bilstm (CPU EP)
        if self._openvino is not None:
            precision, ep_options = self._openvino
            add_openvino(ort, opts, precision, self._threads, ep_options)
            graph = self._openvino_graph(ort, opts, self._threads)
        else:
            graph = _Graph(ort, self.path, opts, self._providers)
        self.session, self._options = graph.session, opts
        return graph

    def _openvino_graph(self, ort, openvino_opts, threads: Optional[int]) -> _Graph:
        """The file on OpenVINO, with the BiLSTM kept on the CPU EP (OpenVINO's LSTM ignores sequence_lens in reverse).

        A cnn graph compiles on OpenVINO. A bilstm graph runs on the CPU EP. A model graph becomes its export
        folder's ``cnn.onnx`` on OpenVINO (kept in ``self._cnn_session``) plus ``bilstm.onnx`` on the CPU EP
        (returned); both must come from the same checkpoint as the model graph.
        """
        peek = _Graph(ort, self.path, _peek_options(ort), ["CPUExecutionProvider"])
        if peek.metadata.graph == "cnn":
            return _compile_on_openvino(ort, self.path, openvino_opts, peek)
        # The CPU EP's threads would spin between calls and slow OpenVINO's threads on the same cores.
        cpu_opts = session_options(ort, intra_op_threads=threads, allow_spinning=False)
        if peek.metadata.graph == "bilstm":
            logger.info("%s: the BiLSTM runs on the CPU EP, not %s (its LSTM ignores sequence_lens in reverse)",
                        self.path, OPENVINO)
            return _Graph(ort, self.path, cpu_opts, ["CPUExecutionProvider"], check=False)
        folder = self.path.parent
        missing = [f"{g}.onnx" for g in ("cnn", "bilstm") if not (folder / f"{g}.onnx").is_file()]
        if missing:
            raise RuntimeInputError(f"{self.path}: on {OPENVINO} a model graph runs as its export folder's cnn.onnx "
                                    f"(OpenVINO) + bilstm.onnx (CPU EP), because OpenVINO's LSTM ignores "
                                    f"sequence_lens in the reverse direction; {folder} lacks {missing} (python -m "
                                    "export.to_onnx writes all three)")
        cnn = _compile_on_openvino(ort, folder / "cnn.onnx", openvino_opts)
        bilstm = _Graph(ort, folder / "bilstm.onnx", cpu_opts, ["CPUExecutionProvider"])
        if (cnn.metadata.graph, bilstm.metadata.graph) != ("cnn", "bilstm"):
            raise RuntimeInputError(f"{folder}: cnn.onnx and bilstm.onnx hold {cnn.metadata.graph!r} and "
                                    f"{bilstm.metadata.graph!r} graphs")
        for part in (cnn, bilstm):
            peek.metadata.check_same_model(part.metadata, f"{self.path.name} and {part.metadata.graph}.onnx in "
                                                          f"{folder}")
        self._cnn_session = cnn.session
        bilstm.metadata, bilstm.spec = peek.metadata, peek.spec  # the runner serves the model graph
        return bilstm

    def activate_impl(self) -> None:
        if self.session is not None:  # the session(s) made by __init__, not yet released
            return
        graph = self._open(_ort())
        if graph.metadata != self.metadata:
            self.session = self._cnn_session = None
            raise RuntimeInputError(f"{self.path} changed on disk since it was loaded (it now holds another model); "
                                    "load it again with runtime.load")

    def deactivate_impl(self) -> None:
        self.session = self._cnn_session = None  # ONNX Runtime frees a session's memory with its last reference

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
            import torch

            index = x.device.index if x.device.index is not None else torch.cuda.current_device()
            session_id = gpu_device_id(self._providers)
            if index != session_id:  # ONNX Runtime would read another GPU's address
                raise RuntimeInputError(f"the input is on cuda:{index}, but this session runs on cuda:{session_id}; "
                                        f"move it there (x.to('cuda:{session_id}'))")
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
