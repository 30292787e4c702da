"""A real Triton server for the serving tests: the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel, started
once per session on free localhost ports, serving a python-kind repository generated from the tiny test model (the
``tiny_export`` fixture of tests/conftest.py).

The server runs in its own environment (``make triton-env`` creates ``.venv-triton``; ``make test`` passes it in
``TRITON_SERVER_PYTHON``). Without it every test here skips with the one-line reason.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import runtime
from runtime.triton.local_server import SERVER_PYTHON_ENV, LocalTritonServer, server_unavailable_reason

# Short, so that the expiry test waits little; long beside the gaps between one stream's frames in the other tests.
STREAM_IDLE_SECONDS = 2.0
STREAM_WINDOW = 8
MAX_TIME = 16  # time buckets 1, 2, 4, 8, 16
MAX_BATCH_SIZE = 8
PROTOCOLS = ("http", "grpc")


@pytest.fixture(scope="session")
def server_python() -> str:
    """The server environment's interpreter; skips the test when there is none that can run the bundled server."""
    python = os.environ.get(SERVER_PYTHON_ENV)
    if not python:
        pytest.skip(f"{SERVER_PYTHON_ENV} is not set: `make triton-env` builds the server's environment and "
                    "`make test` sets it")
    reason = server_unavailable_reason(python)
    if reason:
        pytest.skip(f"the bundled tritonserver cannot run here: {reason}")
    return python


def write_python_repository(export_dir, out, **options):
    """A python-kind repository of the tiny export (``export.triton_repo``, as `python -m export.to_triton` writes
    it): ``cnn_bilstm`` (clips of 1..16 frames, batches of up to 8) and, unless ``stream=False``,
    ``cnn_bilstm_stream``."""
    from export.triton_repo import RepoOptions, write_repository

    opts = dict(kind="python", max_time=MAX_TIME, max_batch_size=MAX_BATCH_SIZE, stream_window=STREAM_WINDOW,
                stream_idle_seconds=STREAM_IDLE_SECONDS)
    return write_repository(export_dir, out, RepoOptions(**{**opts, **options})).path


@pytest.fixture(scope="session")
def triton_server(server_python, tiny_export, tmp_path_factory):
    """One server for the session, serving ``cnn_bilstm`` and ``cnn_bilstm_stream``."""
    repo = write_python_repository(tiny_export, tmp_path_factory.mktemp("triton") / "repo")
    with LocalTritonServer(repo, python=server_python, startup_timeout=180) as server:
        yield server


@pytest.fixture(scope="session")
def local_model(tiny_export):
    """The same model in process: what every served result is compared with."""
    with runtime.load(tiny_export / "model.onnx") as runner:
        yield runner


def base_url(server, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


def assert_same_outputs(served: dict, local: dict, lengths, atol: float = 1e-5) -> None:
    """Clip logits and the frame logits of every real step (t < lengths[b]) agree within ``atol``."""
    np.testing.assert_allclose(served["clip_logits"], local["clip_logits"], rtol=0, atol=atol)
    assert served["frame_logits"].shape == local["frame_logits"].shape
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(served["frame_logits"][b, :n], local["frame_logits"][b, :n], rtol=0, atol=atol)
