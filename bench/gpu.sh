#!/usr/bin/env bash
# bench/gpu.sh - the CUDA backend on one GPU, in one go (under 6 minutes):
#   1. build with --with-cuda, or, where the build's packages are missing
#      (MPICH, OpenBLAS, cJSON, Check), unpack MHUB_GPU_PACK, the archive
#      bench/gpu-pack.sh made on a machine that has them;
#   2. the conformance suite on the GPU (every backend op against the CPU
#      backend, and the PyTorch golden GPT files), and the NCCL
#      communicator's suite;
#   3. GPT-2 124M training steps, sequence 1024, bf16 GEMMs: ms/step,
#      tokens/s and model FLOP utilisation against the card's dense bf16
#      peak (and the same in tf32 and f32, and each attention path, for
#      comparison), and where a bf16 step's time goes, op by op
#      (bench_gpt --profile: each op waited for; ms and TFLOP/s per op);
#   4. all-reduce bus bandwidth through mhub_comm over NCCL;
#   5. with --sanitize, the conformance suite again under compute-sanitizer:
#      memcheck with every tensor its own cudaMalloc (MHUB_CUDA_ALLOC=each,
#      so an access past a tensor's end is caught, not just past the pool's),
#      racecheck (shared-memory hazards), synccheck (barriers) and
#      initcheck (reads of memory never written), each at most
#      MHUB_GPU_SANITIZE_S seconds (default 60, so that the whole run fits
#      one 10-minute device call).
# Prints one table at the end; the whole log also goes to $OUT/gpu.log
# when OUT is set (the device tool's output folder).
#
#   bench/gpu.sh [--quick] [--sanitize]
#     --quick: conformance only (with --sanitize: and the checkers)
set -uo pipefail
cd "$(dirname "$0")/.."
quick=0 sanitize=0
for arg in "$@"; do
    case $arg in
        --quick) quick=1 ;;
        --sanitize) sanitize=1 ;;
        *) echo "gpu.sh: unknown option '$arg' (expected --quick or --sanitize)"; exit 2 ;;
    esac
done
log=${OUT:-/tmp}/gpu.log
exec > >(tee "$log") 2>&1
start=$(date +%s)
say() { printf '\n== %s (%ds)\n' "$*" $(($(date +%s) - start)); }
results=()
record() { results+=("$(printf '%-44s %s' "$1" "$2")"); }

nvidia-smi -L || { echo "gpu.sh: no GPU (nvidia-smi -L failed)"; exit 1; }
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
# dense bf16 peak (TFLOP/s, no sparsity) by card, from NVIDIA's data sheets
case $gpu in
    *H100*PCIe*) peak=756 ;;
    *H100*|*H200*|*GH200*) peak=989 ;;
    *A100*) peak=312 ;;
    *L40S*) peak=362 ;;
    *) peak=0 ;;
esac
echo "GPU: $gpu; dense bf16 peak taken as ${peak} TFLOP/s (0 = unknown card: no MFU)"

# ---- 1. build ----
if [ -n "${MHUB_GPU_PACK:-}" ]; then
    say "unpack the prebuilt programs of $MHUB_GPU_PACK"
    rm -rf /tmp/gpu-pack && tar xJf "$MHUB_GPU_PACK" -C /tmp || exit 1
    build=/tmp/gpu-pack
    libs=$build/deps
    # cuBLAS and NCCL come from this machine: the toolkit, or the nvidia-*
    # wheels of its Python (the toolkit has no NCCL; PyTorch's wheels do)
    roots="/usr/local/cuda*/lib* /usr/lib/x86_64-linux-gnu /usr/local/lib /usr/lib/python3*"
    roots="$roots $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null) /opt"
    for lib in libcublas.so.13 libnccl.so.2 libcudart.so.13; do
        # shellcheck disable=SC2086
        dir=$(find $roots -name "$lib" -printf '%h\n' 2>/dev/null | head -1)
        [ -n "$dir" ] && libs="$libs:$dir" && echo "$lib from $dir"
    done
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    ldd "$build/tests/test_conformance" | grep 'not found' && { echo "gpu.sh: libraries missing"; exit 1; }
else
    say "build with --with-cuda"
    archs=${CUDA_ARCHS:-}
    if [ -z "$archs" ]; then
        cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')
        archs=${cc:-"80 90"}
    fi
    { autoreconf -fi && ./configure --with-cuda CUDA_ARCHS="$archs" && make -j"$(nproc)"; } \
        >"${OUT:-/tmp}/build.log" 2>&1 ||
        { tail -40 "${OUT:-/tmp}/build.log"; echo "gpu.sh: the build failed"; exit 1; }
    make -j"$(nproc)" tests/test_conformance tests/test_nccl_comm bench/bench_gpt \
        bench/bench_collectives >/dev/null 2>&1 || { echo "gpu.sh: building the tests failed"; exit 1; }
    build=.
fi

# ---- 2. conformance ----
say "conformance suite on cuda"
if MHUB_TEST_BACKEND=cuda top_srcdir=. timeout 180 "$build/tests/test_conformance"; then
    record "conformance (cuda vs cpu, golden GPT)" "PASS"
else
    record "conformance (cuda vs cpu, golden GPT)" "FAIL (rc $?)"
fi
if [ -x "$build/tests/test_nccl_comm" ]; then
    say "NCCL communicator suite (1 rank)"
    if timeout 120 "$build/tests/test_nccl_comm"; then rc=PASS; else rc="FAIL (rc $?)"; fi
    record "nccl communicator suite" "$rc"
fi
# ---- 5. compute-sanitizer (run last, after the figures, when asked) ----
sanitize_conformance() {
    local tool limit=${MHUB_GPU_SANITIZE_S:-60}
    if ! command -v compute-sanitizer >/dev/null; then
        record "compute-sanitizer" "not on this machine"
        return
    fi
    for tool in memcheck racecheck synccheck initcheck; do
        say "conformance under compute-sanitizer --tool $tool"
        local each=pool
        case $tool in memcheck | initcheck) each=each ;; esac
        MHUB_CUDA_ALLOC=$each MHUB_TEST_BACKEND=cuda top_srcdir=. timeout "$limit" \
            compute-sanitizer --tool "$tool" --error-exitcode 86 --print-limit 20 \
            --report-api-errors no \
            "$build/tests/test_conformance"
        local status=$? rc
        case $status in
            0) rc=PASS ;;
            77) rc="SKIP (the suite found no usable GPU)" ;;
            86) rc="FAIL: $tool reported errors (see the log)" ;;
            124) rc="TIMEOUT after $limit s (no error reported before)" ;;
            *) rc="FAIL (rc $status)" ;;
        esac
        record "compute-sanitizer $tool (conformance)" "$rc"
    done
}

if [ $quick = 1 ]; then
    [ $sanitize = 1 ] && sanitize_conformance
    printf '\n'
    printf '%s\n' "${results[@]}"
    exit 0
fi

# ---- 3. GPT-2 124M training ----
for matmul in bf16 tf32 f32; do
    say "GPT-2 124M, seq 1024, batch 16, $matmul GEMMs"
    line=$(timeout 150 "$build/bench/bench_gpt" --backend cuda --shape 124m --seq 1024 \
        --batch 16 --steps 10 --matmul "$matmul" --peak-tflops "$peak" --json)
    echo "$line"
    ms=$(printf '%s' "$line" | sed -n 's/.*"ms_per_step":\([0-9.]*\).*/\1/p')
    tps=$(printf '%s' "$line" | sed -n 's/.*"tokens_per_s":\([0-9.]*\).*/\1/p')
    mfu=$(printf '%s' "$line" | sed -n 's/.*"mfu":\([-0-9.]*\).*/\1/p')
    if [ -n "$ms" ]; then
        record "GPT-2 124M T=1024 B=16 $matmul" \
            "$ms ms/step, $tps tokens/s, MFU $(awk -v m="$mfu" 'BEGIN{printf "%.1f%%", 100*m}') (vs bf16 peak)"
    else
        record "GPT-2 124M T=1024 B=16 $matmul" "FAILED"
    fi
done

# the attention paths side by side, with bf16 GEMMs (the default picks wmma)
for path in wmma gemm tiled; do
    say "GPT-2 124M, bf16 GEMMs, attention path $path"
    line=$(MHUB_CUDA_ATTENTION=$path timeout 150 "$build/bench/bench_gpt" --backend cuda \
        --shape 124m --seq 1024 --batch 16 --steps 10 --matmul bf16 --peak-tflops "$peak" --json)
    echo "$line"
    ms=$(printf '%s' "$line" | sed -n 's/.*"ms_per_step":\([0-9.]*\).*/\1/p')
    record "GPT-2 124M bf16, attention $path" "${ms:-FAILED} ms/step"
done

# where the bf16 step's time goes: the profiling backend waits for each op
say "GPT-2 124M, bf16 GEMMs: time per op (3 profiled steps)"
if timeout 120 "$build/bench/bench_gpt" --backend cuda --shape 124m --seq 1024 --batch 16 \
    --steps 2 --matmul bf16 --profile 3 | tee /tmp/profile.txt; then
    record "GPT-2 124M bf16, slowest op" "$(sed -n '/^op /{n;p;q}' /tmp/profile.txt)"
else
    record "GPT-2 124M bf16, op profile" "FAILED"
fi

# ---- 4. NCCL all-reduce ----
if [ -x "$build/bench/bench_collectives" ]; then
    say "all-reduce through mhub_comm over NCCL (1 rank: the local copy path)"
    timeout 120 "$build/bench/bench_collectives" --backend cuda --min-bytes 1048576 \
        --max-bytes 268435456 | tee /tmp/coll.txt
    record "nccl all-reduce (1 GPU)" "$(tail -1 /tmp/coll.txt)"
fi

[ $sanitize = 1 ] && sanitize_conformance

say "summary ($gpu)"
printf '%s\n' "${results[@]}"
