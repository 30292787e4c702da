"""cnn-bilstm-deploy runtime: load an engine, ONNX model or checkpoint and classify frame sequences.

Importing this package is cheap: torch, onnxruntime and tensorrt are imported only by the backend that needs them.

    import runtime
    with runtime.load("artifacts/model.onnx") as runner:
        x = runtime.preprocess_frames(frames_uint8, runner.metadata.mean, runner.metadata.std,
                                      runner.input_spec.frame_size)
        out = runner.infer(x)            # {"frame_logits": (B, T, C), "clip_logits": (B, C)}
        top = runner.classify(x, top_k=3)
    with runtime.open_stream("artifacts", window=16) as stream:     # an export folder, a .pt, or a served stream URL
        result = stream.push(frame)
"""

from ._version import __version__
from .errors import RuntimeInputError
from .preprocess import preprocess_frames

__all__ = ["__version__", "load", "open_stream", "StreamingClassifier", "StreamResult", "RuntimeInputError", "preprocess_frames",
           "InputSpec", "ModelMetadata", "BaseRunner"]

_LAZY = {
    "load": ("runtime.backends", "load"),
    "open_stream": ("runtime.streaming", "open_stream"),
    "StreamingClassifier": ("runtime.streaming", "StreamingClassifier"),
    "StreamResult": ("runtime.stream_base", "StreamResult"),
    "InputSpec": ("runtime.spec", "InputSpec"),
    "ModelMetadata": ("runtime.spec", "ModelMetadata"),
    "BaseRunner": ("runtime.base", "BaseRunner"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
