#!/bin/sh
# test_cli_eval.sh - `mhub eval`: the loss of the golden GPT-2 (in
# Hugging Face's layout) on a fixed token file matches PyTorch's
# (tests/data/gpt/eval-gpt2.json, from tests/reference/gpt_reference.py),
# is the same at 1, 2 and 3 ranks, --json and --config + --weights give
# the same number, and bad input fails with a clear message. Also
# `mhub convert`: hf -> mhub -> hf -> mhub round trips byte for byte
# (config.json back as it came) and the converted models score the same
# loss.
# $MHUB is the binary, $MPIEXEC the launcher (the Makefile sets both).

. "$(dirname "$0")/cli_common.sh"
MPIEXEC=${MPIEXEC:-mpiexec}
top_srcdir=${top_srcdir:-.}
data=$top_srcdir/tests/data/gpt
hf=$data/hf-gpt2
tokens=$data/eval-tokens.txt

# run_eval RANKS FLAGS...: stdout in $out, stderr in $err, status in $rc
run_eval() {
    ranks=$1
    shift
    timeout 120 "$MPIEXEC" -n "$ranks" "$MHUB" eval "$@" >"$out" 2>"$err"
    rc=$?
}

# the number after "loss: " in $out
loss_of() { sed -n 's/^loss: //p' "$out"; }

# close A B: |A - B| <= 1e-5 max(1, |B|)
close() {
    awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; m = b < 0 ? -b : b;
                                     if (m < 1) m = 1; exit !(a != "" && d <= 1e-5 * m) }'
}

# expect_fail NAME CODE PATTERN FLAGS...: exit status CODE, stderr matches PATTERN
expect_fail() {
    name=$1 code=$2 pattern=$3
    shift 3
    "$MHUB" eval "$@" >"$out" 2>"$err"
    rc=$?
    if [ "$rc" -eq "$code" ] && grep -q -- "$pattern" "$err"; then
        pass "$name"
    else
        fail "$name (exit $rc, expected $code and /$pattern/)" "$(cat "$err")"
    fi
}

want=$(sed -n 's/.*"loss": *\([-0-9.eE+]*\).*/\1/p' "$data/eval-gpt2.json")

# ---- the loss matches PyTorch, at any rank count -------------------------
run_eval 1 --hf "$hf" --data "$tokens" --seq-len 8
one=$(loss_of)
if [ "$rc" -eq 0 ] && close "$one" "$want"; then
    pass "1 rank: loss $one matches PyTorch's $want"
else
    fail "1 rank: loss '$one', PyTorch's $want (exit $rc)" "$(cat "$out" "$err")"
fi
for ranks in 2 3; do
    run_eval $ranks --hf "$hf" --data "$tokens" --seq-len 8
    got=$(loss_of)
    if [ "$rc" -eq 0 ] && close "$got" "$one" && [ "$(wc -l <"$out")" -eq 1 ]; then
        pass "$ranks ranks: loss $got, as at 1 rank (one line, from rank 0)"
    else
        fail "$ranks ranks: loss '$got' vs $one (exit $rc)" "$(cat "$out" "$err")"
    fi
done

# ---- --json -----------------------------------------------------------------
run_eval 2 --hf "$hf" --data "$tokens" --seq-len 8 --json
jl=$(sed -n 's/.*"loss": *\([-0-9.eE+]*\).*/\1/p' "$out")
if [ "$rc" -eq 0 ] && close "$jl" "$want" && grep -q '"tokens": 96' "$out" &&
    grep -q '"windows": 12' "$out"; then
    pass "--json: loss, tokens 96, windows 12"
else
    fail "--json (exit $rc)" "$(cat "$out" "$err")"
fi

# --batches: the first N windows only (5 windows x 8 tokens)
run_eval 1 --hf "$hf" --data "$tokens" --seq-len 8 --batches 5 --json
if [ "$rc" -eq 0 ] && grep -q '"tokens": 40' "$out" && grep -q '"windows": 5' "$out"; then
    pass "--batches 5 scores 40 tokens"
else
    fail "--batches 5 (exit $rc)" "$(cat "$out" "$err")"
fi

# ---- --config (a training config's model section) + --weights ---------------
cat >"$tmp/train.json" <<EOF
{"model": {"provider": "gpt", "num_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
           "ffn_hidden_size": 64, "seq_length": 16, "vocab_size": 64,
           "normalization": "LayerNorm", "activation": "gelu",
           "position_embedding_type": "learned_absolute", "layernorm_epsilon": 1e-5,
           "share_embeddings_and_output_weights": true, "add_bias_linear": true},
 "training": {"steps": 1}}
EOF
run_eval 1 --config "$tmp/train.json" --weights "$hf" --data "$tokens" --seq-len 8
got=$(loss_of)
if [ "$rc" -eq 0 ] && close "$got" "$want"; then
    pass "--config + --weights: loss $got"
else
    fail "--config + --weights: '$got' (exit $rc)" "$(cat "$out" "$err")"
fi
# without weights: the seeded initial model, deterministic (about ln 64 = 4.16)
run_eval 1 --config "$tmp/train.json" --data "$tokens" --seq-len 8
a=$(loss_of)
run_eval 2 --config "$tmp/train.json" --data "$tokens" --seq-len 8
b=$(loss_of)
if [ "$rc" -eq 0 ] && close "$a" "$b" && awk -v x="$a" 'BEGIN { exit !(x > 3.5 && x < 5) }'; then
    pass "--config without weights: initial model, loss $a at 1 and 2 ranks"
else
    fail "--config without weights: '$a' vs '$b' (exit $rc)" "$(cat "$out" "$err")"
fi

# ---- bad input ------------------------------------------------------------------
printf '0123' >"$tmp/short.txt"
printf '0123456789abc' >"$tmp/wide.txt"
expect_fail "missing data file" 1 "/nonexistent.txt" --hf "$hf" --data /nonexistent.txt
expect_fail "data shorter than T+1 tokens" 1 "short.txt" --hf "$hf" --data "$tmp/short.txt" \
    --seq-len 8
expect_fail "token outside the vocabulary names file and token" 1 "wide.txt: token 97" \
    --hf "$hf" --data "$tmp/wide.txt" --seq-len 4
expect_fail "--seq-len over the model's seq_length" 1 "seq_length 16" --hf "$hf" \
    --data "$tokens" --seq-len 32
expect_fail "--batches over the windows" 1 "12 windows" --hf "$hf" --data "$tokens" \
    --seq-len 8 --batches 13
expect_fail "missing Hugging Face directory" 1 "/nonexistent-dir" --hf /nonexistent-dir \
    --data "$tokens"
expect_fail "unknown flag" 2 "unknown flag '--frobnicate'" --hf "$hf" --data "$tokens" \
    --frobnicate
expect_fail "no --data" 2 "--data FILE is required" --hf "$hf"
expect_fail "both --config and --hf" 2 "exactly one of" --hf "$hf" --config "$tmp/train.json" \
    --data "$tokens"
expect_fail "bad --seq-len" 2 "seq-len" --hf "$hf" --data "$tokens" --seq-len zero
"$MHUB" eval --help >"$out" 2>&1
if [ $? -eq 0 ] && grep -q "seeded initial weights" "$out"; then
    pass "--help"
else
    fail "--help" "$(cat "$out")"
fi

# ---- mhub convert ----------------------------------------------------------------
for model in gpt2 llama; do
    src=$data/hf-$model
    ok=1
    for step in "mhub $src $tmp/$model-m1" "hf $tmp/$model-m1 $tmp/$model-h" \
        "mhub $tmp/$model-h $tmp/$model-m2"; do
        set -- $step
        "$MHUB" convert --to "$1" "$2" "$3" >"$out" 2>"$err" || ok=0
    done
    if [ $ok -eq 1 ] && cmp -s "$tmp/$model-m1/model.safetensors" "$tmp/$model-m2/model.safetensors" &&
        cmp -s "$tmp/$model-m1/mhub_model.json" "$tmp/$model-m2/mhub_model.json" &&
        cmp -s "$src/config.json" "$tmp/$model-h/config.json"; then
        pass "convert $model: hf -> mhub -> hf -> mhub gives the same bytes, config.json included"
    else
        fail "convert $model round trip" "$(cat "$out" "$err")"
    fi
    run_eval 1 --hf "$src" --data "$tokens" --seq-len 8
    a=$(loss_of)
    run_eval 1 --hf "$tmp/$model-h" --data "$tokens" --seq-len 8
    b=$(loss_of)
    run_eval 1 --config "$tmp/$model-m1/mhub_model.json" --data "$tokens" --seq-len 8 \
        --weights "$tmp/$model-h"
    c=$(loss_of)
    if [ -n "$a" ] && [ "$a" = "$b" ] && [ "$a" = "$c" ]; then
        pass "convert $model: the converted model scores the same loss $a"
    else
        fail "convert $model: loss '$a' vs '$b' vs '$c'" "$(cat "$err")"
    fi
done
# a config written for tp 2 x pp 2 (a directory, as convert writes it):
# eval runs the whole model on each rank and scores the same loss
for model in gpt2 llama; do
    sed -e 's/"tensor_model_parallel_size": 1/"tensor_model_parallel_size": 2/' \
        -e 's/"pipeline_model_parallel_size": 1/"pipeline_model_parallel_size": 2/' \
        "$tmp/$model-m1/mhub_model.json" >"$tmp/$model-m1/tp2pp2.json"
    mkdir -p "$tmp/$model-tp2"
    cp "$tmp/$model-m1/tp2pp2.json" "$tmp/$model-tp2/mhub_model.json"
    run_eval 1 --config "$tmp/$model-m1/mhub_model.json" --data "$tokens" --seq-len 8 \
        --weights "$tmp/$model-h"
    a=$(loss_of)
    run_eval 1 --config "$tmp/$model-tp2" --data "$tokens" --seq-len 8 --weights "$tmp/$model-h"
    b=$(loss_of)
    run_eval 4 --config "$tmp/$model-tp2" --data "$tokens" --seq-len 8 --weights "$tmp/$model-h"
    c=$(loss_of)
    if grep -q '"tensor_model_parallel_size": 2' "$tmp/$model-tp2/mhub_model.json" &&
        [ -n "$a" ] && close "$b" "$a" && close "$c" "$a"; then
        pass "eval $model: a tp 2 x pp 2 config scores $b at 1 and 4 ranks, as tp 1 ($a)"
    else
        fail "eval $model with a tp 2 x pp 2 config: '$a' vs '$b' vs '$c'" "$(cat "$err")"
    fi
done
"$MHUB" convert --to hf "$data/hf-gpt2" "$tmp/nowhere" >"$out" 2>"$err"
rc=$?
if [ $rc -eq 1 ] && grep -q "mhub_model.json" "$err"; then
    pass "convert --to hf of a Hugging Face directory names the missing mhub_model.json"
else
    fail "convert --to hf of a Hugging Face directory (exit $rc)" "$(cat "$err")"
fi
"$MHUB" convert --to onnx a b >"$out" 2>"$err"
rc=$?
if [ $rc -eq 2 ] && grep -q "hf or mhub" "$err"; then
    pass "convert --to onnx is a usage error"
else
    fail "convert --to onnx (exit $rc)" "$(cat "$err")"
fi

echo "$checks checks, $failures failures"
[ "$failures" -eq 0 ]
