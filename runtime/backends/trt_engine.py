"""Loading a TensorRT engine, apart from running it (Polygraphy's loader/runner split): :func:`load_engine` vets an
engine file against its report and this machine, deserializes it and returns a :class:`LoadedEngine`, which
:class:`runtime.backends.tensorrt.TrtRunner` runs (one loaded engine may feed several runners: one per thread, each
with its own execution context).

Before the engine is deserialized, its JSON report (``ENGINE + ".json"``, written by ``python -m export.to_trt``) is
checked against this machine by :mod:`.engine_report`: the engine file's size and sha256, a TensorRT flavour and
version that can load it (the lean runtime loads only version-compatible plans of full TensorRT), then, through
cuda-python, that there is a CUDA device at all (before TensorRT starts: without a GPU it logs CUDA errors and may
crash), and its compute capability. A mismatch is a :class:`~runtime.errors.RuntimeInputError` that says what to
rebuild, instead of TensorRT's opaque deserialization failure; no GPU is one
:class:`~runtime.cuda_mem.NoCudaDeviceError` line. After deserialization, the engine's I/O tensor names and dtypes are
checked against docs/ARCHITECTURE.md's contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import RuntimeInputError
from ..inputs import check_device
from ..spec import InputSpec, ModelMetadata, Profile
from .engine_report import (
    check_engine_file,
    check_engine_gpu,
    check_engine_runtime,
    plan_holds_host_code,
    read_report,
    report_path_for,
    runtime_flavours,
)

if TYPE_CHECKING:  # the flavour is imported at run time (runtime.trt_compat); its classes bear these names
    from tensorrt import ICudaEngine


@dataclass(frozen=True)
class LoadedEngine:
    """A vetted, deserialized engine and what running it needs; made by :func:`load_engine`.

    Attributes:
        path (Path): the engine file.
        report (dict): its JSON report.
        metadata (ModelMetadata): the model's metadata, from the report.
        tm (runtime.trt_compat.TrtModule): the TensorRT flavour that deserialized it.
        cuda (runtime.cuda_mem.CudaApi): the CUDA calls.
        device_index (int): the CUDA device it was loaded on.
        device_info (dict): that device's name and compute capability.
        engine: the flavour's ``ICudaEngine``.
        trt_runtime: the ``Runtime`` that deserialized it, and its logger (kept alive with the engine).
        inputs, outputs (tuple[str, ...]): the engine's input and output tensor names.
        input_name (str): "frames" (model, cnn) or "features" (bilstm).
        dtypes (dict): tensor name -> numpy dtype.
        profiles (tuple[Profile, ...]): its optimization profiles over (batch, time).
    """

    path: Path
    report: dict
    metadata: ModelMetadata
    tm: Any
    cuda: Any
    device_index: int
    device_info: dict
    engine: Any
    trt_runtime: tuple
    inputs: tuple
    outputs: tuple
    input_name: str
    dtypes: dict
    profiles: tuple

    @property
    def input_spec(self) -> InputSpec:
        """What a runner of this engine accepts."""
        return InputSpec.for_graph(self.metadata.graph, self.metadata, self.profiles)


def load_engine(path, device=None, *, trt_backend: str = "auto", trt_module: Any = None,
                cuda_api: Any = None) -> LoadedEngine:
    """Vet an engine file built by ``python -m export.to_trt`` and deserialize it on a CUDA device.

    Args:
        path (str | PathLike): ``.engine``/``.plan`` with its report at ``path + ".json"``.
        device (str | int | None): "cuda", "cuda:N" or N; None means GPU 0. Defaults to None.
        trt_backend (str): "auto" (the first importable flavour that can load this engine:
            :func:`.engine_report.runtime_flavours`), "tensorrt", "tensorrt_rtx" or "tensorrt_lean_bindings" (see
            :func:`runtime.trt_compat.import_trt`). Defaults to "auto".
        trt_module (runtime.trt_compat.TrtModule | None): an imported flavour to use instead of importing one
            (embedding, tests). Defaults to None.
        cuda_api (runtime.cuda_mem.CudaApi | None): the CUDA calls to use (tests pass a fake). Defaults to None.

    Returns:
        LoadedEngine: what :class:`runtime.backends.tensorrt.TrtRunner` runs.

    Raises:
        RuntimeInputError: missing/foreign report, an engine of another TensorRT version or GPU, a damaged engine,
            an engine that is not version-compatible on the lean runtime, I/O tensors or dtypes other than the
            export contract's, a device that is not CUDA.
        runtime.trt_compat.TrtNotAvailableError: no TensorRT flavour installed.
        runtime.cuda_mem.NoCudaDeviceError: no CUDA device here (checked before TensorRT starts).
        ImportError: cuda-python missing.
    """
    check_device(device)
    path = Path(path)
    device_index = _device_index(device)
    report = read_report(path)
    check_engine_file(path, report)  # first: a damaged engine is reported as damaged, GPU or not
    metadata = ModelMetadata.from_dict(report["metadata"], str(report_path_for(path)))
    if trt_module is None:
        from ..trt_compat import import_trt

        # Importing starts nothing on the GPU; "auto" tries only the flavours that can load this engine.
        trt_module = import_trt(trt_backend, order=runtime_flavours(report))
    check_engine_runtime(report, trt_module.flavour, trt_module.version_string)
    if cuda_api is None:
        from ..cuda_mem import CudaApi

        cuda_api = CudaApi()
    cuda_api.require_device(("the " if trt_module.is_lean else "") + trt_module.product)
    cuda_api.set_device(device_index)
    device_info = cuda_api.device_info(device_index)
    check_engine_gpu(report, device_info)
    trt_runtime, engine = _deserialize(trt_module, path, report)
    inputs, outputs, dtypes = _io_tensors(trt_module, engine, metadata, path)
    input_name = InputSpec.for_graph(metadata.graph, metadata).input_name
    profiles = tuple(_profiles(engine, input_name))
    return LoadedEngine(path, report, metadata, trt_module, cuda_api, device_index, device_info, engine, trt_runtime,
                        inputs, outputs, input_name, dtypes, profiles)


def _deserialize(tm, path: Path, report: dict) -> tuple:
    """((Runtime, its logger), ICudaEngine) of the plan at ``path``."""
    from ..trt_compat import make_logger

    trt = tm.trt
    # A collecting logger keeps TensorRT's own reason (e.g. "does not support this compute capability") for the
    # error message; modules without ILogger (stripped builds, test fakes) get the plain logger.
    collect = hasattr(trt, "ILogger")
    logger = make_logger(tm, "warning", collect=collect)
    runtime = trt.Runtime(logger)
    if plan_holds_host_code(report):
        # A version-compatible plan carries its own lean runtime, which TensorRT runs only when allowed to.
        runtime.engine_host_code_allowed = True
    try:
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        why = "damaged, or not a TensorRT plan although the report matched"
    except Exception as e:  # some versions raise instead of returning None
        engine, why = None, f"{type(e).__name__}: {e}"
    if engine is None:
        said = "; ".join(logger.errors())[:500] if collect else ""
        if "compute capability" in said.lower():
            raise RuntimeInputError(f"{tm.describe()} does not support this GPU: {said}. TensorRT for RTX runs on "
                                    "RTX-class GPUs (compute capability 8.6/8.9/12.0), not on H100/H200; use full "
                                    "TensorRT (pip install '.[trt]') there")
        raise RuntimeInputError(f"{tm.describe()} could not deserialize {path} ({why}"
                                f"{'; TensorRT said: ' + said if said else ''}); rebuild it with "
                                "`python -m export.to_trt`")
    return (runtime, logger), engine


def _io_tensors(tm, engine: ICudaEngine, metadata: ModelMetadata, path: Path) -> tuple:
    """(input names, output names, name -> numpy dtype), checked against the export contract."""
    trt = tm.trt
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    outputs = tuple(n for n in names if engine.get_tensor_mode(n) != trt.TensorIOMode.INPUT)
    InputSpec.for_graph(metadata.graph, metadata).check_io_names(inputs, outputs, str(path), kind="engine")
    dtypes = {n: _np_dtype(trt, engine.get_tensor_dtype(n)) for n in names}
    # The runner feeds float32 frames/features and reads float32 logits (export.to_onnx's I/O contract);
    # a HALF input would be handed float32 bytes.
    wrong = {n: np.dtype(d).name for n, d in dtypes.items()
             if (d not in (np.int32, np.int64) if n == "lengths" else d is not np.float32)}
    if wrong:
        raise RuntimeInputError(f"{path}: engine I/O dtypes {wrong} are not what the runtime feeds and reads "
                                "(float32 frames/features and outputs, int32/int64 lengths); build the engine "
                                "from a graph of `python -m export.to_onnx`")
    return inputs, outputs, dtypes


def _profiles(engine: ICudaEngine, input_name: str) -> list:
    out = []
    for p in range(engine.num_optimization_profiles):
        lo, _opt, hi = (tuple(s) for s in engine.get_tensor_profile_shape(input_name, p))
        out.append(Profile((int(lo[0]), int(hi[0])), (int(lo[1]), int(hi[1]))))
    return out


def _device_index(device) -> int:
    if device is None:
        return 0
    if isinstance(device, int):
        return device
    text = str(device)
    if text == "cuda":
        return 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    raise RuntimeInputError(f"TensorRT engines run on CUDA devices: device must be 'cuda', 'cuda:N' or N, got "
                            f"{device!r}")


def _np_dtype(trt, dtype) -> type:
    dt = trt.DataType
    table = {dt.FLOAT: np.float32, dt.HALF: np.float16, dt.INT32: np.int32, dt.INT64: np.int64, dt.BOOL: np.bool_,
             dt.INT8: np.int8, dt.UINT8: np.uint8}
    if dtype not in table:
        from ..trt_compat import dtype_name

        raise RuntimeInputError(f"engine tensor dtype {dtype_name(dtype)} is not supported by the runtime")
    return table[dtype]
