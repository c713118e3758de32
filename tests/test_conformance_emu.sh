#!/bin/sh
# The backend conformance suite (tests/test_conformance.c) on the CUDA
# backend's own code, its kernels run on the CPU by the emulator of
# tests/cuda_emu/: every kernel and the backend's logic checked against
# the CPU backend, on any machine, GPU or not.
MHUB_TEST_BACKEND=cuda-emu exec "$top_builddir/tests/test_conformance"
