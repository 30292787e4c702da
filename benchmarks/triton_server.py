"""Start the ``tritonserver`` binary that the ``nvidia-pytriton`` wheel bundles, on free localhost ports.

For tests, benchmarks and CPU nodes: the bundled server (Triton 2.51) has only the ``python`` backend, so it serves
repositories of the ``python`` kind (``python -m export.to_triton SRC --out REPO --kind python``).

    from benchmarks.triton_server import LocalTritonServer, server_unavailable_reason

    if server_unavailable_reason() is None:
        with LocalTritonServer("repo") as server:
            runner = runtime.load(f"{server.grpc_url}/cnn_bilstm")    # or f"{server.http_url}/cnn_bilstm"

What the bundled binary needs, and why each setting is here:
- the Python backend's files and the stub of the server Python's version in one backend directory (the wheel keeps
  the stubs apart, and without one every python model fails to load);
- the server Python's ``bin/`` first on ``PATH`` (the stub finds its site-packages through ``python3``);
- that Python's ``LIBDIR`` first, then the wheel's ``nvidia_pytriton.libs``, on ``LD_LIBRARY_PATH``: without the libs
  the stub cannot load ``libcudart`` even on a CPU machine and the server hangs in "loading" instead of exiting, so
  readiness is awaited with a deadline; without ``LIBDIR`` first the stub may mix two CPython builds;
- ``PYTHONDONTWRITEBYTECODE=1``, so serving a package from its source tree leaves no ``__pycache__`` in it.

Models are loaded in explicit model-control mode (every model at start-up), so ``unload`` + ``load`` works: Triton
does not restart a python model's stub process that died, and that is the recovery (see docs/runtime.md).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

SERVER_PYTHON_ENV = "TRITON_SERVER_PYTHON"  # the interpreter of the server's environment (`make triton-env`)
SHM_DIR = Path("/dev/shm")
# Python-backend shared-memory segments are named PREFIX + instance suffix; each server gets a prefix of its own
# (still under the default's name), so the segments a killed stub leaves behind are told apart from other servers'.
SHM_PREFIX = "triton_python_backend_shm_region_"
_PROBE = r"""
import importlib.util, json, os, sys, sysconfig
spec = importlib.util.find_spec("pytriton")
found = {m: importlib.util.find_spec(m) is not None for m in ("numpy", "onnxruntime", "runtime")}
print(json.dumps({"pytriton": list(spec.submodule_search_locations)[0] if spec else None, "modules": found,
                  "version": "%d.%d" % sys.version_info[:2], "libdir": sysconfig.get_config_var("LIBDIR"),
                  "bindir": os.path.dirname(sys.executable)}))
"""


class ServerError(RuntimeError):
    """The bundled server cannot start here, or did not become ready (the message holds its log's last lines)."""


@dataclass(frozen=True)
class ServerEnvironment:
    """Where the bundled server's pieces are, for one Python interpreter (see :func:`find_server_environment`)."""

    python: str
    tritonserver: Path
    backend_files: Path  # backends/python: libtriton_python.so, triton_python_backend_utils.py
    stub: Path  # the python_backend_stub of this interpreter's version
    libs: Path  # nvidia_pytriton.libs
    libdir: str  # the interpreter's own LIBDIR
    bindir: str  # its environment's bin/

    def env(self, base: Optional[dict] = None) -> dict:
        """The process environment the server and its stubs need (see the module docstring)."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = os.pathsep.join(p for p in (self.bindir, env.get("PATH", "")) if p)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (self.libdir, str(self.libs),
                                                             env.get("LD_LIBRARY_PATH", "")) if p)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env


def default_python() -> str:
    """The server's interpreter: ``$TRITON_SERVER_PYTHON`` when set, else this one."""
    return os.environ.get(SERVER_PYTHON_ENV) or sys.executable


def find_server_environment(python: Optional[str] = None) -> ServerEnvironment:
    """Locate the bundled server for ``python`` (default :func:`default_python`), without starting it.

    Raises:
        ServerError: not Linux x86-64, no such interpreter, no ``nvidia-pytriton`` in it, a piece of the wheel
            missing, no stub for its Python version, or numpy / onnxruntime / this package missing from it (the
            stub and this package's python models need them). The message is one line.
    """
    python = str(python or default_python())
    if not sys.platform.startswith("linux") or os.uname().machine != "x86_64":
        raise ServerError(f"the bundled tritonserver runs on Linux x86-64 only, not {sys.platform} "
                          f"{os.uname().machine}")
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise ServerError(f"server Python {python} does not exist (create it with `make triton-env`, then set "
                          f"{SERVER_PYTHON_ENV}=.venv-triton/bin/python)")
    try:
        out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True).stdout
        probe = json.loads(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as e:
        raise ServerError(f"cannot ask {python} about its packages: {type(e).__name__}: {e}") from e
    if not probe["pytriton"]:
        raise ServerError(f"nvidia-pytriton is not installed in {python} (`make triton-env` creates .venv-triton with "
                          "it; it pins numpy<2, so keep it out of your main environment)")
    missing = [m for m, ok in probe["modules"].items() if not ok]
    if missing:
        raise ServerError(f"{python} lacks {', '.join(missing)}, which the server's python models need "
                          "(`pip install -e \".[onnx]\"` into it, or `make triton-env`)")
    root = Path(probe["pytriton"]) / "tritonserver"
    env = ServerEnvironment(
        python=python, tritonserver=root / "bin" / "tritonserver", backend_files=root / "backends" / "python",
        stub=root / "python_backend_stubs" / probe["version"] / "triton_python_backend_stub",
        libs=Path(probe["pytriton"]).parent / "nvidia_pytriton.libs", libdir=probe["libdir"] or "",
        bindir=probe["bindir"])
    for what, path in (("tritonserver binary", env.tritonserver), ("nvidia_pytriton.libs folder", env.libs),
                       ("python backend", env.backend_files / "libtriton_python.so")):
        if not path.exists():
            raise ServerError(f"the nvidia-pytriton wheel in {python} has no {what} at {path}; reinstall it")
    if not env.stub.is_file():
        versions = sorted(p.name for p in env.stub.parent.parent.iterdir())
        raise ServerError(f"the nvidia-pytriton wheel in {python} has no python backend stub for Python "
                          f"{probe['version']} (it has {', '.join(versions)})")
    return env


def server_unavailable_reason(python: Optional[str] = None) -> Optional[str]:
    """None when the bundled server can run here with ``python``'s environment, else one line saying why."""
    try:
        find_server_environment(python)
    except ServerError as e:
        return str(e)
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the server binds it a moment later; a lost race is retried at start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalTritonServer:
    """The bundled ``tritonserver`` serving ``repository`` on free localhost ports, as a context manager.

    Args:
        repository (str | PathLike): a Triton model repository (every model in it is loaded at start).
        python (str | None): the interpreter of the server's environment (``nvidia-pytriton``, numpy, onnxruntime
            and this package); None uses ``$TRITON_SERVER_PYTHON``, else this interpreter. Defaults to None.
        startup_timeout (float): seconds to wait for readiness (models loaded) before giving up. Defaults to 60.
        log_file (str | PathLike | None): where the server writes its log; None keeps it in a temporary folder
            removed at :meth:`stop`. Defaults to None.
        stop_timeout (float): seconds :meth:`stop` waits after SIGTERM before it kills. Defaults to 15.

    Attributes:
        http_url (str): ``"http://127.0.0.1:PORT"``; ``grpc_url`` ``"grpc://127.0.0.1:PORT"`` (both as
            ``runtime.load`` takes them, with ``/MODEL`` appended); ``grpc_address`` ``"127.0.0.1:PORT"`` (as
            ``tritonclient.grpc`` takes it); ``metrics_url`` ``"http://127.0.0.1:PORT/metrics"``; ``pid`` the
            server's process id. All are None until :meth:`start`.
    """

    def __init__(self, repository, *, python: Optional[str] = None, startup_timeout: float = 60.0,
                 log_file=None, stop_timeout: float = 15.0) -> None:
        self.repository = Path(repository).resolve()
        if not (self.repository.is_dir()):
            raise ServerError(f"model repository {self.repository} is not a folder")
        self.python = python
        self.startup_timeout = float(startup_timeout)
        self.stop_timeout = float(stop_timeout)
        self.log_file = Path(log_file) if log_file is not None else None
        self.http_url = self.grpc_url = self.grpc_address = self.metrics_url = None
        self.http_port = self.grpc_port = self.metrics_port = None
        self.pid = None
        self.shm_prefix = None
        self._proc = None
        self._tmp = None
        self._log_path = None

    # --- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> "LocalTritonServer":
        """Start the server and wait until it and every model are ready.

        Raises:
            ServerError: the bundled server cannot run here, it exited, or it was not ready within
                ``startup_timeout`` (it is stopped then; the message ends with its log's last lines).
        """
        if self._proc is not None:
            return self
        env = find_server_environment(self.python)
        self._tmp = Path(tempfile.mkdtemp(prefix="triton-server-"))
        try:
            backends = self._tmp / "backends"
            (backends / "python").mkdir(parents=True)
            for f in env.backend_files.iterdir():
                if f.is_file():
                    shutil.copy2(f, backends / "python" / f.name)
            shutil.copy2(env.stub, backends / "python" / env.stub.name)
            self._log_path = self.log_file or self._tmp / "server.log"
            for attempt in range(3):  # a port taken between free_port() and the server's bind: pick others
                self._launch(env, backends)
                try:
                    self._wait_ready()
                    return self
                except ServerError as e:
                    in_use = "already in use" in self.log_tail(40).lower()
                    self._terminate()
                    if not in_use or attempt == 2:
                        raise e from None
                    logger.info("a port was taken before tritonserver bound it; retrying on other ports")
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, env: ServerEnvironment, backends: Path) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.shm_prefix = f"{SHM_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        cmd = [str(env.tritonserver), f"--model-repository={self.repository}", f"--backend-directory={backends}",
               "--model-control-mode=explicit", "--load-model=*",
               "--http-address=127.0.0.1", f"--http-port={self.http_port}",
               "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
               "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
               "--allow-gpu-metrics=false",  # no NVML errors on machines without a GPU
               f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
               # Triton waits this long for in-flight work at SIGTERM (30 s by default, all of it after a stub died)
               f"--exit-timeout-secs={max(1, min(5, int(self.stop_timeout) - 5))}"]
        self._log = open(self._log_path, "ab")
        logger.info("starting %s", " ".join(cmd))
        # A session of its own: stop() can then find and end the stub processes too, whatever happened to the server.
        self._proc = subprocess.Popen(cmd, env=env.env(), stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self._proc.pid
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_address = f"127.0.0.1:{self.grpc_port}"
        self.grpc_url = f"grpc://{self.grpc_address}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ServerError(f"tritonserver exited with status {code} before it was ready; its log ends:\n"
                                  f"{self.log_tail()}")
            if self.is_ready():
                logger.info("tritonserver ready: http %s, grpc %s", self.http_url, self.grpc_url)
                return
            if time.monotonic() > deadline:
                raise ServerError(f"tritonserver was not ready within {self.startup_timeout:g} s (a model still "
                                  f"loading, or a stub that cannot start); its log ends:\n{self.log_tail()}")
            time.sleep(0.1)

    def is_ready(self, timeout: float = 1.0) -> bool:
        """Whether the server says it and all its models are ready (``/v2/health/ready``). Note that Triton keeps
        saying so after a python model's stub died: send a real inference (``python -m runtime ping``) to know."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=timeout) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; then end any process left in its session, remove its own
        shared-memory segments and its temporary folder. A no-op when not started."""
        self._terminate()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    logger.warning("tritonserver (pid %d) did not stop within %g s of SIGTERM; killing it", proc.pid,
                                   self.stop_timeout)
                    proc.kill()
                    proc.wait()
            _kill_session(proc.pid)
            self._log.close()
        if self.shm_prefix:
            for seg in SHM_DIR.glob(f"{self.shm_prefix}*"):
                logger.info("removing shared-memory segment %s left by the server", seg)
                seg.unlink(missing_ok=True)

    def __enter__(self) -> "LocalTritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- inspection ----------------------------------------------------------------------------------------------
    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server's log."""
        try:
            text = Path(self._log_path).read_text(encoding="utf-8", errors="replace")
        except (OSError, TypeError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stub_pids(self, model: Optional[str] = None) -> list:
        """Process ids of the python-backend stubs of this server (those serving ``model`` when given)."""
        if self.pid is None:
            return []
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if os.getpgid(int(proc.name)) != self.pid:
                    continue
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"triton_python_backend_stub") and (
                    model is None or any(a.startswith(f"{self.repository}/{model}/".encode()) for a in argv)):
                pids.append(int(proc.name))
        return sorted(pids)

    def __repr__(self) -> str:
        state = f"pid {self.pid}, http {self.http_url}, grpc {self.grpc_url}" if self._proc else "stopped"
        return f"LocalTritonServer({str(self.repository)!r}, {state})"


def _kill_session(pgid: int) -> None:
    """SIGKILL what is left of the server's process group (stubs outliving a killed server)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
