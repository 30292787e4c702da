"""LocalTritonServer's own guarantees: a clear reason where the bundled server cannot run, and a clear error with the
server's log (never a hang) when a model does not become ready in time, with nothing left behind."""

from __future__ import annotations

import os
import sys

import pytest

from benchmarks.triton_server import SHM_DIR, LocalTritonServer, ServerError, server_unavailable_reason

# A python model whose initialize never returns in time: the server stays "loading", as it does when the stub cannot
# load its libraries.
SLOW_MODEL = """
import time


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(120)

    def execute(self, requests):
        return []
"""
SLOW_CONFIG = """
name: "slow"
backend: "python"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""


def test_reason_names_what_is_missing(tmp_path):
    # This interpreter (the main venv) has no nvidia-pytriton: it must stay out of it (it pins numpy<2).
    if server_unavailable_reason(sys.executable) is None:
        pytest.skip("this interpreter has nvidia-pytriton installed")
    reason = server_unavailable_reason(sys.executable)
    assert "nvidia-pytriton is not installed" in reason and "make triton-env" in reason and "\n" not in reason
    missing = tmp_path / "bin" / "python"
    assert "does not exist" in server_unavailable_reason(str(missing))
    with pytest.raises(ServerError, match="is not a folder"):
        LocalTritonServer(tmp_path / "no-repo")


def test_model_stuck_loading_gives_a_clear_error_and_leaves_nothing(server_python, tmp_path):
    (tmp_path / "repo" / "slow" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "slow" / "config.pbtxt").write_text(SLOW_CONFIG)
    (tmp_path / "repo" / "slow" / "1" / "model.py").write_text(SLOW_MODEL)
    server = LocalTritonServer(tmp_path / "repo", python=server_python, startup_timeout=4, stop_timeout=5)
    with pytest.raises(ServerError, match="(?s)not ready within 4 s.*log ends:.*slow") as info:
        server.start()
    assert "\n" in str(info.value)  # the log's tail follows
    with pytest.raises(ProcessLookupError):  # the server and its stub are gone
        os.killpg(server.pid, 0)
    assert not list(SHM_DIR.glob(f"{server.shm_prefix}*"))
