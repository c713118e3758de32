#!/usr/bin/env bash
# setup.sh - install what is missing, build mhub, then run the demo or the tests.
#
#   scripts/setup.sh demo   # set up, build, train the GPT addition demo (the main job)
#   scripts/setup.sh test   # set up, build, run every test (make check)
#   scripts/setup.sh build  # set up and build only
#
# Debian 12 / Ubuntu. Packages come from apt (through sudo when not root).
# Extra ./configure flags can be passed in CONFIGURE_FLAGS (CI uses
# --enable-werror).
set -euo pipefail

what=${1:-demo}
case "$what" in
demo|test|build) ;;
*) echo "usage: $0 demo|test|build" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."

packages="gcc g++ make autoconf automake libtool pkg-config mpich libmpich-dev \
libopenblas-dev libcjson-dev check python3"

missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
fi

jobs=$(nproc 2>/dev/null || echo 2)
if [ ! -x configure ] || [ configure.ac -nt configure ] || [ Makefile.am -nt configure ]; then
    autoreconf -fi
fi
if [ ! -f Makefile ] || [ configure -nt Makefile ] || [ -n "${CONFIGURE_FLAGS:-}" ]; then
    # shellcheck disable=SC2086
    ./configure ${CONFIGURE_FLAGS:-}
fi
make -j"$jobs"

case "$what" in
demo)
    mpiexec -n 2 ./mhub train --config examples/configs/gpt-addition.json ;;
test)
    make check -j"$jobs" || { cat tests/*.log 2>/dev/null | tail -200; exit 1; } ;;
build) ;;
esac
