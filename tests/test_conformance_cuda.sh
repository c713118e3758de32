#!/bin/sh
# The backend conformance suite (tests/test_conformance.c) on the CUDA
# backend. Without a GPU, or in a build without --with-cuda, the suite
# prints why and exits 77: automake reports SKIP, never a silent pass.
MHUB_TEST_BACKEND=cuda exec "$top_builddir/tests/test_conformance"
