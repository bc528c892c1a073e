#!/usr/bin/env bash
# experiments/gpu_world.sh -- the world preset on one GPU, in phases that each fit a short lease and can be
# re-run: a tokenizer stage that used its time slot (or reached its steps) is skipped; one killed
# before that (the lease ended) resumes from its last checkpoint with a new slot; the generator
# phase always continues the run it finds for another GEN_MIN minutes.
#
#   bash experiments/gpu_world.sh check        torch imports and the GPU answers, within two minutes
#   bash experiments/gpu_world.sh bench        generator throughput and MFU, world and paper presets
#   bash experiments/gpu_world.sh tokenizer    world encoder (stage 0), S-VAE (1), PS-VAE (2); recon + probe
#   bash experiments/gpu_world.sh generator    world generator on the PS-VAE latents; mini-GenEval, samples
#   bash experiments/gpu_world.sh table4       Table 4 at the world sizes on the stage-0 encoder above
#
# Every training stops on a clock (--time-limit, minutes) rather than at the preset's steps, so
# the results say how far a given time gets; the step counts reached are in the logs and tables.
# The preset's full lengths (tokenizer 20k/40k/20k steps, generator 60k) need hours, not minutes.
# Environment: TOK_MIN="S0 S1 S2" (minutes per tokenizer stage), GEN_MIN, BUDGET (table4 steps
# per latent; by default what fits T4_SECONDS at the speed measured in stage 2), WORKERS and
# T4_WORKERS (DataLoader workers), RESULTS and RUNS (where tables and runs go), PRESET, EVAL_STEPS,
# MEASURE_N ("recon probe-train probe-test" scenes, default "1000 2000 1000")
# (PRESET=tiny EVAL_STEPS=20 BUDGET=6 RESULTS=/tmp/r: a dry run of the whole script on a CPU,
# which the slow test tests/test_gpu_world.py makes), PYTHON. Results go to RESULTS/{bench,table4,generation}.
set -uo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}                 # the interpreter that has torch (on a lent GPU machine, say
                                     # PYTHON=/opt/torch/.venv/bin/python3)
export PYTHONUNBUFFERED=1
read -r S0 S1 S2 <<< "${TOK_MIN:-1 2.25 2.25}"
P=${PRESET:-world}                   # tiny: a dry run of this script on a CPU, in seconds
EVAL_STEPS=${EVAL_STEPS:-3000}
read -r RECON_N PROBE_TRAIN PROBE_TEST <<< "${MEASURE_N:-1000 2000 1000}"  # scenes for recon and probe
GEN_MIN=${GEN_MIN:-5.5}
BUDGET=${BUDGET:-}                   # table4 steps per latent; empty: what fits T4_SECONDS
T4_SECONDS=${T4_SECONDS:-400}
RECIPES=psvae,svae,rae,pvae,vae,rpiae
WORKERS=${WORKERS:-12}
R=${RESULTS:-results}
RUNS=${RUNS:-runs}
TOK=$RUNS/$P                          # the tokenizer run (stage0.pt, stage1.pt, stage2.pt)
GEN=$RUNS/$P-gen                      # the generator run
T4=$RUNS/table4-$P                    # Table 4's runs
EVAL=$T4/evaluator                   # the rFID evaluator, shared by recon and table4
mkdir -p "$R/bench" "$R/table4" "$R/generation" "$RUNS"

log() { echo "[gpu_world $(date +%H:%M:%S)] $*"; }

evaluator() {  # the rFID evaluator of the world preset ($EVAL_STEPS steps), trained on the CPU
  OMP_NUM_THREADS=4 "$PY" -c "import evaluate as E; E.world_evaluator($EVAL_STEPS, cache='$EVAL', verbose=False)"
}

train() {  # train LOG ARGS...: a training whose full log goes to LOG; its last lines are shown
  local logf=$1; shift
  "$@" >> "$logf" 2>&1; local rc=$?
  tail -n 3 "$logf"
  [ $rc -eq 0 ] || { log "failed ($rc): $*"; exit $rc; }
}

case "${1:-}" in
  check)  # a minute at most: the interpreter has torch, and the GPU answers (run this first on a lease)
    timeout 120 "$PY" -c "
import time; t = time.time()
import torch
print('torch', torch.__version__, f'imported in {time.time() - t:.1f} s', flush=True)
if torch.cuda.is_available():
    x = torch.randn(4096, 4096, device='cuda'); (x @ x).sum().item()
    print('cuda', torch.cuda.get_device_name(), f'answered after {time.time() - t:.1f} s', flush=True)
else:
    print('no GPU visible to torch', flush=True)" || { log "torch/GPU check failed or timed out ($PY)"; exit 1; }
    ;;
  bench)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" experiments/bench.py generator --preset "$P" --json "$R/bench/generator_$P.json"
    [ "$P" = tiny ] || "$PY" experiments/bench.py generator --preset paper --batch-size 64 --json "$R/bench/generator_paper.json"
    ;;
  tokenizer)
    evaluator > "$RUNS/$P-evaluator.log" 2>&1 &  # CPU work beside the GPU training
    trap 'kill $! 2>/dev/null' EXIT              # not left running if a stage fails
    for s in 0 1 2; do
      lim=$(eval echo "\$S$s")
      if [ -f "$TOK/stage$s.done" ]; then log "stage $s done before"; continue; fi
      resume=$([ -f "$TOK/stage$s.pt" ] && echo --resume)
      log "stage $s for $lim min $resume"
      train "$TOK.log" "$PY" tokenizer.py --preset "$P" --stage $s --out "$TOK" --time-limit "$lim" \
        --workers "$WORKERS" $resume
      touch "$TOK/stage$s.done"  # its slot is used: a re-run goes on to the next stage
    done
    wait || exit 1
    "$PY" evaluate.py recon --ckpt "$TOK" --n "$RECON_N" --evaluator-steps "$EVAL_STEPS" --evaluator-cache "$EVAL" \
      --json "$R/table4/tokenizer_${P}_recon.json" | tail -n 1 || exit 1
    "$PY" evaluate.py probe --ckpt "$TOK" --n-train "$PROBE_TRAIN" --n-test "$PROBE_TEST" --json "$R/table4/tokenizer_${P}_probe.json" \
      | tail -n 1 || exit 1
    ;;
  generator)
    resume=$([ -f "$GEN/generator.pt" ] && echo --resume)
    log "generator for $GEN_MIN min $resume"
    train "$GEN.log" "$PY" generator.py --preset "$P" --tokenizer "$TOK" --out "$GEN" --ema 0.999 \
      --time-limit "$GEN_MIN" --workers "$WORKERS" --cache "$RUNS/cache" $resume
    cp "$GEN/samples.png" "$R/generation/samples_${P}.png" || exit 1
    "$PY" evaluate.py geneval --ckpt "$GEN" --preset "$P" --json "$R/generation/geneval_$P.json" | tail -n 1 || exit 1
    "$PY" evaluate.py geneval --ckpt "$GEN" --preset "$P" --baseline real \
      --json "$R/generation/geneval_${P}_baseline_real.json" | tail -n 1 || exit 1
    ;;
  table4)  # the six latents of Table 4 (no channel sweep), 3 trainings at a time on the GPU
    [ -f "$EVAL/world_w16_s${EVAL_STEPS}_seed0.pt" ] || evaluator || exit 1
    if [ -z "$BUDGET" ]; then  # the budget that fits T4_SECONDS at the speed stage 2 measured above:
      # 6 latents, 3 at a time, each at >= a third of one training's speed: 6 B / speed seconds,
      # plus ~2 minutes of start-ups and measurements; at least 3 (RPiAE's three stages)
      BUDGET=$("$PY" -c "
import json, statistics, sys
batch = json.load(open('$TOK/config.json'))['stage2']['batch_size']
r = [x['samples_per_s'] for x in map(json.loads, open('$TOK/metrics.jsonl')) if x.get('stage') == 2 and 'samples_per_s' in x]
if not r:
    sys.exit('table4: no stage-2 speed in $TOK/metrics.jsonl to size the budget by; run the tokenizer phase or set BUDGET')
b = statistics.median(r) / batch * ($T4_SECONDS - 120) / 6
print(max(3, int(b // 100 * 100 if b >= 100 else b)))") || exit 1
      log "budget $BUDGET steps per latent (T4_SECONDS=$T4_SECONDS)"
    fi
    "$PY" evaluate.py table4 --preset "$P" --runs "$T4" --stage0 "$TOK/stage0.pt" --recipes "$RECIPES" \
      --budget "$BUDGET" --jobs 3 --workers "${T4_WORKERS:-4}" --results "$R/table4"
    ;;
  pack)  # everything but the checkpoints, into one archive (a lease gives files back, not folders)
    tar czf "${2:?pack needs an archive path}" "$R" "$RUNS"/$P*.log \
      $(find "$TOK" "$GEN" "$T4" -name '*.json*' -o -name '*.png' -o -name '*.log' 2>/dev/null)
    ;;
  *)
    echo "usage: bash experiments/gpu_world.sh check|bench|tokenizer|generator|table4|pack ARCHIVE" >&2; exit 2 ;;
esac
