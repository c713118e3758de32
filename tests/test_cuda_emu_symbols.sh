#!/bin/sh
# The CPU emulator of tests/cuda_emu/ exports no name the CUDA toolkit or
# the real CUDA backend also defines. A test program links the emulator
# next to libmhub; when libmhub is static and built --with-cuda (as
# bench/gpu-pack.sh makes it for GPU machines), a shared name would bind
# the real backend's calls to the emulator: a cudaGetDeviceCount that
# finds a device where there is none, or a kernel launch whose handle is
# the emulator's copy. Everything exported must be the emulator's own
# (mhub_..., namespace mhub_emu), the C++ library's, or the thread-local
# stand-ins for CUDA's built-in variables.
lib="$top_builddir/tests/cuda_emu/.libs/libcudaemu.a"
[ -f "$lib" ] || { echo "no $lib: is the emulator built (make check)?"; exit 1; }
exported=$(nm -g --defined-only "$lib" | awk 'NF == 3 && $2 != "U" { print $3 }' | sort -u)
[ -n "$exported" ] || { echo "nm listed nothing exported by $lib"; exit 1; }
foreign=$(printf '%s\n' "$exported" | grep -v \
    -e '^mhub_' -e '^_ZN8mhub_emu' -e '^_ZZN8mhub_emu' -e '15mhub_emu_stream' \
    -e '^_ZNSt' -e '^_ZNKSt' -e '^_ZSt' -e '^_ZN9__gnu_cxx' -e '^_ZT[VIS]' -e '^DW\.ref\.' \
    -e '^_ZTH4smem$' -e '^smem$' -e '^threadIdx$' -e '^blockIdx$' -e '^blockDim$' -e '^gridDim$')
if [ -n "$foreign" ]; then
    echo "the emulator exports names that are not its own (make them static, or rename them in"
    echo "its headers as cuda_runtime.h does):"
    printf '%s\n' "$foreign" | c++filt | sed 's/^/  /'
    exit 1
fi
echo "PASS: the emulator's $(printf '%s\n' "$exported" | wc -l) exported names are all its own"
