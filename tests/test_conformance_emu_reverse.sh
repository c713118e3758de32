#!/bin/sh
# The emulated conformance suite again with every block's threads started
# from the last (tests/cuda_emu/cuda_emu.cpp): a kernel that reads shared
# memory written by another thread without a barrier between passes in
# at most one of the two orders.
MHUB_EMU_THREAD_ORDER=reverse MHUB_TEST_BACKEND=cuda-emu exec "$top_builddir/tests/test_conformance"
