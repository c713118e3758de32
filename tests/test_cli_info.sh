#!/bin/sh
# test_cli_info.sh - `mhub info`: parameter counts and per-rank memory from
# a config without allocating the model (a 100-billion-parameter MLP and
# GPT-3 175B per tensor-parallel rank included), and a clear message with
# a non-zero exit for bad input.
# Prints one line per check; exits 1 if any failed. $MHUB is the binary,
# $top_srcdir the source tree (the Makefile sets both).

. "$(dirname "$0")/cli_common.sh"
top_srcdir=${top_srcdir:-.}
configs=$top_srcdir/examples/configs

run() {
    "$MHUB" info "$@" >"$out" 2>"$err"
    rc=$?
}

# expect_ok NAME PATTERN ARGS...: exit 0 and stdout matches PATTERN (grep -E).
expect_ok() {
    name=$1 pattern=$2
    shift 2
    run "$@"
    if [ "$rc" -eq 0 ] && grep -E -q -- "$pattern" "$out"; then
        pass "$name"
    else
        fail "$name" "rc=$rc, wanted /$pattern/; stdout: $(head -c 600 "$out"); stderr: $(cat "$err")"
    fi
}

# expect_error NAME RC PATTERN ARGS...: exit status RC and stderr matches PATTERN.
expect_error() {
    name=$1 want=$2 pattern=$3
    shift 3
    run "$@"
    if [ "$rc" -eq "$want" ] && grep -E -q -- "$pattern" "$err"; then
        pass "$name"
    else
        fail "$name" "rc=$rc (wanted $want), stderr: $(cat "$err")"
    fi
}

# The small MLP: 32*128+128 + 128*128+128 + 128*8+8 parameters.
small=$((32 * 128 + 128 + 128 * 128 + 128 + 128 * 8 + 8))
expect_ok "small mlp count" "^parameters: +21,768$" "$configs/mlp-small.json"
expect_ok "small mlp json" "\"parameters\":$small[,}]" "$configs/mlp-small.json" --json
expect_ok "memory table has every engine" "^  fsdp " "$configs/mlp-small.json" --world 4

# The 100-billion-parameter MLP: 16 layers of 81920 plus the 1000-class head.
big=$((16 * (81920 * 81920 + 81920) - 81920 * 81920 - 81920 + 81920 * 1000 + 1000))
expect_ok "100B mlp json" "\"parameters\":$big[,}]" "$configs/mlp-100b.json" --json --world 64
expect_ok "100B mlp stages" "^  stage 3: " "$configs/mlp-100b.json" --world 64
expect_ok "100B mlp dp" "dp 16" "$configs/mlp-100b.json" --world 64

# sharding: at dp 16 FSDP holds less per rank than DDP
run "$configs/mlp-100b.json" --world 64 --json
if command -v python3 >/dev/null 2>&1; then
    if python3 - "$out" <<'EOF'
import json, sys
o = json.load(open(sys.argv[1]))
m = o["memory_per_rank"]
assert m["fsdp"]["total_bytes"] < m["distopt"]["total_bytes"] < m["ddp"]["total_bytes"], m
assert sum(s["parameters"] for s in o["stages"]) == o["parameters"]
EOF
    then pass "fsdp < distopt < ddp at dp 16"; else fail "fsdp < distopt < ddp at dp 16" "$(cat "$out")"; fi
fi

# GPT-3 175B at tp 8 x pp 8: the total is the whole model (vocabulary padded
# to 50264 for tp 8); each stage line is one tensor-parallel rank's shard:
# per layer 12 H^2/8 split weights, 7H/8 split biases, 2H whole biases and
# 4H norm parameters; stage 0 adds 50264/8 embedding rows and 2048 positions.
h=12288
gpt3=$((96 * (12 * h * h + 13 * h) + 50264 * h + 2048 * h + 2 * h))
layer=$((12 * h * h / 8 + 7 * h / 8 + 2 * h + 4 * h))
gpt3_stage0=$((12 * layer + 50264 / 8 * h + 2048 * h))
expect_ok "gpt3 json total" "\"parameters\":$gpt3[,}]" "$configs/gpt3-175b.json" --json --world 1024
expect_ok "gpt3 json stage 0 per tp rank" "\"stage\":0,\"parameters\":$gpt3_stage0[,}]" \
    "$configs/gpt3-175b.json" --json --world 1024
expect_ok "gpt3 json tp" "\"tp\":8[,}]" "$configs/gpt3-175b.json" --json --world 1024
expect_ok "gpt3 per-rank header" "^parameters per \(tensor, pipeline\) rank" \
    "$configs/gpt3-175b.json" --world 1024
expect_ok "gpt3 stage 0 line" "^  stage 0: +2,821,294,080 in 1 chunk" "$configs/gpt3-175b.json" \
    --world 1024
# at tp 1 (the MLP) there is no per-rank header
run "$configs/mlp-small.json"
if [ "$rc" -eq 0 ] && ! grep -q "per (tensor, pipeline) rank" "$out"; then
    pass "no per-rank header at tp 1"
else
    fail "no per-rank header at tp 1" "$(cat "$out")"
fi

# a saved config directory works as CONFIG
mkdir -p "$tmp/dir" && cp "$configs/mlp-small.json" "$tmp/dir/mhub_model.json"
expect_ok "config directory" "provider mlp" "$tmp/dir"

# bad input: clear message, non-zero exit, nothing on stdout
expect_error "no config" 2 "CONFIG" 
expect_error "unknown flag" 2 "unknown flag '--bogus'" "$configs/mlp-small.json" --bogus
expect_error "bad world" 2 "--world" "$configs/mlp-small.json" --world 0
expect_error "world not divisible" 2 "not a multiple of tp x pp x cp" "$configs/mlp-100b.json" --world 6
expect_error "missing file" 1 "nope.json" "$tmp/nope.json"
printf '{"provider": "mlp", "inputs": -3}' >"$tmp/neg.json"
expect_error "negative size" 1 "inputs" "$tmp/neg.json"
printf '{"provider": "mlp", "inputs": 3' >"$tmp/trunc.json"
expect_error "truncated json" 1 "trunc.json" "$tmp/trunc.json"
printf '{"provider": "nosuch"}' >"$tmp/unknown.json"
expect_error "unknown provider" 1 "nosuch" "$tmp/unknown.json"
printf '{"provider": "mlp", "colour": 3}' >"$tmp/key.json"
expect_error "unknown key" 1 "colour" "$tmp/key.json"
expect_error "bad optimizer" 2 "--optimizer" "$configs/mlp-small.json" --optimizer lion
printf '{"bucket_size": 0}' >"$tmp/ddp.json"
expect_error "bad ddp config" 1 "bucket_size" "$configs/mlp-small.json" --ddp-config "$tmp/ddp.json"

echo "$checks checks, $failures failed"
[ "$failures" -eq 0 ]
