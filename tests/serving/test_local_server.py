"""LocalTritonServer's own guarantees: a clear reason where the bundled server cannot run; a clear error (never a
hang) when a model does not become ready, naming the cause from the server's log, with nothing left behind;
repositories at any path; and its CLI, run as a user runs it."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import assert_same_outputs, write_python_repository

import runtime
from benchmarks.triton_env import ServerError
from benchmarks.triton_server import SHM_DIR, LocalTritonServer, free_port, server_unavailable_reason

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
    with pytest.raises(ServerError, match="(?s)not ready within 4 s.*its log ends:.*slow") as info:
        server.start()
    assert "\n" in str(info.value)  # the log's tail follows
    with pytest.raises(ProcessLookupError):  # the server and its stub are gone
        os.killpg(server.pid, 0)
    assert not list(SHM_DIR.glob(f"{server.shm_prefix}*"))


BROKEN_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        raise ValueError("no graph beside model.py")
"""


def test_a_model_that_fails_to_load_is_named_with_its_cause(server_python, tmp_path):
    repo = tmp_path / "repo"
    for name, backend in (("nobackend", "onnxruntime"), ("raises", "python")):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(SLOW_CONFIG.replace('"slow"', f'"{name}"')
                                                  .replace('"python"', f'"{backend}"'))
    (repo / "raises" / "1" / "model.py").write_text(BROKEN_MODEL)
    server = LocalTritonServer(repo, python=server_python, startup_timeout=120, stop_timeout=5)
    with pytest.raises(ServerError) as info:
        server.start()
    message = str(info.value)
    # Triton prints its tables of models, backends and options after the causes: the causes are what is shown
    assert "exited with status 1 before it was ready; its log says:" in message, message
    assert "failed to load 'nobackend' version 1: Invalid argument: unable to find backend library for backend " \
           "'onnxruntime'" in message, message
    assert re.search(r"failed to load 'raises' version 1: Internal: ValueError: no graph beside model\.py \(raised "
                     r"at \S+/raises/1/model\.py\(4\): initialize\)", message), message
    assert "server_version" not in message and "| " not in message


@pytest.mark.parametrize("folder", ["my models", "modèles"])
def test_a_repository_path_with_a_space_or_non_ascii_characters_is_served(server_python, tiny_export, local_model,
                                                                          tmp_path, folder):
    repo = write_python_repository(tiny_export, tmp_path / folder / "repo", stream=False)
    # the python backend cannot start a stub from such a path: served through a plain link, the same models
    with LocalTritonServer(repo, python=server_python, startup_timeout=120) as server:
        assert server.served_repository != repo.resolve() and server.served_repository.resolve() == repo.resolve()
        assert server.stub_pids("cnn_bilstm")
        frames = np.random.default_rng(3).standard_normal((2, 8, 3, 16, 16)).astype(np.float32)
        lengths = np.array([8, 5], np.int32)
        with runtime.load(f"{server.grpc_url}/cnn_bilstm", timeout=30) as runner:
            assert_same_outputs(runner.infer(frames, lengths), local_model.infer(frames, lengths), lengths)
        link = server.served_repository
    assert not link.exists() and repo.is_dir()  # the link went with the server's temporary folder, not the models


def _lines(stream):
    """The lines of ``stream`` in a queue, read by a thread (a blocked read cannot then hang the test)."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def test_cli_serves_in_the_foreground_until_sigterm(server_python, tiny_export, local_model, tmp_path):
    repo = write_python_repository(tiny_export, tmp_path / "repo", stream=False)
    http_port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.triton_server", str(repo), "--python", server_python,
                             "--http-port", str(http_port), "--startup-timeout", "150"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, lines, deadline = [], _lines(proc.stdout), time.monotonic() + 180
        while not out or not out[-1].startswith("Ctrl-C or SIGTERM stops it"):
            out.append(lines.get(timeout=max(1.0, deadline - time.monotonic())))
        text = "".join(out)
        pid = int(re.search(r"tritonserver \(pid (\d+)\) serving .*: cnn_bilstm$", text, re.M).group(1))
        assert f"  http     http://127.0.0.1:{http_port}\n" in text
        grpc_url = re.search(r"^  grpc     (grpc://127\.0\.0\.1:\d+)$", text, re.M).group(1)
        assert f"python -m runtime ping {grpc_url}/cnn_bilstm" in text
        frames = np.random.default_rng(4).standard_normal((1, 6, 3, 16, 16)).astype(np.float32)
        lengths = np.array([6], np.int32)
        with runtime.load(f"{grpc_url}/cnn_bilstm", timeout=30) as runner:
            assert_same_outputs(runner.infer(frames, lengths), local_model.infer(frames, lengths), lengths)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "stopping tritonserver" in proc.stderr.read()
        with pytest.raises(ProcessLookupError):  # the server and its stubs are gone
            os.killpg(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_refuses_a_repository_that_is_not_a_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.triton_server", str(tmp_path / "nothing")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == f"error: model repository {tmp_path / 'nothing'} is not a folder\n"


def test_a_replaced_graph_stops_the_start_with_the_fix(server_python, tiny_export, tmp_path):
    from tests.runtime.test_triton_python_model import _replace_a_weight

    repo = write_python_repository(tiny_export, tmp_path / "repo", stream=False)
    _replace_a_weight(repo / "cnn_bilstm" / "1" / "model.onnx")
    server = LocalTritonServer(repo, python=server_python, startup_timeout=120, stop_timeout=5)
    with pytest.raises(ServerError) as info:
        server.start()
    assert re.search(r"failed to load 'cnn_bilstm' version 1: Internal: RuntimeInputError: \S+/cnn_bilstm/1/model\.onnx "
                     r"is not the graph export_report\.json beside it records .*`python -m export\.to_triton --check "
                     r"\S+` prints the command", str(info.value)), str(info.value)
