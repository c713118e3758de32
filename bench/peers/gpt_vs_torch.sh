#!/bin/bash
# gpt_vs_torch.sh - mhub's GPT training step next to PyTorch's, same shape,
# same threads, in one run: bench/bench_gpt (which also times the step's
# GEMM floor) then bench/peers/torch_gpt.py, and the ratio.
#
# Usage: bench/peers/gpt_vs_torch.sh   (needs ./bench/bench_gpt built and
#        /usr/bin/python3 with torch; ~1 min)
# Env:   SHAPE=124m|small BATCH=4 SEQ=64 THREADS=2 STEPS=3
set -eu
SHAPE=${SHAPE:-124m} BATCH=${BATCH:-4} SEQ=${SEQ:-64} THREADS=${THREADS:-2} STEPS=${STEPS:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
[ -x "$ROOT/bench/bench_gpt" ] || { echo "build first: make -j2" >&2; exit 1; }
/usr/bin/python3 -c 'import torch' 2>/dev/null || { echo "needs /usr/bin/python3 with torch (apt install python3-torch)" >&2; exit 1; }
read -r load _ </proc/loadavg
echo "GPT $SHAPE, B=$BATCH T=$SEQ, $THREADS thread(s), load $load"
mhub=$("$ROOT/bench/bench_gpt" --shape "$SHAPE" --batch "$BATCH" --seq "$SEQ" --threads "$THREADS" --steps "$STEPS" --json)
torch=$(/usr/bin/python3 "$ROOT/bench/peers/torch_gpt.py" --shape "$SHAPE" --batch "$BATCH" --seq "$SEQ" --threads "$THREADS" --steps "$STEPS")
echo "mhub:  $mhub"
echo "torch: $torch"
m=$(sed -n 's/.*"ms_per_step":\([0-9.]*\).*/\1/p' <<<"$mhub")
f=$(sed -n 's/.*"gemm_floor_ms":\([0-9.]*\).*/\1/p' <<<"$mhub")
t=$(sed -n 's/.*"median_ms": \([0-9.]*\).*/\1/p' <<<"$torch")
awk -v m="$m" -v f="$f" -v t="$t" 'BEGIN { printf "mhub %.1f ms, torch %.1f ms: torch/mhub = %.2fx; mhub / GEMM floor (%.1f ms) = %.2fx\n", m, t, t / m, f, m / f }'
