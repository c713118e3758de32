#!/usr/bin/env bash
# bench/gpu-pack.sh - build here what bench/gpu.sh runs, for a GPU machine
# without this build's packages (MPICH, OpenBLAS, cJSON, Check, autotools).
#
#   bench/gpu-pack.sh [ARCHIVE]      (default: gpu-pack.tar.xz, git-ignored)
#
# Builds a copy of the tracked files (as they are in the working tree)
# with --with-cuda and a static libmhub, so the programs
# need no libtool wrapper, and packs them with every shared library they
# load except the C and C++ runtimes and CUDA's own (cudart, cuBLAS and NCCL come
# from the GPU machine's toolkit: they are hundreds of MB). Then, there:
#   MHUB_GPU_PACK=gpu-pack.tar.xz bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
archive=${1:-$PWD/gpu-pack.tar.xz}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
build=$work/src
pack=$work/gpu-pack
mkdir -p "$build" "$pack/tests" "$pack/bench" "$pack/deps"
git ls-files -z | tar cf - --null -T - | tar xf - -C "$build"
(
    cd "$build"
    autoreconf -fi >/dev/null 2>&1
    ./configure --with-cuda --disable-shared CUDA_ARCHS="${CUDA_ARCHS:-80 90}" >/dev/null
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
            # the machine's own C++ runtime: newer ones serve older programs,
            # and CUDA's libraries may need the newer one
            */libstdc++.so.*|*/libgcc_s.so.*) ;;
            */libcuda.so.*|*/libcudart.so.*|*/libcublas*|*/libnccl.so.*) ;;
            *) cp -L "$lib" "$pack/deps/" ;;
        esac
    done
tar cJf "$archive" -C "$work" gpu-pack
echo "gpu-pack: $archive ($(du -h "$archive" | cut -f1)): $programs and $(ls "$pack/deps" | wc -l) libraries"
