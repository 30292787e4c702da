"""Where the ``tritonserver`` that the ``nvidia-pytriton`` wheel bundles finds its pieces, for one Python interpreter
(the server's environment, ``make triton-env``), and what its processes need:

- the Python backend's files and the stub of the server Python's version in one backend directory (the wheel keeps
  the stubs apart, and without one every python model fails to load);
- the server Python's ``bin/`` first on ``PATH`` (the stub finds its site-packages through ``python3``);
- that Python's ``LIBDIR`` first, then the wheel's ``nvidia_pytriton.libs``, on ``LD_LIBRARY_PATH``: without the libs
  the stub cannot load ``libcudart`` even on a CPU machine and the server hangs in "loading" instead of exiting, so
  readiness is awaited with a deadline; without ``LIBDIR`` first the stub may mix two CPython builds;
- ``PYTHONDONTWRITEBYTECODE=1``, so serving a package from its source tree leaves no ``__pycache__`` in it.

It also reads the server's log for why it did not start (:func:`startup_cause`).
:mod:`benchmarks.triton_server` starts the server with them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SERVER_PYTHON_ENV = "TRITON_SERVER_PYTHON"  # the interpreter of the server's environment (`make triton-env`)
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


def find_server_environment(python: str) -> ServerEnvironment:
    """Locate the bundled server for the interpreter ``python``, without starting it.

    Raises:
        ServerError: not Linux x86-64, no such interpreter, no ``nvidia-pytriton`` in it, a piece of the wheel
            missing, no stub for its Python version, or numpy / onnxruntime / this package missing from it (the
            stub and this package's python models need them). The message is one line.
    """
    python = str(python)
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


# A tritonserver log line: severity, date, time, thread, source:line] then the message, quoted with escaped newlines.
_LOG_PREFIX = re.compile(r'^[IWEF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] +"?')
_STUB_FAILURE = re.compile(r"Failed to initialize Python stub|terminate called|what\(\)|Stub process|^error: ")


def startup_cause(log_text: str, lines: int = 20) -> str:
    """Why the server is not serving, from its log. Triton prints its tables of models, backends and options after
    the cause, so the log's last lines rarely show it. In order: each model's "failed to load ..." (the stub's
    exception in it, and where that was raised); else the stub's own failures (an exception before the model, a C++
    ``terminate``); else the log's last lines without Triton's tables.

    Returns:
        str: ``"its log says:"`` or ``"its log ends:"``, then the lines.
    """
    messages = [_LOG_PREFIX.sub("", line).rstrip('"') for line in log_text.splitlines()]
    causes = [_cause(m) for m in messages if re.match(r"failed to load '[^']+' version ", m)]
    causes = causes or [_cause(m) for m in messages if _STUB_FAILURE.search(m)]
    if causes:
        return "its log says:\n  " + "\n  ".join(dict.fromkeys(causes))
    plain = [line for line in log_text.splitlines() if line.strip() and not line.startswith(("|", "+"))]
    return "its log ends:\n" + "\n".join(plain[-lines:])


def _cause(message: str) -> str:
    """A log message's first line, and where a Python exception in it was raised (the first frame after "At:")."""
    first, _, rest = message.replace("\\n", "\n").replace('\\"', '"').partition("\n")
    frames = rest.split("At:\n", 1)[1].split("\n") if "At:\n" in rest else []
    return first.strip() + (f" (raised at {frames[0].strip()})" if frames and frames[0].strip() else "")
