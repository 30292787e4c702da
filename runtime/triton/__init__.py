"""Serving on NVIDIA Triton Inference Server.

- :mod:`runtime.triton.protocol`: the names, shapes, time buckets and metadata layout a model repository and its
  clients share (no heavy imports).
- :mod:`runtime.triton.python_model`: the Python-backend models a repository's ``model.py`` shim runs on the server.

Nothing here imports ``tritonclient`` or ``triton_python_backend_utils`` at import time.
"""
