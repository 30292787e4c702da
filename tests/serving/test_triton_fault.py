"""Faults against a real Triton server of its own (short-lived, the whole-clip model only): a stuck server, a killed
model process and its recovery, a stopped server. Every client error comes within its timeout, never a hang; the
server leaves no process or shared-memory segment behind.

The tests run in file order on one server: stuck (SIGSTOP/SIGCONT), stub killed then recovered, server stopped.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from conftest import PROTOCOLS, assert_same_outputs, base_url, write_python_repository

import runtime
from benchmarks.triton_server import SHM_DIR, LocalTritonServer
from runtime.__main__ import main as runtime_main
from runtime.errors import RemoteServerError

MODEL = "cnn_bilstm"
X = np.random.default_rng(11).standard_normal((2, 3, 3, 16, 16)).astype(np.float32)
LENGTHS = np.array([3, 2])


@pytest.fixture(scope="module")
def fault_server(server_python, tiny_export, tmp_path_factory):
    repo = write_python_repository(tiny_export, tmp_path_factory.mktemp("triton-fault") / "repo", stream=False)
    server = LocalTritonServer(repo, python=server_python, startup_timeout=180).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def runners(fault_server):
    """One runner per protocol, made while the server is healthy (short timeout)."""
    made = {p: runtime.load(f"{base_url(fault_server, p)}/{MODEL}", timeout=5) for p in PROTOCOLS}
    yield made
    for r in made.values():
        r.deactivate()


def _ping(server, protocol: str = "grpc", timeout: float = 10) -> int:
    return runtime_main(["ping", f"{base_url(server, protocol)}/{MODEL}", "--timeout", str(timeout)])


def _each_runner_fails(runners, match: str) -> dict:
    """Each runner's next call raises a RemoteServerError matching ``match`` within its 5 s timeout (3 s of slack);
    returns the seconds each took, by protocol."""
    took = {}
    for protocol, r in runners.items():
        started = time.monotonic()
        with pytest.raises(RemoteServerError, match=match):
            r.infer(X, LENGTHS)
        took[protocol] = time.monotonic() - started
        assert took[protocol] < 5 + 3, protocol
    return took


def test_stuck_server_times_out(fault_server, runners, local_model):
    """A server that stops answering (SIGSTOP) gives a RemoteServerError within the runner's timeout (5 s)."""
    for r in runners.values():
        r.infer(X, LENGTHS)  # connected and warm
    os.kill(fault_server.pid, signal.SIGSTOP)
    try:
        for protocol, took in _each_runner_fails(runners, "no answer within the timeout of 5 s").items():
            print(f"\nstuck server: {protocol} timed out after {took:.1f} s")
    finally:
        os.kill(fault_server.pid, signal.SIGCONT)
    for r in runners.values():
        assert_same_outputs(r.infer(X, LENGTHS), local_model.infer(X, LENGTHS), LENGTHS)


def test_killed_model_process_errors_then_unload_load_recovers(fault_server, runners, local_model, capsys):
    import tritonclient.http as httpclient

    stubs = fault_server.stub_pids(MODEL)
    assert len(stubs) == 1
    os.kill(stubs[0], signal.SIGKILL)
    took = _each_runner_fails(runners, "not healthy.*unload and load")
    assert fault_server.is_ready()  # Triton still says ready (known upstream): only an inference tells
    capsys.readouterr()
    assert _ping(fault_server) == 1
    assert "not healthy" in capsys.readouterr().err
    # The recovery docs/runtime.md gives: unload, then load the model.
    started = time.monotonic()
    client = httpclient.InferenceServerClient(fault_server.http_url.split("://", 1)[1], network_timeout=60)
    client.unload_model(MODEL)
    with pytest.raises(RemoteServerError, match="not loaded on the server"):  # between the two steps
        runners["grpc"].infer(X, LENGTHS)
    client.load_model(MODEL)
    client.close()
    with capsys.disabled():
        print(f"\nafter the stub's SIGKILL, errors came in {', '.join(f'{p} {t:.1f} s' for p, t in took.items())}; "
              f"unload + load took {time.monotonic() - started:.1f} s")
    assert _ping(fault_server, "http") == 0 and _ping(fault_server, "grpc") == 0
    assert fault_server.stub_pids(MODEL) and fault_server.stub_pids(MODEL) != stubs
    for r in runners.values():
        assert_same_outputs(r.infer(X, LENGTHS), local_model.infer(X, LENGTHS), LENGTHS)


def test_stopped_server_errors_within_the_timeout_and_leaves_nothing(fault_server, runners, capsys):
    pgid, prefix = fault_server.pid, fault_server.shm_prefix
    assert list(SHM_DIR.glob(f"{prefix}*"))  # the live stub's segment (and the killed one's, left behind)
    started = time.monotonic()
    fault_server.stop()
    stopped = time.monotonic() - started
    took = _each_runner_fails(runners, "cannot reach the server|no answer within")
    with capsys.disabled():
        print(f"\nserver stopped in {stopped:.1f} s; then errors came in "
              f"{', '.join(f'{p} {t:.2f} s' for p, t in took.items())}")
    with pytest.raises(RemoteServerError, match="cannot reach the server"):
        runtime.load(f"{base_url(fault_server, 'grpc')}/{MODEL}", timeout=5)
    assert _ping(fault_server) == 1
    assert "cannot reach the server" in capsys.readouterr().err
    with pytest.raises(ProcessLookupError):  # no process of the server's group is left (stubs included)
        os.killpg(pgid, 0)
    assert not list(SHM_DIR.glob(f"{prefix}*"))
