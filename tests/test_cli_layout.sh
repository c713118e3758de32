#!/bin/sh
# test_cli_layout.sh - `mhub layout`: the Megatron-Core tables in its JSON
# and text output, and exit status 2 with a message naming the problem for
# every kind of bad input. Prints one line per check; exits 1 if any failed.
# $MHUB is the mhub binary (the Makefile sets it; ./mhub otherwise).

. "$(dirname "$0")/cli_common.sh"

# run ARGS...: run mhub layout, leaving stdout in $out, stderr in $err and
# the exit status in $rc.
run() {
    "$MHUB" layout "$@" >"$out" 2>"$err"
    rc=$?
}

have_python=no
if command -v python3 >/dev/null 2>&1; then have_python=yes; fi

# json_has FILE KEY EXPECTED: the JSON object in FILE maps KEY to the JSON
# value EXPECTED (compared as parsed values when python3 exists, otherwise
# as the exact unformatted text mhub prints).
json_has() {
    if [ "$have_python" = yes ]; then
        python3 -c '
import json, sys
got = json.load(open(sys.argv[1]))
key, want = sys.argv[2], json.loads(sys.argv[3])
if got.get(key) != want:
    print("%s: got %s" % (key, json.dumps(got.get(key))))
    sys.exit(1)
' "$1" "$2" "$3"
    else
        compact=$(printf '%s' "$3" | tr -d ' ')
        grep -F -q "\"$2\":$compact" "$1" || { echo "$2: no \"$2\":$compact"; return 1; }
    fi
}

# check_json NAME KEY=VALUE...: every KEY in the last JSON output has VALUE.
check_json() {
    name=$1
    shift
    if [ "$rc" -ne 0 ]; then
        fail "$name: exit status $rc" "$(cat "$err")"
        return
    fi
    if [ "$(wc -l <"$out")" -ne 1 ]; then
        fail "$name: JSON is not one line" "$(head -c 300 "$out")"
        return
    fi
    problems=
    for pair in "$@"; do
        msg=$(json_has "$out" "${pair%%=*}" "${pair#*=}") || problems="$problems$msg
"
    done
    if [ -z "$problems" ]; then pass "$name"; else fail "$name" "$problems"; fi
}

# ---- JSON: the reference tables ------------------------------------------

run --world 8 --tp 2 --pp 2 --json
check_json "json world 8 tp 2 pp 2 (Megatron-Core example)" \
    'world=8' \
    'tp=[[0,1],[2,3],[4,5],[6,7]]' \
    'dp=[[0,2],[1,3],[4,6],[5,7]]' \
    'pp=[[0,4],[1,5],[2,6],[3,7]]' \
    'cp=[[0],[1],[2],[3],[4],[5],[6],[7]]' \
    'mp=[[0,1,4,5],[2,3,6,7]]' \
    'tp-dp=[[0,1,2,3],[4,5,6,7]]' \
    'embedding=[[0,4],[1,5],[2,6],[3,7]]' \
    'position-embedding=[[0],[1],[2],[3]]'
if [ "$have_python" = yes ]; then
    run --world 8 --tp 2 --pp 2 --json
    check_json "json sizes and resolved order" \
        'sizes={"tp":2,"cp":1,"pp":2,"dp":2,"ep":1,"etp":2,"edp":2,"vp":0,"order":"tp-cp-ep-dp-pp"}'
fi
json_ref=$tmp/ref.json
cp "$out" "$json_ref"

run --world 8 --tp 2 --pp 2 --order tp-cp-ep-pp-dp --json
check_json "json order tp-cp-ep-pp-dp" \
    'pp=[[0,2],[1,3],[4,6],[5,7]]' \
    'dp=[[0,4],[1,5],[2,6],[3,7]]'

run --world 8 --tp 2 --pp 2 --ep 2 --json
check_json "json ep 2 (etp 2, edp 1)" \
    'ep=[[0,2],[1,3],[4,6],[5,7]]' \
    'edp=[[0],[1],[2],[3],[4],[5],[6],[7]]' \
    'tp-ep=[[0,1,2,3],[4,5,6,7]]'

run --world=8 --tp=2 --pp=2 --json
if [ "$rc" -eq 0 ] && cmp -s "$out" "$json_ref"; then
    pass "--flag=value gives the same JSON as --flag value"
else
    fail "--flag=value gives the same JSON as --flag value" "$(cat "$out" "$err")"
fi

# ---- text ----------------------------------------------------------------

run --world 8 --tp 2 --pp 2
text=$out
# expect_line NAME EXTENDED-REGEX: some line of the text output matches.
expect_line() {
    if grep -E -q "$2" "$text"; then
        pass "text: $1"
    else
        fail "text: $1" "no line matches /$2/"
    fi
}
if [ "$rc" -eq 0 ] && [ ! -s "$err" ]; then
    pass "text: exit 0, nothing on stderr"
else
    fail "text: exit 0, nothing on stderr" "rc=$rc $(cat "$err")"
fi
expect_line "header with sizes and dp" '^world 8 = tp 2 x cp 1 x dp 2 x pp 2'
expect_line "order legend" 'order tp-cp-ep-dp-pp: the leftmost axis varies fastest'
expect_line "rank formula" 'rank = tp \+ 2\*\(cp \+ 1\*\(dp \+ 2\*pp\)\)'
expect_line "tp groups" '^ +tp +4x2 +\[0 1\] \[2 3\] \[4 5\] \[6 7\]$'
expect_line "dp groups" '^ +dp +4x2 +\[0 2\] \[1 3\] \[4 6\] \[5 7\]$'
expect_line "pp groups" '^ +pp +4x2 +\[0 4\] \[1 5\] \[2 6\] \[3 7\]$'
expect_line "mp groups" '^ +mp +2x4 +\[0 1 4 5\] \[2 3 6 7\]$'
expect_line "tp-dp groups" '^ +tp-dp +2x4 +\[0 1 2 3\] \[4 5 6 7\]$'
expect_line "embedding groups" '^ +embedding +4x2 +\[0 4\] \[1 5\] \[2 6\] \[3 7\]$'
expect_line "position-embedding groups" '^ +position-embedding +4x1 +\[0\] \[1\] \[2\] \[3\]$'
expect_line "row of rank 0: first stage" '^ +0 +0 +0 +0 +0 +first$'
expect_line "row of rank 5: tp 1, dp 0, pp 1, last stage" '^ +5 +1 +0 +0 +1 +last$'
if grep -q ' $' "$text"; then
    fail "text: no trailing blanks" "$(grep -n ' $' "$text")"
else
    pass "text: no trailing blanks"
fi

run --world 4096 --tp 8 --pp 4
lines=$(wc -l <"$out")
if [ "$rc" -eq 0 ] && [ "$lines" -lt 250 ] && grep -q 'not shown' "$out" &&
    grep -E -q '^ +4095 +7 +0 +127 +3 +last$' "$out"; then
    pass "text: a 4096-rank world is abbreviated ($lines lines) and ends at rank 4095"
else
    fail "text: a 4096-rank world is abbreviated" "rc=$rc lines=$lines $(cat "$err")"
fi

run --help
if [ "$rc" -eq 0 ] && grep -q '^usage: mhub layout' "$out"; then
    pass "--help: usage on stdout, exit 0"
else
    fail "--help: usage on stdout, exit 0" "rc=$rc"
fi

# ---- bad input: exit status exactly 2, the problem named on stderr, the
# usage after it and nothing on stdout ------------------------------------

# bad "EXPECTED TEXT" ARGS...
bad() {
    want=$1
    shift
    run "$@"
    name="bad input [$*]"
    if [ "$rc" -ne 2 ]; then
        fail "$name: exit status $rc, expected 2" "$(cat "$err")"
    elif ! grep -F -q -- "$want" "$err"; then
        fail "$name: stderr does not say \"$want\"" "$(cat "$err")"
    elif ! grep -q '^usage: mhub layout' "$err"; then
        fail "$name: no usage on stderr" "$(cat "$err")"
    elif [ -s "$out" ]; then
        fail "$name: wrote to stdout" "$(cat "$out")"
    else
        pass "$name"
    fi
}

bad "--world is required"
bad "--world is required" --tp 2 --pp 2
bad "--world needs a value" --world
bad "--tp needs a value" --world 8 --tp
bad "--order needs a value" --world 8 --order
bad "--world: 0 is out of range" --world 0
bad "--world: -8 is out of range" --world -8
bad "--world: 'eight' is not an integer" --world eight
bad "--world: '1e3' is not an integer" --world 1e3
bad "--world: '8x' is not an integer" --world 8x
bad "out of range" --world 99999999999999999999
bad "--world: empty value" --world=
bad "--tp: -2 is out of range" --world 8 --tp -2
bad "--pp: 0 is out of range" --world 8 --pp 0
bad "--cp: -1 is out of range" --world 8 --cp=-1
bad "--etp: 0 is out of range" --world 8 --etp 0
bad "--vp: 'two' is not an integer" --world 8 --pp 2 --vp two
bad "world size 8 is not divisible by tp*cp*pp = 3*1*1 = 3" --world 8 --tp 3
bad "world size 8 is not divisible by tp*cp*pp = 2*1*3 = 6" --world 8 --tp 2 --pp 3
bad "world size 8 is not divisible by tp*cp*pp = 16*1*1 = 16" --world 8 --tp 16
bad "expert world size 8 is not divisible by etp*ep*pp = 1*3*1 = 3" --world 8 --ep 3
bad "expert world size 8 is not divisible by etp*ep*pp = 2*4*2 = 16" --world 8 --tp 2 --pp 2 --ep 4
bad "greater than 1 with interleaved schedule" --world 8 --vp 2
bad "unknown axis 'xx'" --world 8 --order tp-xx-pp
bad "names axis tp twice" --world 8 --order tp-tp-pp
bad "empty axis name" --world 8 --order tp--pp
bad "does not name dp, whose size is 4" --world 8 --tp 2 --order tp-pp
bad "does not put pp last" --world 8 --tp 2 --pp 2 --ep 2 --order tp-cp-ep-pp-dp
bad "unknown option '--bogus'" --world 8 --bogus
bad "unknown option '-t'" --world 8 -t 2
bad "unexpected argument 'extra'" --world 8 extra
bad "--tp is given twice" --world 8 --tp 2 --tp=2
bad "--json takes no value" --world 8 --json=yes
bad "--json is given twice" --world 8 --json --json

echo "$checks checks, $failures failed"
[ "$failures" -eq 0 ]
