#!/usr/bin/env bash
# tools/bench/step.py on a GPU machine with JAX and PyTorch and no TensorFlow: multiseg against
# the same network written by hand in plain Keras and in plain PyTorch (eager and
# torch.compile), KERAS_BACKEND=jax, float32 and bfloat16, 256x256 and 512x512, batch 8.
#
#   tools/bench/gpu.sh [OUT_DIR]     # default $OUT, else bench-gpu: step-<size>-<precision>.json
#                                    # per run, and gpu.log with every table
#
# Then tools/bench/pipeline.py at the largest size: whether the batch threads keep the GPU fed;
# tools/bench/dispatch.py: what the host's not waiting for the device after each step saves;
# and tools/bench/startup.py twice, on an empty and on a filled JAX compilation cache.
#
# Environment: BENCH_SIZES ("256 512"), BENCH_PRECISIONS ("float32 bfloat16"), BENCH_BATCH (8),
# BENCH_STEPS (20), BENCH_REPEATS (3), BENCH_WARMUP (3), BENCH_CONTENDERS (step.py's default;
# e.g. multiseg,multiseg-model,keras to split a gap), BENCH_PER_CALL (8: a race at that many
# steps per call, train.steps_per_execution; 0 skips), BENCH_DISPATCH (2 repetitions of
# dispatch.py, multiseg's callback list against Keras's; 0 skips), BENCH_PIPELINE and
# BENCH_STARTUP (1; 0 skips the pipeline or the start-up runs); BENCH_QUICK=1 for tiny sizes that
# check on any machine that it runs. PYTHON picks the interpreter (default python3). Keras is
# not on that machine: wheels in .whl/ at the repository root (docs/performance.md says which)
# are installed under /tmp/site first. One failed run does not stop the others; the exit
# status says whether any failed.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-${OUT:-bench-gpu}}"
python="${PYTHON:-python3}"
mkdir -p "$out"
log="$out/gpu.log"
if ls "$root"/.whl/*.whl >/dev/null 2>&1 && ! "$python" -c "import keras" 2>/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$root"/.whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
if [[ "${BENCH_QUICK:-0}" == 1 ]]; then
  sizes="${BENCH_SIZES:-32}"; batch="${BENCH_BATCH:-2}"; steps="${BENCH_STEPS:-2}"
  repeats="${BENCH_REPEATS:-2}"; warmup="${BENCH_WARMUP:-1}"
else
  sizes="${BENCH_SIZES:-256 512}"; batch="${BENCH_BATCH:-8}"; steps="${BENCH_STEPS:-20}"
  repeats="${BENCH_REPEATS:-3}"; warmup="${BENCH_WARMUP:-3}"
fi
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  "$python" -c "import sys, jax, keras; print(sys.version.split()[0], 'jax', jax.__version__,
jax.devices(), 'keras', keras.__version__)"; } 2>&1 | tee -a "$log"
status=0
started=$SECONDS
for precision in ${BENCH_PRECISIONS:-float32 bfloat16}; do
  for size in $sizes; do
    name="step-${size}-${precision}"
    extra=()
    # A snapshot's cost hardly depends on the precision: measured in float32 only.
    [[ "$precision" == bfloat16 ]] && extra=(--no-gradflow)
    [[ -n "${BENCH_CONTENDERS:-}" ]] && extra+=(--contenders "$BENCH_CONTENDERS")
    echo "== $name ($((SECONDS - started)) s so far)" | tee -a "$log"
    "$python" "$here/step.py" --size "$size" --batch "$batch" --steps "$steps" \
      --repeats "$repeats" --warmup "$warmup" --precision "$precision" "${extra[@]}" \
      --json "$out/$name.json" 2>&1 | tee -a "$log" || status=1
  done
done
# Several steps per call (train.steps_per_execution) at the smallest size, where the host's
# work between steps weighs most: multiseg and the hand-written Keras model, both at
# BENCH_PER_CALL steps per call (default 8; 0 skips), float32 only.
per_call="${BENCH_PER_CALL:-8}"
if [[ "$per_call" -gt 1 && " ${BENCH_PRECISIONS:-float32 bfloat16} " == *" float32 "* ]]; then
  smallest="${sizes%% *}"
  name="step-${smallest}-float32-per-call-${per_call}"
  echo "== $name ($((SECONDS - started)) s so far)" | tee -a "$log"
  "$python" "$here/step.py" --size "$smallest" --batch "$batch"     --steps "$(( (steps + per_call - 1) / per_call * per_call ))" --repeats "$repeats"     --warmup "$per_call" --steps-per-execution "$per_call" --no-gradflow     --contenders multiseg,keras --json "$out/$name.json" 2>&1 | tee -a "$log" || status=1
fi
# The input pipeline alone against what training consumes, at the largest size (float32 only,
# as the start-up runs below).
if [[ "${BENCH_PIPELINE:-1}" == 1 && " ${BENCH_PRECISIONS:-float32 bfloat16} " == *" float32 "* ]]; then
  largest="${sizes##* }"
  echo "== pipeline, ${largest}x${largest}, batch $batch ($((SECONDS - started)) s so far)" \
    | tee -a "$log"
  "$python" "$here/pipeline.py" "$root/recipes/shapes.yaml" --epochs 2 --steps "$((10 * steps))" \
    --set "data.image_size=[$largest, $largest]" --set "train.batch_size=$batch" \
    --set "data.train=$((8 * batch))" --set "data.val=$batch" 2>&1 | tee -a "$log" || status=1
fi
# multiseg's callback list against Keras's (tools/bench/dispatch.py): the default recipe, one
# epoch each in new processes, BENCH_DISPATCH repetitions (default 2; 0 skips), float32 only.
dispatch="${BENCH_DISPATCH:-2}"
if [[ "$dispatch" -gt 0 && " ${BENCH_PRECISIONS:-float32 bfloat16} " == *" float32 "* ]]; then
  shrink=()
  [[ "${BENCH_QUICK:-0}" == 1 ]] && shrink=(--set "data.image_size=[32, 32]" --set data.train=64
                                         --warmup 1)
  echo "== dispatch, the default recipe ($((SECONDS - started)) s so far)" | tee -a "$log"
  "$python" "$here/dispatch.py" "${shrink[@]}" --repeats "$dispatch" \
    --json "$out/dispatch.json" 2>&1 | tee -a "$log" || status=1
fi
# Start-up with JAX's compilation cache: a first run fills an empty cache, a second loads it
# (startup-first.json, startup-second.json). With float32 only, so that a run split by
# precision does it once; BENCH_STARTUP=0 skips it.
if [[ "${BENCH_STARTUP:-1}" == 1 && " ${BENCH_PRECISIONS:-float32 bfloat16} " == *" float32 "* ]]; then
  cache="$(mktemp -d)"
  shrink=()
  [[ "${BENCH_QUICK:-0}" == 1 ]] && shrink=(--set "data.image_size=[32, 32]" --set data.train=80)
  for run in first second; do
    echo "== startup, $run run, compilation cache $cache ($((SECONDS - started)) s so far)" \
      | tee -a "$log"
    MULTISEG_COMPILE_CACHE="$cache" "$python" "$here/startup.py" "${shrink[@]}" \
      --json "$out/startup-$run.json" 2>&1 | tee -a "$log" || status=1
  done
  rm -rf "$cache"
fi
echo "== done in $((SECONDS - started)) s; results in $out" | tee -a "$log"
exit "$status"
