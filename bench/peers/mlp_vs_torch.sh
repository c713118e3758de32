#!/bin/bash
# mlp_vs_torch.sh - mhub vs PyTorch on the same MLP training step, on CPU.
#
# For each shape (784-1024-1024-10, then 1024-2048-2048-10 whose gradients
# are 25 MB, over 16 MiB) at global batch 128 it runs
#   mhub-1p     ./mhub train, 1 process, --threads 2
#   mhub-ddp    mpiexec -n 2 ./mhub train, 1 thread per rank (overlapped DDP)
#   torch-1p    torch_ddp.py --world 1, 2 threads
#   torch-ddp   torch_ddp.py --world 2, DDP over gloo, 1 thread per rank
# REPEATS times each, takes each run's median ms/step and reports the median
# of those (the best run's too, as other load on the machine only slows
# runs down), then the ratios torch-ddp/mhub-ddp (target >= 2) and
# mhub-ddp/mhub-1p (target <= 1.1).  torch times WARMUP+STEPS steps and
# drops the first WARMUP; mhub has no warmup flag, so it runs WARMUP+STEPS
# steps and its median covers all of them.
#
# Usage: bench/peers/mlp_vs_torch.sh   (from anywhere; needs ./mhub built;
#        about 4 min on 2 cores, LARGE=0 about 1.5)
# Env:   STEPS=60 WARMUP=10 REPEATS=3 BATCH=128 LARGE=1 (0: skip the big shape)
#        MHUB_DDP_FLAGS="--bucket-size 262144" extra flags for mhub-ddp
# Installs python3-torch with apt when /usr/bin/python3 lacks torch.
set -eu

STEPS=${STEPS:-60} WARMUP=${WARMUP:-10} REPEATS=${REPEATS:-3} BATCH=${BATCH:-128}
LARGE=${LARGE:-1} MHUB_DDP_FLAGS=${MHUB_DDP_FLAGS:-}
PY=/usr/bin/python3 # Debian's torch; the pyenv python3 on PATH has none
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PEER=$ROOT/bench/peers/torch_ddp.py
MHUB=$ROOT/mhub

die() { echo "mlp_vs_torch: $*" >&2; exit 1; }

[ -x "$MHUB" ] || die "$MHUB not found: build it first (cd $ROOT && make -j2)"
command -v mpiexec >/dev/null || die "mpiexec not found"
if ! "$PY" -c 'import torch' 2>/dev/null; then
    echo "installing python3-torch with apt (takes ~60 s, ~830 MB of disk)..."
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-torch >/dev/null ||
        die "apt-get install python3-torch failed (try apt-get update first)"
    "$PY" -c 'import torch' || die "torch still not importable by $PY"
fi

read -r load _ </proc/loadavg
cores=$(nproc)
if awk -v l="$load" -v c="$cores" 'BEGIN { exit !(l > c) }'; then
    echo "warning: load average $load on $cores cores; timings will be noisy" >&2
fi

# run LABEL CMD...: run once, print its median ms/step; show output on failure
run() {
    local label=$1 out ms
    shift
    out=$("$@" 2>&1) || { echo "$out" >&2; die "$label failed: $*"; }
    case $label in
        torch*) ms=$(sed -n 's/.*"median_ms": \([0-9.]*\).*/\1/p' <<<"$out") ;;
        *) ms=$(sed -n 's/.*median \([0-9.]*\) ms\/step.*/\1/p' <<<"$out") ;;
    esac
    [ -n "$ms" ] || { echo "$out" >&2; die "$label: no median in its output"; }
    echo "$ms"
}

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
    END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# bench FEATURES HIDDEN CLASSES: the four configs, a table and the ratios.
# Round-robin (one run of each config per repeat) so that load from other
# processes falls on all configs alike.
bench() {
    local f=$1 h=$2 c=$3 label i
    local mh=(--model mlp --features "$f" --hidden "$h" --classes "$c" --batch "$BATCH"
        --steps $((WARMUP + STEPS)) --log-every 1000000 --eval-samples 0 --quiet)
    local pt=("$PEER" --features "$f" --hidden "$h" --classes "$c" --batch "$BATCH"
        --steps "$STEPS" --warmup "$WARMUP" --json)
    local -A runs=() med=() best=()
    echo
    echo "== MLP $f-${h//,/-}-$c, global batch $BATCH, $REPEATS x ($WARMUP warmup + $STEPS steps)"
    for ((i = 0; i < REPEATS; i++)); do
        runs[mhub-1p]+=" $(run mhub-1p "$MHUB" train "${mh[@]}" --threads 2)"
        # shellcheck disable=SC2086 # MHUB_DDP_FLAGS is a word list
        runs[mhub-ddp]+=" $(run mhub-ddp mpiexec -n 2 "$MHUB" train "${mh[@]}" --threads 1 \
            $MHUB_DDP_FLAGS)"
        runs[torch-1p]+=" $(run torch-1p "$PY" "${pt[@]}" --world 1 --threads 2)"
        runs[torch-ddp]+=" $(run torch-ddp "$PY" "${pt[@]}" --world 2 --threads 1)"
    done
    printf '%-10s %9s %9s %9s  %s\n' config "ms/step" samples/s best "runs (ms/step)"
    for label in mhub-1p mhub-ddp torch-1p torch-ddp; do
        # shellcheck disable=SC2086 # split the list of run medians
        med[$label]=$(median ${runs[$label]})
        # shellcheck disable=SC2086
        best[$label]=$(printf '%s\n' ${runs[$label]} | sort -g | head -n 1)
        printf '%-10s %9.2f %9.0f %9.2f %s\n' $label "${med[$label]}" \
            "$(awk -v m="${med[$label]}" -v b="$BATCH" 'BEGIN { print 1e3 * b / m }')" \
            "${best[$label]}" "${runs[$label]}"
    done
    awk -v t="${med[torch-ddp]}" -v d="${med[mhub-ddp]}" -v s="${med[mhub-1p]}" \
        -v bt="${best[torch-ddp]}" -v bd="${best[mhub-ddp]}" -v bs="${best[mhub-1p]}" 'BEGIN {
        printf "torch-ddp / mhub-ddp = %.2fx (target >= 2x)%s   best runs: %.2fx\n",
            t / d, (t / d >= 2) ? "" : "  MISSED", bt / bd
        printf "mhub-ddp / mhub-1p   = %.2fx (target <= 1.1x)%s   best runs: %.2fx\n",
            d / s, (d / s <= 1.1) ? "" : "  MISSED", bd / bs
    }'
}

echo "mhub vs torch $("$PY" -c 'import torch; print(torch.__version__)'), $cores cores, load $load"
bench 784 1024,1024 10
[ "$LARGE" = 0 ] || bench 1024 2048,2048 10
