#!/bin/sh
# test_cli_gpt.sh - `mhub train --config FILE`: a tiny GPT trains on a
# text file at 1 and 2 ranks with each engine (the loss falls), the
# bundled addition task is generated and scored, metrics are JSON lines,
# and bad configs fail with a message naming the file and key.
# $MHUB is the binary, $MPIEXEC the launcher (the Makefile sets both).

. "$(dirname "$0")/cli_common.sh"
MPIEXEC=${MPIEXEC:-mpiexec}

# a text file with structure to learn: each line repeats its first number
awk 'BEGIN { srand(7); for (i = 0; i < 3000; i++) { n = int(rand() * 100); printf "%02d-%02d\n", n, n } }' >"$tmp/copy.txt"

# config NAME ENGINE STEPS DATA [OPTIMIZER_EXTRA]: write $tmp/NAME.json
# (OPTIMIZER_EXTRA: more optimizer keys, each with a leading comma)
config() {
    cat >"$tmp/$1.json" <<EOF
{
  "model": {"provider": "gpt", "num_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
            "ffn_hidden_size": 64, "seq_length": 32, "vocab_size": 256,
            "position_embedding_type": "rope", "normalization": "RMSNorm",
            "activation": "swiglu", "share_embeddings_and_output_weights": false,
            "add_bias_linear": false, "init_method": "normal", "init_method_std": 0.02},
  "ddp": {"overlap_grad_reduce": true, "bucket_size": 5000},
  "optimizer": {"type": "adamw", "lr": 0.01, "warmup_steps": 5, "min_lr": 0.001$5},
  "training": {"steps": $3, "micro_batch": 4, "global_batch": 8, "seq_len": 32,
               "dp_engine": "$2", "log_every": 10, "eval_problems": 5},
  "data": $4
}
EOF
}

# run_train NAME RANKS FLAGS...: train; stdout in $out, stderr in $err, status in $rc
run_train() {
    name=$1 ranks=$2
    shift 2
    (cd "$tmp" && timeout 240 "$MPIEXEC" -n "$ranks" "$MHUB" train --config "$tmp/$name.json" "$@") \
        >"$out" 2>"$err"
    rc=$?
}

# loss_fell: the summary line says "loss A -> B" with B < A / 2
loss_fell() {
    awk '/^loss .* -> / { if ($4 < $2 / 2) ok = 1 } END { exit !ok }' "$out"
}

for engine in ddp distopt fsdp; do
    config "copy-$engine" "$engine" 60 "{\"path\": \"$tmp/copy.txt\"}"
    for ranks in 1 2; do
        run_train "copy-$engine" "$ranks" --metrics "$tmp/m.jsonl"
        if [ "$rc" -eq 0 ] && loss_fell; then
            pass "$engine at $ranks rank(s): the loss falls ($(grep '^loss' "$out"))"
        else
            fail "$engine at $ranks rank(s)" "rc=$rc $(tail -3 "$out") $(cat "$err")"
        fi
    done
done

# metrics: one JSON object per step
lines=$(wc -l <"$tmp/m.jsonl")
if [ "$lines" -eq 60 ] && head -1 "$tmp/m.jsonl" | grep -q '^{"step":1,"loss":'; then
    pass "metrics: 60 JSON lines"
else
    fail "metrics" "$(head -2 "$tmp/m.jsonl")"
fi

# gradient clipping through the engine, for every engine: it trains, and
# each step's grad_norm (measured before clipping) is a positive number
grad_norms_positive() {
    awk -F'"grad_norm":' '
        { n++; v = $2; sub(/}$/, "", v)
          if (v !~ /^[0-9.]+([eE][-+]?[0-9]+)?$/ || v + 0 <= 0) bad++ }
        END { exit !(n == 60 && bad == 0) }' "$1"
}
for engine in ddp distopt fsdp; do
    config "clip-$engine" "$engine" 60 "{\"path\": \"$tmp/copy.txt\"}" ', "clip_grad": 0.5'
    run_train "clip-$engine" 2 --metrics "$tmp/clip.jsonl"
    if [ "$rc" -eq 0 ] && loss_fell && grad_norms_positive "$tmp/clip.jsonl"; then
        pass "$engine with clip_grad 0.5 at 2 ranks: the loss falls, grad_norm > 0"
    else
        fail "$engine with clip_grad" "rc=$rc $(tail -3 "$out") $(head -3 "$tmp/clip.jsonl") $(cat "$err")"
    fi
done

# a GPT-2-style model (LayerNorm, gelu, learned positions, biases) whose
# output layer is the embedding table: FSDP keeps the embedding's unit
# gathered while the head uses it. It trains at 2 ranks, and in
# deterministic mode reaches DDP's bits at 1 and 2 ranks (one BLAS thread
# per rank: the automatic count differs between 1 and 2 ranks on a node,
# and a GEMM's sum order with it).
# tied_config NAME ENGINE [DDP_EXTRA]: write $tmp/NAME.json
tied_config() {
    cat >"$tmp/$1.json" <<EOF
{
  "model": {"provider": "gpt", "num_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
            "ffn_hidden_size": 64, "seq_length": 32, "vocab_size": 256,
            "share_embeddings_and_output_weights": true,
            "init_method": "normal", "init_method_std": 0.02},
  "ddp": {"overlap_grad_reduce": true, "bucket_size": 5000$3},
  "optimizer": {"type": "adamw", "lr": 0.01, "warmup_steps": 5, "min_lr": 0.001},
  "training": {"steps": 60, "micro_batch": 4, "global_batch": 8, "seq_len": 32,
               "dp_engine": "$2", "log_every": 10},
  "data": {"path": "$tmp/copy.txt"}
}
EOF
}
tied_config tied-fsdp fsdp
run_train tied-fsdp 2
if [ "$rc" -eq 0 ] && loss_fell; then
    pass "tied GPT-2-style model, fsdp at 2 ranks: the loss falls ($(grep '^loss' "$out"))"
else
    fail "tied GPT with fsdp" "rc=$rc $(tail -3 "$out") $(cat "$err")"
fi
tied_config tied-det ddp ', "deterministic": true'
MHUB_BLAS_THREADS=1
export MHUB_BLAS_THREADS
tied_digests=""
for run in "ddp 1" "fsdp 1" "fsdp 2"; do
    set -- $run
    run_train tied-det "$2" --dp-engine "$1" --steps 20 --quiet --digest
    d=$(sed -n 's/^params sha256: //p' "$out")
    [ "$rc" -eq 0 ] && [ -n "$d" ] || fail "tied GPT, deterministic $1 at $2 rank(s)" "rc=$rc $(cat "$err")"
    tied_digests="$tied_digests $d"
done
unset MHUB_BLAS_THREADS
if [ "$(echo $tied_digests | tr ' ' '\n' | sort -u | wc -l)" -eq 1 ] && [ -n "$(echo $tied_digests)" ]; then
    pass "tied GPT, deterministic: fsdp at 1 and 2 ranks gives ddp's digest"
else
    fail "tied GPT, deterministic digests" "ddp 1, fsdp 1, fsdp 2:$tied_digests"
fi

# the bundled task: written by mhub, scored on held-out problems
config addition ddp 5 '{"task": "addition", "digits": 2, "problems": 500, "seed": 3}'
run_train addition 2
if [ "$rc" -eq 0 ] && grep -q '^addition accuracy: [0-9.]*% on 5 held-out 2-digit problems' "$out" &&
    [ -s "$tmp/mhub-addition-2d-500-3.txt" ]; then
    pass "addition task generated and scored"
else
    fail "addition task" "rc=$rc $(tail -3 "$out") $(cat "$err")"
fi
# scoring runs forward passes, which are collective under FSDP: every
# rank must score, or rank 0 waits alone for the others' gathers
for engine in distopt fsdp; do
    config "addition-$engine" "$engine" 3 '{"task": "addition", "digits": 2, "problems": 500, "seed": 3}'
    run_train "addition-$engine" 2
    if [ "$rc" -eq 0 ] && grep -q '^addition accuracy: [0-9.]*% on 5 held-out' "$out"; then
        pass "addition task scored with $engine at 2 ranks"
    else
        fail "addition task with $engine" "rc=$rc $(tail -3 "$out") $(cat "$err")"
    fi
done

# flags override the config
run_train addition 1 --steps 3 --quiet
if [ "$rc" -eq 0 ] && ! grep -q '^step' "$out"; then pass "--steps and --quiet"; else fail "--steps/--quiet" "$(cat "$out" "$err")"; fi

# expect_error NAME PATTERN: the last run failed with status 2 and PATTERN on stderr
expect_error() {
    if [ "$rc" -eq 2 ] && grep -E -q -- "$2" "$err"; then pass "$1"; else fail "$1" "rc=$rc $(cat "$err")"; fi
}
printf '{"model": {"provider": "gpt"}, "data": {"path": "x"}, "colour": 1}' >"$tmp/bad1.json"
run_train bad1 1
expect_error "unknown top-level key" "bad1.json: unknown key 'colour'"
printf '{"model": {"provider": "gpt"}}' >"$tmp/bad2.json"
run_train bad2 1
expect_error "missing data" "bad2.json: the \"data\" section is missing"
printf '{"model": {"provider": "gpt", "hidden_size": -1}, "data": {"path": "x"}}' >"$tmp/bad3.json"
run_train bad3 1
expect_error "bad model key" "hidden_size"
printf '{"model": {"provider": "gpt"}, "data": {"path": "x"}, "training": {"dp_engine": "zero"}}' >"$tmp/bad4.json"
run_train bad4 1
expect_error "bad engine" "training.dp_engine"
printf '{"model": {"provider": "gpt"' >"$tmp/bad5.json"
run_train bad5 1
expect_error "truncated config" "bad5.json: not valid JSON"
config bad6 ddp 5 "{\"path\": \"$tmp/copy.txt\"}"
run_train bad6 2 --global-batch 6
expect_error "batch not divisible" "global_batch 6 must be a multiple"
config bad7 ddp 5 "{\"path\": \"$tmp/none.txt\"}"
run_train bad7 2
if [ "$rc" -ne 0 ] && grep -q "none.txt" "$err"; then pass "missing data file"; else fail "missing data file" "rc=$rc $(cat "$err")"; fi

# --backend: an unknown one is a usage error; cuda on a build or machine
# without it stops every rank, each naming itself and the reason
run_train addition 1 --backend tpu
expect_error "unknown backend" "unknown backend 'tpu'"
run_train addition 1 --matmul fp8
expect_error "unknown matmul precision" "unknown precision 'fp8'"
if ! nvidia-smi -L >/dev/null 2>&1; then
    run_train addition 2 --backend cuda --steps 1
    if [ "$rc" -eq 1 ] && grep -q 'rank 0: .*--backend cuda' "$err" &&
        grep -q 'rank 1: .*--backend cuda' "$err"; then
        pass "--backend cuda without a GPU stops both ranks, each saying why"
    else
        fail "--backend cuda without a GPU" "rc=$rc $(cat "$err")"
    fi
fi

# --backend guard: the CPU backend with its memory closed to host code
# outside backend calls. Every engine with bf16 parameters, clipping,
# scoring and a checkpoint round trip must run guarded at 2 ranks (so
# none of that code reads backend memory directly, as a GPU would not
# allow) and give the CPU's digest. UCX's single-copy transport reads a
# peer's buffers from the other process, outside that rank's calls, so
# it is turned off for guarded runs.
for engine in ddp distopt fsdp; do
    config "guard-$engine" "$engine" 3 '{"task": "addition", "digits": 2, "problems": 500, "seed": 3}' \
        ', "clip_grad": 1.0'
    sed -i 's/"init_method_std": 0.02}/"init_method_std": 0.02, "bf16": true}/' "$tmp/guard-$engine.json"
    run_train "guard-$engine" 2 --digest
    want=$(grep 'params sha256' "$out")
    UCX_TLS=^cma run_train "guard-$engine" 2 --backend guard --digest --save "$tmp/ck-$engine" --save-every 3
    have=$(grep 'params sha256' "$out")
    if [ "$rc" -eq 0 ] && [ -n "$want" ] && [ "$have" = "$want" ]; then
        pass "$engine (bf16, clipping, scoring, saving) runs guarded with the CPU's digest"
    else
        fail "$engine guarded" "rc=$rc want '$want' have '$have' $(cat "$err")"
    fi
    UCX_TLS=^cma run_train "guard-$engine" 2 --backend guard --digest --load "$tmp/ck-$engine" --steps 4
    have=$(grep 'params sha256' "$out")
    run_train "guard-$engine" 2 --digest --load "$tmp/ck-$engine" --steps 4
    want=$(grep 'params sha256' "$out")
    if [ "$rc" -eq 0 ] && [ -n "$want" ] && [ "$have" = "$want" ]; then
        pass "$engine resumes guarded from its checkpoint as on the CPU"
    else
        fail "$engine guarded resume" "rc=$rc want '$want' have '$have' $(cat "$err")"
    fi
done

# pipeline/tensor-parallel layouts are built but not trained: refused up
# front on every rank, naming the key
sed 's/"num_layers": 2,/"num_layers": 2, "pipeline_model_parallel_size": 2,/' "$tmp/bad6.json" >"$tmp/bad8.json"
run_train bad8 2
if [ "$rc" -eq 1 ] && [ "$(grep -c 'model.pipeline_model_parallel_size is 2' "$err")" -eq 2 ]; then
    pass "a pipeline layout is refused on every rank"
else
    fail "pipeline layout" "rc=$rc $(cat "$err")"
fi

echo "$checks checks, $failures failed"
[ "$failures" -eq 0 ]
