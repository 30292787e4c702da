"""The one exception type the runtime raises for bad input, bad files and incompatible artifacts."""

from __future__ import annotations


class RuntimeInputError(ValueError):
    """Something handed to the runtime cannot be used as given.

    Raised for inputs of the wrong rank, frame size, dtype, batch or length; lengths inconsistent with T; NaN/Inf
    (when finite checks are on); files that are not what their extension says, damaged files, and engines built by
    another TensorRT version or for another GPU. The message says what was wrong and what is valid. Nothing is ever
    silently reshaped, cast or truncated instead.
    """


class RemoteServerError(ConnectionError):
    """A model server (Triton, through ``runtime.load("grpc://...")``) could not answer a request.

    Raised when the server cannot be reached, does not answer within the runner's timeout, or fails the request
    itself (its model process died, for one). The message says which, and what to check. Input the server refused as
    invalid is a :class:`RuntimeInputError` instead.
    """
