#!/usr/bin/env bash
# Runs on the lent GPU machine (see benchmarks/gpu/README.md).
# Usage: bash benchmarks/gpu/run.sh test|conformance|test+conformance|test+concurrency+conformance|conformance-transformers|concurrency|tp|tp-ray|tp-conformance|ray-tp4|quantization|quantization-pair|quantization-quality
# Expects the wheels installed under /tmp/site (../shared/gpu/make-chunks) and writes results to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
export PYTHONPATH=/tmp/site:$root:$root/plugins/llmkit-vllm/src:$root/plugins/llmkit-transformers/src:$root/conformance/src
export PYTHONUNBUFFERED=1
# No distribution is installed there, so plugins are named explicitly instead of found by entry point.
export LLMKIT_DISABLE_PLUGIN_AUTOLOAD=1 LLMKIT_PLUGINS=llmkit_vllm,llmkit_transformers,llmkit_conformance
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

case "${1:-}" in
  test)
    timeout 560 python3 -m pytest plugins/llmkit-vllm -q -p no:cacheprovider --junitxml="$OUT/vllm-tests.xml" > "$OUT/vllm-tests.txt" 2>&1
    grep -E "passed|failed|^FAILED|^E " "$OUT/vllm-tests.txt" | tail -15
    ;;
  conformance)
    # On a cold machine vLLM's first start can take over 5 minutes (2026-11-26: no log line for 5 min after
    # "Using V2 Model Runner", then a 340 s limit killed it; the retry on the same machine took 198 s in
    # all). So vLLM gets a call of its own; `conformance-transformers` is the reference engine's.
    timeout 570 python3 -m llmkit.cli conformance run -b vllm --out "$OUT/reports" > "$OUT/conformance-vllm.txt" 2>&1
    echo "vllm rc=$?"
    grep -hE "passed,|FAILED|TTFT|TPOT|Long shared|perplexity|\\| (weights|KV|device)" "$OUT/conformance-vllm.txt"
    ;;
  conformance-transformers)
    timeout 400 python3 -m llmkit.cli conformance run -b transformers --out "$OUT/reports" > "$OUT/conformance-transformers.txt" 2>&1
    echo "transformers rc=$?"
    grep -hE "passed,|FAILED|TTFT|TPOT|Long shared|perplexity|\\| (weights|KV|device)" "$OUT/conformance-transformers.txt"
    ;;
  test+conformance)
    # Two GPUs: the adapter's tests on the first, the conformance report on the second, at once.
    (CUDA_VISIBLE_DEVICES=0 timeout 560 python3 -m pytest plugins/llmkit-vllm -q -p no:cacheprovider --junitxml="$OUT/vllm-tests.xml" \
      > "$OUT/vllm-tests.txt" 2>&1; echo "tests rc=$?" >> "$OUT/vllm-tests.txt") &
    (CUDA_VISIBLE_DEVICES=1 timeout 560 python3 -m llmkit.cli conformance run -b vllm --out "$OUT/reports" > "$OUT/conformance-vllm.txt" 2>&1;
      echo "vllm rc=$?" >> "$OUT/conformance-vllm.txt") &
    wait
    grep -E "passed|failed|^FAILED|rc=" "$OUT/vllm-tests.txt" | tail -12
    grep -hE "passed,|FAILED|rc=|TTFT|TPOT|perplexity" "$OUT/conformance-vllm.txt" | tail -8
    ;;
  test+concurrency+conformance)
    # Two GPUs: the adapter's tests on the first; the concurrency benchmark, then the conformance report, on the second.
    (CUDA_VISIBLE_DEVICES=0 timeout 560 python3 -m pytest plugins/llmkit-vllm -q -p no:cacheprovider --junitxml="$OUT/vllm-tests.xml" \
      > "$OUT/vllm-tests.txt" 2>&1; echo "tests rc=$?" >> "$OUT/vllm-tests.txt") &
    (CUDA_VISIBLE_DEVICES=1 timeout 300 python3 benchmarks/concurrency.py --gpu --out "$OUT/concurrency_vllm_gpu.json" > "$OUT/concurrency.log" 2>&1;
      echo "concurrency rc=$?" >> "$OUT/concurrency.log";
      CUDA_VISIBLE_DEVICES=1 timeout 250 python3 -m llmkit.cli conformance run -b vllm --out "$OUT/reports" > "$OUT/conformance-vllm.txt" 2>&1;
      echo "vllm rc=$?" >> "$OUT/conformance-vllm.txt") &
    wait
    grep -E "passed|failed|^FAILED|rc=" "$OUT/vllm-tests.txt" | tail -14
    grep -E "^\||rc=" "$OUT/concurrency.log"
    grep -hE "passed,|FAILED|rc=|TTFT|TPOT|perplexity" "$OUT/conformance-vllm.txt" | tail -8
    ;;
  concurrency)
    CUDA_VISIBLE_DEVICES=0 timeout 560 python3 benchmarks/concurrency.py --gpu --out "$OUT/concurrency_vllm_gpu.json" > "$OUT/concurrency.log" 2>&1
    echo "rc=$?"; grep -E "^\|" "$OUT/concurrency.log"; grep -E "Error|Traceback" "$OUT/concurrency.log" | head -5
    ;;
  tp)
    timeout 570 python3 benchmarks/gpu/tensor_parallel.py --setups tp1,tp2 --out "$OUT/tensor_parallel.json" > "$OUT/tp.log" 2>&1
    echo "rc=$?"; grep -E '^\{' "$OUT/tp.log"; grep -E "Error|Traceback" "$OUT/tp.log" | head -5
    ;;
  tp-ray)
    # SETUPS=tp2,tp2-ray compares the executors in one run; QUICK=1: one run at 64 concurrent (short device time)
    timeout "${LIMIT:-570}" python3 benchmarks/gpu/tensor_parallel.py --setups "${SETUPS:-tp2-ray}" ${QUICK:+--quick} \
      --out "$OUT/tensor_parallel_ray.json" > "$OUT/tp-ray.log" 2>&1
    echo "rc=$?"; grep -E '^\{' "$OUT/tp-ray.log"; grep -E "Error|Traceback" "$OUT/tp-ray.log" | head -5; tail -3 "$OUT/tp-ray.log" | cut -c1-300
    ;;
  tp-conformance)
    # The conformance checks (quality ones left out) on TP=1, TP=2 and TP=2 over Ray, Llama-3-8B shape with dummy
    # weights and SmolLM2's tokenizer; every status must equal TP=1's. Three engine starts: on a cold machine split
    # them, SETUPS=tp1,tp2 then SETUPS=tp2-ray, in two calls. Report names hold "=", which the device does not
    # send back: they travel in a tar.
    RAY_DEDUP_LOGS=0 timeout "${LIMIT:-570}" python3 benchmarks/gpu/tp_conformance.py --setups "${SETUPS:-tp1,tp2,tp2-ray}" \
      --out "$OUT/tp-conformance" > "$OUT/tp-conformance${SETUPS:+-${SETUPS//,/-}}.log" 2>&1
    echo "rc=$?"; grep -hE '^\{|^#   ' "$OUT"/tp-conformance*.log | cut -c1-400
    python3 -m ray.scripts.scripts stop --force > /dev/null 2>&1
    (cd "$OUT" && tar czf tp-conformance${SETUPS:+-${SETUPS//,/-}}.tgz tp-conformance && rm -rf tp-conformance)
    ;;
  ray-tp4)
    # Four GPUs, one call: Ray TP=2 on GPUs 0-1 through vLLM 0.26's older executor (RayDistributedExecutor, Ray
    # compiled graphs: VLLM_USE_RAY_V2_EXECUTOR_BACKEND=0; the default RayExecutorV2 stalled on 2x H100, see
    # DEVELOPERS.md), eager to save start-up time; then TP=4 (mp executor, compiled + graphs) on all four.
    CUDA_VISIBLE_DEVICES=0,1 VLLM_USE_RAY_V2_EXECUTOR_BACKEND=0 RAY_DEDUP_LOGS=0 VLLM_RINGBUFFER_WARNING_INTERVAL=10 \
      timeout "${TP_RAY_LIMIT:-150}" python3 benchmarks/gpu/tensor_parallel.py --setups tp2-ray --quick \
      --engine-options '{"enforce_eager": true}' --out "$OUT/tensor_parallel_ray.json" > "$OUT/tp-ray.log" 2>&1
    echo "ray rc=$?"; grep -E '^\{|^# ' "$OUT/tp-ray.log" | cut -c1-600; tail -3 "$OUT/tp-ray.log" | cut -c1-300
    python3 -m ray.scripts.scripts stop --force > /dev/null 2>&1; pkill -9 -f 'ray::|raylet|gcs_server' 2>/dev/null; sleep 3
    timeout "${TP4_LIMIT:-240}" python3 benchmarks/gpu/tensor_parallel.py --setups tp4 --quick \
      --out "$OUT/tensor_parallel_tp4.json" > "$OUT/tp4.log" 2>&1
    echo "tp4 rc=$?"; grep -E '^\{|^# ' "$OUT/tp4.log" | cut -c1-600; grep -E "Error|Traceback" "$OUT/tp4.log" | head -5
    ;;
  quantization)
    # bf16, load-time fp8 and W4A16 on a Llama-3-8B shape, through llmkit and vllm.LLM (six engine starts; on a cold
    # machine pass PATHS=llmkit, then PATHS=vllm, in two calls).
    timeout 570 python3 benchmarks/gpu/quantization.py --paths "${PATHS:-llmkit,vllm}" --out "$OUT/quantization_vllm${PATHS:+_$PATHS}.json" \
      > "$OUT/quantization.log" 2>&1
    echo "rc=$?"; grep -E '^\{' "$OUT/quantization.log"; grep -E "Error|Traceback" "$OUT/quantization.log" | head -5
    ;;
  quantization-pair)
    # Two GPUs, at once: vllm.LLM directly on the first, llmkit on the second, each through METHODS (default
    # none,fp8,w4a16): three engine starts per GPU instead of six on one. The host's 32 cores are shared.
    for gpu_path in 0:vllm 1:llmkit; do
      gpu=${gpu_path%%:*} path=${gpu_path#*:}
      CUDA_VISIBLE_DEVICES=$gpu timeout "${LIMIT:-570}" python3 benchmarks/gpu/quantization.py --paths "$path" \
        --methods "${METHODS:-none,fp8,w4a16}" --out "$OUT/quantization_vllm_$path.json" > "$OUT/quantization-$path.log" 2>&1 &
    done
    wait
    grep -hE '^\{' "$OUT"/quantization-*.log | cut -c1-400; grep -hE "Error|Traceback" "$OUT"/quantization-*.log | head -8
    ;;
  quantization-quality)
    # SmolLM2 bf16 against load-time fp8: held-out perplexity, greedy agreement, speed (the quantization report).
    timeout 570 python3 -m llmkit.cli conformance quantize -r vllm:none -r vllm:load:fp8 -o vllm:max_model_len=2048 \
      --out "$OUT/reports" > "$OUT/quantization-quality.txt" 2>&1
    echo "rc=$?"; grep -E "^\| (row|vllm)" "$OUT/quantization-quality.txt"
    ;;
  *) echo "usage: run.sh test|conformance|test+conformance|test+concurrency+conformance|conformance-transformers|concurrency|tp|tp-ray|tp-conformance|ray-tp4|quantization|quantization-pair|quantization-quality" >&2; exit 2 ;;
esac
