#!/usr/bin/env bash
# bench/gpu-pack.sh - build here what bench/gpu.sh runs, for a GPU machine
# without this build's packages (MPICH, OpenBLAS, cJSON, Check, autotools).
#
#   bench/gpu-pack.sh [ARCHIVE]      (default: gpu-pack.tar.xz, git-ignored)
#
# Builds out of tree with --with-cuda and a static libmhub, so the programs
# need no libtool wrapper, and packs them with every shared library they
# load except the C library's and CUDA's own (cudart, cuBLAS and NCCL come
# from the GPU machine's toolkit: they are hundreds of MB). Then, there:
#   MHUB_GPU_PACK=gpu-pack.tar.xz bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
archive=${1:-$src/gpu-pack.tar.xz}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
build=$work/build
pack=$work/gpu-pack
mkdir -p "$build" "$pack/tests" "$pack/bench" "$pack/deps"
[ -f configure ] || autoreconf -fi >/dev/null
(
    cd "$build"
    "$src/configure" --with-cuda --disable-shared CUDA_ARCHS="${CUDA_ARCHS:-80 90}" >/dev/null
    make -j"$(nproc)" >/dev/null
    make -j"$(nproc)" tests/test_conformance tests/test_nccl_comm bench/bench_gpt \
        bench/bench_collectives >/dev/null
)
programs="mhub tests/test_conformance tests/test_nccl_comm bench/bench_gpt bench/bench_collectives"
for p in $programs; do cp "$build/$p" "$pack/$p"; done
for p in $programs; do ldd "$pack/$p"; done | awk '/=> \// {print $3}' | sort -u |
    while read -r lib; do
        case $lib in
            */libc.so.*|*/libm.so.*|*/libpthread.so.*|*/libdl.so.*|*/librt.so.*|*/ld-linux*) ;;
            */libcuda.so.*|*/libcudart.so.*|*/libcublas*|*/libnccl.so.*) ;;
            *) cp -L "$lib" "$pack/deps/" ;;
        esac
    done
tar cJf "$archive" -C "$work" gpu-pack
echo "gpu-pack: $archive ($(du -h "$archive" | cut -f1)): $programs and $(ls "$pack/deps" | wc -l) libraries"
