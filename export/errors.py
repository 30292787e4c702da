"""The errors of the exporters: export folders and ONNX graphs (:mod:`export.to_onnx`, :mod:`export.quantize`) and
engines (:mod:`export.to_trt`). All are ``ValueError``s, so each CLI turns any of them into one line."""

from __future__ import annotations

from typing import Optional


class ExportError(ValueError):
    """An export request cannot be carried out as asked (bad arguments, unexpected graph structure)."""


class ExportVerificationError(ExportError):
    """An exported graph disagrees with PyTorch beyond the precision's tolerance (nothing was written)."""

    def __init__(self, message: str, report: Optional[dict] = None) -> None:
        super().__init__(message)
        self.report = report


class ExportOverwriteError(ExportError):
    """The output folder holds another model's (or another precision's) graphs; pass ``force=True`` to replace them."""


class EngineBuildError(ValueError):
    """The engine cannot be built as asked (bad option, parser failure, build failure, lost FP16)."""


class ProfileError(EngineBuildError):
    """A ``--profile`` string is malformed, inconsistent (not min <= opt <= max) or names unknown inputs/axes."""


class OnnxParseError(EngineBuildError):
    """TensorRT's ONNX parser rejected the graph; the message names the ONNX node index, name and op."""


class PrecisionCheckError(EngineBuildError):
    """The built network is not in the precision the graph asked for (e.g. no HALF layer in an fp16 graph)."""
