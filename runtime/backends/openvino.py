"""The OpenVINO backend: ONNX Runtime with the OpenVINO plugin EP on Intel CPUs, opt-in with
``runtime.load(path, providers=["OpenVINOExecutionProvider"])`` and the ``onnxruntime-ep-openvino`` plugin (the
``openvino`` extra).

ONNX Runtime >= 1.23 loads OpenVINO as a plugin EP, which a plain ``providers=[...]`` list silently ignores (the
session falls back to the CPU EP), so the runner registers the plugin and adds its CPU device itself, and fails if the
session does not end up on it. ``openvino_precision`` ("f32" by default; "bf16" uses AMX/AVX-512 bf16) becomes
OpenVINO's ``INFERENCE_PRECISION_HINT``: OpenVINO's own default on such CPUs is bf16, which would lower the precision
without being asked. Further OpenVINO properties go in the plugin's only option, ``load_config``:
``providers=[("OpenVINOExecutionProvider", {"load_config": {"CPU": {"CACHE_DIR": "ov-cache"}}})]``.

The BiLSTM never runs on OpenVINO: OpenVINO 2026.4's LSTM ignores ``sequence_lens`` in the reverse direction (a clip
padded from 5 to 8 frames erred by 0.03 in its logits, at f32), so a ``model.onnx`` runs as its export folder's
``cnn.onnx`` on OpenVINO followed by ``bilstm.onnx`` on the CPU EP, and a ``bilstm.onnx`` runs on the CPU EP
(``runner.stage_providers`` says which ran what). The CNN is where the time goes.

:func:`openvino_unavailable_reason` says whether the plugin can run on this machine (installed is not usable: on AMD
CPUs it lists no device); demos, tests and benchmarks skip their OpenVINO paths with its reason.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import RuntimeInputError
from .onnxrt import OnnxRuntimeRunner, OrtGraph
from .ort_providers import OPENVINO
from .ort_session import session_options

logger = logging.getLogger(__name__)

OPENVINO_PRECISIONS = ("f32", "bf16", "f16")
_PLUGIN_LOCK = threading.Lock()  # one registration of the OpenVINO plugin per process, even from several threads


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
        said = " ".join(str(e).split())[:300]
        return f"the OpenVINO plugin failed a one-node test run here: {type(e).__name__}: {said}"
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


def _compile_on_openvino(ort, path: Path, opts, peek: Optional[OrtGraph] = None) -> OrtGraph:
    """``path`` compiled on the OpenVINO device in ``opts``; opened on the CPU EP first (unless ``peek`` is that), so
    a damaged file is reported as one and a failure here is OpenVINO's."""
    if peek is None:
        OrtGraph(ort, path, session_options(ort, optimize=False), ["CPUExecutionProvider"])
    graph = OrtGraph(ort, path, opts, None, check=False, plugin=OPENVINO)
    if graph.provider != OPENVINO:
        raise RuntimeInputError(f"{path}: {OPENVINO} was added, but the session runs on "
                                f"{graph.session.get_providers()}")
    return graph


class OpenVinoRunner(OnnxRuntimeRunner):
    """An :class:`~runtime.backends.onnxrt.OnnxRuntimeRunner` whose CNN runs on OpenVINO and whose BiLSTM runs on the
    CPU EP (see the module docstring); ``runtime.load(..., providers=["OpenVINOExecutionProvider"])`` makes one.

    Takes the arguments of :class:`~runtime.backends.onnxrt.OnnxRuntimeRunner`; ``providers`` must name
    ``"OpenVINOExecutionProvider"`` (None means ``["OpenVINOExecutionProvider"]``), ``openvino_precision`` is "f32",
    "bf16" or "f16" (None means "f32").
    """

    runs_openvino = True
    _cnn_session = None  # set when a model graph runs as cnn.onnx (OpenVINO) + bilstm.onnx (CPU EP)

    def _open(self, ort) -> OrtGraph:
        opts = session_options(ort, intra_op_threads=self._threads, allow_spinning=self._allow_spinning)
        self._cnn_session = None
        precision, ep_options = self._openvino
        add_openvino(ort, opts, precision, self._threads, ep_options)
        graph = self._openvino_graph(ort, opts, self._threads)
        self.session, self._options = graph.session, opts
        return graph

    def _openvino_graph(self, ort, openvino_opts, threads: Optional[int]) -> OrtGraph:
        """The file on OpenVINO, with the BiLSTM kept on the CPU EP (OpenVINO's LSTM ignores sequence_lens in reverse).

        A cnn graph compiles on OpenVINO. A bilstm graph runs on the CPU EP. A model graph becomes its export
        folder's ``cnn.onnx`` on OpenVINO (kept in ``self._cnn_session``) plus ``bilstm.onnx`` on the CPU EP
        (returned); both must come from the same checkpoint as the model graph.
        """
        peek = OrtGraph(ort, self.path, session_options(ort, optimize=False), ["CPUExecutionProvider"])
        if peek.metadata.graph == "cnn":
            return _compile_on_openvino(ort, self.path, openvino_opts, peek)
        # The CPU EP's threads would spin between calls and slow OpenVINO's threads on the same cores.
        cpu_opts = session_options(ort, intra_op_threads=threads, allow_spinning=False)
        if peek.metadata.graph == "bilstm":
            logger.info("%s: the BiLSTM runs on the CPU EP, not %s (its LSTM ignores sequence_lens in reverse)",
                        self.path, OPENVINO)
            return OrtGraph(ort, self.path, cpu_opts, ["CPUExecutionProvider"], check=False)
        folder = self.path.parent
        missing = [f"{g}.onnx" for g in ("cnn", "bilstm") if not (folder / f"{g}.onnx").is_file()]
        if missing:
            raise RuntimeInputError(f"{self.path}: on {OPENVINO} a model graph runs as its export folder's cnn.onnx "
                                    f"(OpenVINO) + bilstm.onnx (CPU EP), because OpenVINO's LSTM ignores "
                                    f"sequence_lens in the reverse direction; {folder} lacks {missing} (python -m "
                                    "export.to_onnx writes all three)")
        cnn = _compile_on_openvino(ort, folder / "cnn.onnx", openvino_opts)
        bilstm = OrtGraph(ort, folder / "bilstm.onnx", cpu_opts, ["CPUExecutionProvider"])
        if (cnn.metadata.graph, bilstm.metadata.graph) != ("cnn", "bilstm"):
            raise RuntimeInputError(f"{folder}: cnn.onnx and bilstm.onnx hold {cnn.metadata.graph!r} and "
                                    f"{bilstm.metadata.graph!r} graphs")
        for part in (cnn, bilstm):
            peek.metadata.check_same_model(part.metadata, f"{self.path.name} and {part.metadata.graph}.onnx in "
                                                          f"{folder}")
        self._cnn_session = cnn.session
        bilstm.metadata, bilstm.spec = peek.metadata, peek.spec  # the runner serves the model graph
        return bilstm

    def _stage_providers(self, graph: OrtGraph) -> dict:
        stages = super()._stage_providers(graph)
        if self._cnn_session is not None:
            stages["cnn"] = OPENVINO
        return stages

    def deactivate_impl(self) -> None:
        super().deactivate_impl()
        self._cnn_session = None

    def _run_on_host(self, feeds: dict, names: list) -> list:
        if self._cnn_session is not None:  # a model graph: its CNN on OpenVINO, the BiLSTM on the CPU EP
            feeds["features"] = self._cnn_session.run(["features"], {"frames": feeds.pop("frames")})[0]
        return self.session.run(names, feeds)
