# cli_common.sh - what every tests/test_cli_*.sh script starts with: the
# binary ($MHUB, which the Makefile sets; ./mhub otherwise), a scratch
# directory $tmp removed on exit with $out and $err for a command's
# output, and pass/fail, which count checks and print one line each.
# Sourced, so `exit` here ends the calling script.

MHUB=${MHUB:-./mhub}
if [ ! -x "$MHUB" ]; then
    echo "FAIL: $MHUB is not an executable (set MHUB to the mhub binary)"
    exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mhub-cli.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
out=$tmp/out
err=$tmp/err
failures=0
checks=0

pass() { checks=$((checks + 1)); echo "ok   $1"; }

# fail NAME [DETAILS]: DETAILS are shown indented under the line
fail() {
    checks=$((checks + 1))
    failures=$((failures + 1))
    echo "FAIL $1"
    if [ -n "$2" ]; then printf '%s\n' "$2" | sed 's/^/     | /'; fi
}
