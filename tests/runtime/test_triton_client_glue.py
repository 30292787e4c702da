"""The remote runner's glue that needs no server: URL parsing, dispatch by URL, cheap imports. Everything that talks
to a server is tested against the real one in tests/serving/."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import modules_loaded_by

import runtime
from benchmarks.triton_server import free_port
from runtime.errors import RemoteServerError, RuntimeInputError
from runtime.triton.client import ModelURL, _allows_ragged_frames, is_remote_url


@pytest.mark.parametrize("url,parsed", [
    ("grpc://triton:9001/cnn_bilstm", ("grpc", "triton:9001", "cnn_bilstm")),
    ("http://10.0.0.2/cnn_bilstm_stream", ("http", "10.0.0.2:8000", "cnn_bilstm_stream")),  # Triton's default ports
    ("GRPC://host/m/", ("grpc", "host:8001", "m")),
    ("grpc://[::1]:8001/m", ("grpc", "[::1]:8001", "m")),
])
def test_model_urls_parse(url, parsed):
    u = ModelURL.parse(url)
    assert (u.scheme, u.address, u.model) == parsed
    assert is_remote_url(url)


@pytest.mark.parametrize("url,message", [
    ("https://host:8000/m", r"TLS URLs \(https://\) are not supported"),
    ("grpcs://host:8001/m", r"TLS URLs \(grpcs://\) are not supported"),
    ("ftp://host/m", "unsupported scheme 'ftp'"),
    ("grpc://host:8001", "is not a model URL"),
    ("grpc://host:8001/m/versions/1", "is not a model URL"),
    ("http://host:8000/m?x=1", "is not a model URL"),
    ("grpc://host:99999/m", "bad port"),
    ("grpc://host:8001/bad name", "model name 'bad name' is not valid"),
])
def test_bad_model_urls_are_refused(url, message):
    with pytest.raises(RuntimeInputError, match=message):
        ModelURL.parse(url)


@pytest.mark.parametrize("url", ["grpcs://triton:8001/cnn_bilstm", "HTTPS://triton/cnn_bilstm_stream"])
def test_tls_urls_are_refused_as_urls_not_taken_for_paths(url):
    """No connection is tried: the URL is refused before tritonclient is imported."""
    assert is_remote_url(url)
    for open_ in (runtime.load, runtime.open_stream):
        with pytest.raises(RuntimeInputError, match=r"TLS URLs \((grpcs|https)://\) are not supported; a served model's "
                                                    r"URL is grpc://HOST:PORT/MODEL"):
            open_(url)
    done = subprocess.run([sys.executable, "-m", "runtime", "info", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "" and len(done.stderr.splitlines()) == 1
    assert "TLS URLs" in done.stderr and "does not exist" not in done.stderr


def test_paths_are_not_urls(tmp_path):
    assert not is_remote_url(str(tmp_path / "model.onnx")) and not is_remote_url(tmp_path) and not is_remote_url(None)
    with pytest.raises(RuntimeInputError, match="does not exist"):  # still a path: the file check answers
        runtime.load("grpcx://host/model.onnx")


def test_load_of_an_unreachable_url_fails_fast():
    port = free_port()  # nothing listens on it
    for scheme in ("http", "grpc"):
        started = time.monotonic()
        with pytest.raises(RemoteServerError, match="cannot reach the server"):
            runtime.load(f"{scheme}://127.0.0.1:{port}/cnn_bilstm", timeout=5)
        assert time.monotonic() - started < 5
    with pytest.raises(RuntimeInputError, match="timeout must be a number of seconds"):
        runtime.load(f"grpc://127.0.0.1:{port}/cnn_bilstm", timeout=0)
    stream_url = f"grpc://127.0.0.1:{port}/cnn_bilstm_stream"
    with pytest.raises(RuntimeInputError, match="device and backend"):
        runtime.open_stream(stream_url, device="cpu")
    with pytest.raises(RuntimeInputError, match=r"unknown options \['providers'\] for a served stream; valid options: "
                                                "timeout"):
        runtime.open_stream(stream_url, providers=["CPUExecutionProvider"])
    with pytest.raises(RemoteServerError, match="cannot reach the server"):
        runtime.open_stream(stream_url, timeout=5)


def test_import_runtime_does_not_import_tritonclient():
    statement = ("import runtime, runtime.triton.client, runtime.triton.remote_stream, benchmarks.triton_server; "
                 "runtime.load; runtime.open_stream; runtime.StreamingClassifier")
    assert modules_loaded_by(statement, ("tritonclient", "grpc", "gevent")) == []


def test_without_tritonclient_ping_says_which_extra_to_install():
    code = ("import sys; sys.modules['tritonclient'] = None; from runtime.__main__ import main; "
            "sys.exit(main(['ping', 'grpc://127.0.0.1:1/cnn_bilstm']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "pip install 'cnn-bilstm-deploy[serve]'" in done.stderr


def test_only_a_config_with_ragged_frames_gets_unpadded_clips():
    ragged = {"name": "m", "input": [{"name": "frames", "allow_ragged_batch": True}, {"name": "lengths"}]}
    assert _allows_ragged_frames(ragged)  # HTTP's JSON
    assert _allows_ragged_frames({"config": ragged})  # gRPC's as_json answer
    # the tensorrt and onnxruntime kinds batch equal shapes only: their clients pad to the time buckets
    assert not _allows_ragged_frames({"name": "m", "input": [{"name": "frames"}, {"name": "lengths"}]})
    assert not _allows_ragged_frames({"input": [{"name": "lengths", "allow_ragged_batch": True}]})
