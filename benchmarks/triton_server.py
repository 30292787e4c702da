"""Start the ``tritonserver`` binary that the ``nvidia-pytriton`` wheel bundles, on localhost ports.

For tests, benchmarks and CPU nodes: the bundled server (Triton 2.51) has only the ``python`` backend, so it serves
repositories of the ``python`` kind (``python -m export.to_triton SRC --out REPO --kind python``). What it needs
from its Python environment is in :mod:`benchmarks.triton_env`.

    from benchmarks.triton_server import LocalTritonServer, server_unavailable_reason

    if server_unavailable_reason() is None:
        with LocalTritonServer("repo") as server:
            runner = runtime.load(f"{server.grpc_url}/cnn_bilstm")    # or f"{server.http_url}/cnn_bilstm"

CLI (in the foreground until Ctrl-C or SIGTERM; free ports unless given)::

    python -m benchmarks.triton_server triton_repo --http-port 8000 --grpc-port 8001 --metrics-port 8002

Models are loaded in explicit model-control mode (every model at start-up), so ``unload`` + ``load`` works: Triton
does not restart a python model's stub process that died, and that is the recovery (see docs/runtime.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
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
from pathlib import Path
from typing import Optional

from benchmarks.triton_env import (
    SERVER_PYTHON_ENV,
    ServerEnvironment,
    ServerError,
    find_server_environment,
    startup_cause,
)

logger = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
# Python-backend shared-memory segments are named PREFIX + instance suffix; each server gets a prefix of its own
# (still under the default's name), so the segments a killed stub leaves behind are told apart from other servers'.
SHM_PREFIX = "triton_python_backend_shm_region_"


def default_python() -> str:
    """The server's interpreter: ``$TRITON_SERVER_PYTHON`` when set, else this one."""
    return os.environ.get(SERVER_PYTHON_ENV) or sys.executable


def server_unavailable_reason(python: Optional[str] = None) -> Optional[str]:
    """None when the bundled server can run here with ``python``'s environment, else one line saying why."""
    try:
        find_server_environment(python or default_python())
    except ServerError as e:
        return str(e)
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the server binds it a moment later; a lost race is retried at start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalTritonServer:
    """The bundled ``tritonserver`` serving ``repository`` on localhost ports, as a context manager.

    Args:
        repository (str | PathLike): a Triton model repository (every model in it is loaded at start).
        python (str | None): the interpreter of the server's environment (``nvidia-pytriton``, numpy, onnxruntime
            and this package); None uses ``$TRITON_SERVER_PYTHON``, else this interpreter. Defaults to None.
        startup_timeout (float): seconds to wait for readiness (models loaded) before giving up. Defaults to 60.
        log_file (str | PathLike | None): where the server writes its log; None keeps it in a temporary folder
            removed at :meth:`stop`. Defaults to None.
        stop_timeout (float): seconds :meth:`stop` waits after SIGTERM before it kills. Defaults to 15.
        http_port, grpc_port, metrics_port (int | None): the ports to bind; None: a free one. Defaults to None.

    Attributes:
        http_url (str): ``"http://127.0.0.1:PORT"``; ``grpc_url`` ``"grpc://127.0.0.1:PORT"`` (both as
            ``runtime.load`` takes them, with ``/MODEL`` appended); ``grpc_address`` ``"127.0.0.1:PORT"`` (as
            ``tritonclient.grpc`` takes it); ``metrics_url`` ``"http://127.0.0.1:PORT/metrics"``; ``pid`` the
            server's process id; ``served_repository`` the path Triton is given (``repository``, or a link to it
            where its path would break the python backend). All are None until :meth:`start`.
    """

    def __init__(self, repository, *, python: Optional[str] = None, startup_timeout: float = 60.0,
                 log_file=None, stop_timeout: float = 15.0, http_port: Optional[int] = None,
                 grpc_port: Optional[int] = None, metrics_port: Optional[int] = None) -> None:
        self.repository = Path(repository).resolve()
        if not (self.repository.is_dir()):
            raise ServerError(f"model repository {self.repository} is not a folder")
        self.python = python
        self.startup_timeout = float(startup_timeout)
        self.stop_timeout = float(stop_timeout)
        self.log_file = Path(log_file) if log_file is not None else None
        self.http_url = self.grpc_url = self.grpc_address = self.metrics_url = None
        self.ports = (http_port, grpc_port, metrics_port)
        self.http_port = self.grpc_port = self.metrics_port = None
        self.served_repository = self.pid = None
        self.shm_prefix = None
        self._proc = None
        self._tmp = None
        self._log_path = None

    # --- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> "LocalTritonServer":
        """Start the server and wait until it and every model are ready.

        Raises:
            ServerError: the bundled server cannot run here, it exited, or it was not ready within
                ``startup_timeout`` (it is stopped then; the message says why, from its log).
        """
        if self._proc is not None:
            return self
        env = find_server_environment(self.python or default_python())
        self._tmp = Path(tempfile.mkdtemp(prefix="triton-server-"))
        try:
            backends = self._stage(env)
            self._log_path = self.log_file or self._tmp / "server.log"
            attempts = 3 if None in self.ports else 1  # a free port taken before the server bound it: pick others
            for attempt in range(attempts):
                self._launch(env, backends)
                try:
                    self._wait_ready()
                    return self
                except ServerError as e:
                    in_use = "already in use" in self.log_tail(40).lower()
                    self._terminate()
                    if not in_use or attempt == attempts - 1:
                        raise e from None
                    logger.info("a port was taken before tritonserver bound it; retrying on other ports")
        except BaseException:
            self.stop()
            raise
        return self

    def _stage(self, env: ServerEnvironment) -> Path:
        """The backend directory, in this server's temporary folder; and the repository path Triton is given.

        The python backend starts each model's stub with a command line it splits at spaces, so a space in the
        repository's path ends in the stub's ``stol`` failure (and a server that waits until its start-up timeout);
        and the stub's Python reads paths as ASCII (``'ascii' codec can't encode``). Such a repository is served
        through a symlink in the temporary folder, whose own path must then be plain.
        """
        if not _plain(str(self._tmp)):
            raise ServerError(f"the bundled server's temporary folder {self._tmp} has a space or a non-ASCII "
                              "character in its path, which its python backend cannot start models from; set TMPDIR "
                              "to a folder whose path is plain ASCII without spaces")
        backends = self._tmp / "backends"
        (backends / "python").mkdir(parents=True)
        for f in env.backend_files.iterdir():
            if f.is_file():
                shutil.copy2(f, backends / "python" / f.name)
        shutil.copy2(env.stub, backends / "python" / env.stub.name)
        self.served_repository = self.repository
        if not _plain(str(self.repository)):
            self.served_repository = self._tmp / "repository"
            self.served_repository.symlink_to(self.repository, target_is_directory=True)
            logger.info("serving %s through %s (its path would break the python backend)", self.repository,
                        self.served_repository)
        return backends

    def _launch(self, env: ServerEnvironment, backends: Path) -> None:
        self.http_port, self.grpc_port, self.metrics_port = (p or free_port() for p in self.ports)
        self.shm_prefix = f"{SHM_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        cmd = [str(env.tritonserver), f"--model-repository={self.served_repository}", f"--backend-directory={backends}",
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
                raise ServerError(f"tritonserver exited with status {code} before it was ready; {self.why()}")
            if self.is_ready():
                logger.info("tritonserver ready: http %s, grpc %s", self.http_url, self.grpc_url)
                return
            if time.monotonic() > deadline:
                raise ServerError(f"tritonserver was not ready within {self.startup_timeout:g} s (a model still "
                                  f"loading, or a stub that cannot start); {self.why()}")
            time.sleep(0.1)

    def is_ready(self, timeout: float = 1.0) -> bool:
        """Whether the server says it and all its models are ready (``/v2/health/ready``). Note that Triton keeps
        saying so after a python model's stub died: send a real inference (``python -m runtime ping``) to know."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=timeout) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Wait for the server to exit (at most ``timeout`` seconds; None: for good); its exit status, or None when it
        still runs or was not started."""
        proc = self._proc
        if proc is None:
            return None
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

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
        return "\n".join(self._log_text().splitlines()[-lines:])

    def why(self) -> str:
        """Why the server is not (or no longer) serving, from its log: see :func:`startup_cause`."""
        where = f" (whole log: {self.log_file})" if self.log_file is not None else ""
        return startup_cause(self._log_text()) + where

    def _log_text(self) -> str:
        try:
            return Path(self._log_path).read_text(encoding="utf-8", errors="replace")
        except (OSError, TypeError):
            return "(no log)"

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
                    model is None or any(a.startswith(f"{self.served_repository}/{model}/".encode()) for a in argv)):
                pids.append(int(proc.name))
        return sorted(pids)

    def __repr__(self) -> str:
        state = f"pid {self.pid}, http {self.http_url}, grpc {self.grpc_url}" if self._proc else "stopped"
        return f"LocalTritonServer({str(self.repository)!r}, {state})"


def _plain(path: str) -> bool:
    """Whether the python backend can start models from ``path``: ASCII, no spaces or shell-special characters."""
    return re.fullmatch(r"[\w./+@:=,~-]+", path, re.ASCII) is not None


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


# --- CLI -------------------------------------------------------------------------------------------------------------


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Serve a model repository with the tritonserver that the nvidia-pytriton wheel bundles (python "
                    "backend only: repositories of `python -m export.to_triton SRC --out REPO --kind python`) on "
                    "127.0.0.1, in the foreground until Ctrl-C or SIGTERM.", add_help=add_help)
    parser.add_argument("repository", help="the model repository (every model in it is loaded at start)")
    for name in ("http", "grpc", "metrics"):
        parser.add_argument(f"--{name}-port", type=int, default=None, help=f"{name} port (default: a free one)")
    parser.add_argument("--python", default=None,
                        help=f"the server environment's interpreter, with nvidia-pytriton, onnxruntime and this "
                             f"package (default: ${SERVER_PYTHON_ENV}, else this one)")
    parser.add_argument("--startup-timeout", type=float, default=120.0,
                        help="seconds to wait for every model to load (default: %(default)s)")
    parser.add_argument("--log-file", default=None,
                        help="write the server's log there (default: a temporary file, removed at exit)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the starter does")
    return parser


def main(argv=None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    for name in ("http_port", "grpc_port", "metrics_port"):
        port = getattr(args, name)
        if port is not None and not 1 <= port <= 65535:
            parser.error(f"--{name.replace('_', '-')} {port} is not a TCP port (1..65535)")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops the server as Ctrl-C does
    try:
        server = LocalTritonServer(args.repository, python=args.python, startup_timeout=args.startup_timeout,
                                   log_file=args.log_file, http_port=args.http_port, grpc_port=args.grpc_port,
                                   metrics_port=args.metrics_port)
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        server.start()
        models = sorted(p.name for p in server.repository.iterdir() if (p / "config.pbtxt").is_file())
        print(f"tritonserver (pid {server.pid}) serving {server.repository}: {', '.join(models)}\n"
              f"  http     {server.http_url}\n  grpc     {server.grpc_url}\n  metrics  {server.metrics_url}\n"
              + (f"  try      python -m runtime ping {server.grpc_url}/{models[0]}\n" if models else "")
              + "Ctrl-C or SIGTERM stops it.", flush=True)
        code = server.wait()
        print(f"error: tritonserver exited with status {code}; {server.why()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping tritonserver", file=sys.stderr, flush=True)
        return 0
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the stop short
            signal.signal(sig, signal.SIG_IGN)
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
