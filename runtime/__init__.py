"""cnn-bilstm-deploy runtime: load an engine, ONNX model or checkpoint and classify frame sequences.

Importing this package is cheap: torch, onnxruntime and tensorrt are imported only by the backend that needs them.
"""

from ._version import __version__

__all__ = ["__version__"]
