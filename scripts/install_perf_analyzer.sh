#!/usr/bin/env bash
# Install NVIDIA's perf_analyzer into a virtual environment, as VENV/bin/perf_analyzer (`make triton-env` runs this).
#
# PyPI's `perf-analyzer` package is a placeholder; the real binary ships inside the tritonclient wheels up to 2.60.
# 2.50.0 is pinned: its binary runs on glibc 2.36 (2.60's needs 2.38). It loads the CUDA runtime even on a machine
# without a GPU (from the nvidia-cuda-runtime-cu12 wheel, installed here) and needs libb64.so.0d at run time
# (Debian/Ubuntu: apt-get install libb64-0d; .ci/run installs it where it can). NVIDIA's SDK container
# (nvcr.io/nvidia/tritonserver:<YY.MM>-py3-sdk) has perf_analyzer too.
#
# Usage: scripts/install_perf_analyzer.sh VENV
set -euo pipefail
venv=$(cd "$1" && pwd)
py="$venv/bin/python"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download -q --no-deps --only-binary=:all: tritonclient==2.50.0 -d "$tmp"
"$py" -m pip install -q nvidia-cuda-runtime-cu12==12.9.79
mkdir -p "$venv/libexec"
"$py" - "$tmp" "$venv/libexec/perf_analyzer" <<'EOF'
import glob, shutil, sys, zipfile
(wheel,) = glob.glob(sys.argv[1] + "/tritonclient-2.50.0-*.whl")
with zipfile.ZipFile(wheel) as z, z.open("tritonclient-2.50.0.data/data/bin/perf_analyzer") as src:
    with open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
EOF
chmod +x "$venv/libexec/perf_analyzer"
cudart=$("$py" -c "import importlib.util as u, os; print(os.path.join(list(u.find_spec('nvidia.cuda_runtime').submodule_search_locations)[0], 'lib'))")
cat > "$venv/bin/perf_analyzer" <<EOF
#!/bin/sh
# NVIDIA perf_analyzer (from the tritonclient 2.50.0 wheel) with the CUDA runtime library it loads.
LD_LIBRARY_PATH="$cudart\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$venv/libexec/perf_analyzer" "\$@"
EOF
chmod +x "$venv/bin/perf_analyzer"
if ! "$venv/bin/perf_analyzer" --version >/dev/null 2>&1; then
    echo "NOTE: $venv/bin/perf_analyzer does not run here: $("$venv/bin/perf_analyzer" --version 2>&1 | head -1)" \
         "(Debian/Ubuntu: apt-get install libb64-0d); its tests skip" >&2
fi
