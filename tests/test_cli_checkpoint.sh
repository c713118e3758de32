#!/bin/sh
# test_cli_checkpoint.sh - `mhub train --config` checkpoints: a run that
# saves at step 6 and resumes in a new process reproduces the uninterrupted
# run's losses and final parameters bit for bit at the same dp size (1 and
# 2 ranks; ddp, distopt and fsdp); across dp sizes (2 -> 1, 1 -> 2) within
# float tolerance (the gradient sums run in another order), and bit for
# bit in deterministic mode with a fixed number of micro-shards and one
# BLAS thread per rank; checkpoints are engine-neutral (fsdp's load into
# ddp); the layout is step-N directories plus `latest`; bad checkpoints
# (another model or optimizer, a missing or corrupted file, a flipped
# byte in a shard's tensor data, an unknown or old version) and failed
# saves fail on every rank with a message naming the key or file, without
# hanging or leaving temporaries; the manifest's shard digests are the
# files' sha256sum; a resume with another batch shape or data fails naming
# the setting, one with another schedule warns once and trains on.
# $MHUB is the binary, $MPIEXEC the launcher (the Makefile sets both).

. "$(dirname "$0")/cli_common.sh"
MPIEXEC=${MPIEXEC:-mpiexec}

awk 'BEGIN { srand(7); for (i = 0; i < 3000; i++) { n = int(rand() * 100); printf "%02d-%02d\n", n, n } }' >"$tmp/copy.txt"

# config NAME ENGINE HIDDEN: write $tmp/NAME.json (12 steps)
config() {
    cat >"$tmp/$1.json" <<EOF
{
  "model": {"provider": "gpt", "num_layers": 2, "hidden_size": $3, "num_attention_heads": 4,
            "ffn_hidden_size": 64, "seq_length": 32, "vocab_size": 256,
            "position_embedding_type": "rope", "normalization": "RMSNorm",
            "activation": "swiglu", "share_embeddings_and_output_weights": false,
            "add_bias_linear": false, "init_method": "normal", "init_method_std": 0.02},
  "ddp": {"overlap_grad_reduce": true, "bucket_size": 5000},
  "optimizer": {"type": "adamw", "lr": 0.01, "warmup_steps": 3, "min_lr": 0.001},
  "training": {"steps": 12, "micro_batch": 4, "global_batch": 8, "seq_len": 32,
               "dp_engine": "$2", "log_every": 100},
  "data": {"path": "$tmp/copy.txt"}
}
EOF
}

# run_train NAME RANKS FLAGS...: stdout in $out, stderr in $err, status in $rc
run_train() {
    name=$1 ranks=$2
    shift 2
    (cd "$tmp" && timeout 120 "$MPIEXEC" -n "$ranks" "$MHUB" train --config "$tmp/$name.json" \
        --quiet --digest "$@") >"$out" 2>"$err"
    rc=$?
}

digest() { sed -n 's/^params sha256: //p' "$out"; }

# losses FILE FROM: "step loss" of steps >= FROM from a metrics file
losses() { sed -n 's/^{"step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/p' "$1" | awk -v f="$2" '$1 >= f'; }

# close A B: the same steps, losses within 1e-3 relative
close() {
    paste -d' ' "$1" "$2" | awk 'NF != 4 || $1 != $3 { bad = 1 }
        { d = $2 - $4; if (d < 0) d = -d; if (d > 1e-3 * ($2 < 0 ? -$2 : $2)) bad = 1 }
        END { exit bad || NR == 0 }'
}

config base ddp 32

# uninterrupted runs at 1 and 2 ranks, saving at step 6 and 12 as they go
for ranks in 1 2; do
    run_train base "$ranks" --save "$tmp/ck$ranks" --save-every 6 --metrics "$tmp/full$ranks.jsonl"
    eval "full_digest_$ranks=\$(digest)"
    losses "$tmp/full$ranks.jsonl" 7 >"$tmp/full$ranks.tail"
    if [ "$rc" -eq 0 ] && [ -n "$(digest)" ] && [ -f "$tmp/ck$ranks/step-6/manifest.json" ] &&
        [ "$(cat "$tmp/ck$ranks/latest")" = step-12 ]; then
        pass "ddp at $ranks rank(s): trains and saves step-6, step-12, latest"
    else
        fail "ddp at $ranks rank(s): save" "rc=$rc $(cat "$err") $(ls -a "$tmp/ck$ranks" 2>&1)"
    fi
done

if ls -a "$tmp/ck1" "$tmp/ck2" | grep -q '^\.tmp\|^\.old'; then
    fail "no temporaries left" "$(ls -a "$tmp/ck1" "$tmp/ck2")"
else
    pass "no temporaries left behind"
fi
if grep -q '"version":[[:space:]]*2,' "$tmp/ck2/step-6/manifest.json" &&
    grep -q '"dp_size":[[:space:]]*2,' "$tmp/ck2/step-6/manifest.json" &&
    grep -q '"global_batch":[[:space:]]*"8",' "$tmp/ck2/step-6/manifest.json" &&
    grep -q '"lr":[[:space:]]*"0.01",' "$tmp/ck2/step-6/manifest.json" &&
    [ -f "$tmp/ck2/step-6/mhub_model.json" ] &&
    [ -f "$tmp/ck2/step-6/shard-00001-of-00002.safetensors" ]; then
    pass "manifest: version 2, dp_size 2, run settings, config and one shard per rank"
else
    fail "manifest" "$(cat "$tmp/ck2/step-6/manifest.json"; ls "$tmp/ck2/step-6")"
fi

# the recorded digests, against coreutils' sha256sum of the files: the
# manifest prints each "sha256" on the line after its "file"
recorded=$(sed -n -e 's/.*"file":[[:space:]]*"\([^"]*\)".*/\1/p' \
    -e 's/.*"sha256":[[:space:]]*"\([^"]*\)".*/\1/p' "$tmp/ck2/step-6/manifest.json" |
    paste -d' ' - - | awk '{ print $2 "  " $1 }')
actual=$(cd "$tmp/ck2/step-6" && sha256sum shard-*.safetensors)
if [ -n "$actual" ] && [ "$recorded" = "$actual" ]; then
    pass "manifest: each shard's sha256 is the file's sha256sum"
else
    fail "shard digests" "recorded:
$recorded
sha256sum:
$actual"
fi

# resume at the same size: bitwise
for ranks in 1 2; do
    run_train base "$ranks" --load "$tmp/ck$ranks/step-6" --metrics "$tmp/res$ranks.jsonl"
    losses "$tmp/res$ranks.jsonl" 1 >"$tmp/res$ranks.tail"
    eval "want=\$full_digest_$ranks"
    if [ "$rc" -eq 0 ] && cmp -s "$tmp/full$ranks.tail" "$tmp/res$ranks.tail" &&
        [ "$(wc -l <"$tmp/res$ranks.tail")" -eq 6 ] && [ "$(digest)" = "$want" ]; then
        pass "ddp $ranks -> $ranks rank(s): steps 7-12 and final digest bitwise equal"
    else
        fail "ddp $ranks -> $ranks resume" "rc=$rc $(cat "$err") digest $(digest) want $want
$(paste "$tmp/full$ranks.tail" "$tmp/res$ranks.tail")"
    fi
done

# resharding: 2 -> 1 and 1 -> 2, against the uninterrupted run at the new size
for pair in "2 1" "1 2"; do
    set -- $pair
    run_train base "$2" --load "$tmp/ck$1" --steps 12 --metrics "$tmp/rs.jsonl"
    # ck$1/latest is step-12: nothing left to train, the digest is ck$1's
    eval "want=\$full_digest_$1"
    if [ "$rc" -eq 0 ] && [ "$(digest)" = "$want" ]; then
        pass "ddp $1 -> $2: latest (step 12) loads with the same parameters"
    else
        fail "ddp $1 -> $2 latest" "rc=$rc $(cat "$err") digest $(digest) want $want"
    fi
    run_train base "$2" --load "$tmp/ck$1/step-6" --metrics "$tmp/rs.jsonl"
    losses "$tmp/rs.jsonl" 1 >"$tmp/rs.tail"
    if [ "$rc" -eq 0 ] && close "$tmp/full$2.tail" "$tmp/rs.tail"; then
        pass "ddp $1 -> $2 rank(s): steps 7-12 match the $2-rank run within 1e-3"
    else
        fail "ddp $1 -> $2 resume" "rc=$rc $(cat "$err")
$(paste "$tmp/full$2.tail" "$tmp/rs.tail")"
    fi
done

# the config's "checkpoint" section does what the flags do
sed "s|^  \"data\"|  \"checkpoint\": {\"load\": \"$tmp/ck2/step-6\"},\n  \"data\"|" "$tmp/base.json" \
    >"$tmp/keyed.json"
run_train keyed 2 --metrics "$tmp/k.jsonl"
losses "$tmp/k.jsonl" 1 >"$tmp/k.tail"
if [ "$rc" -eq 0 ] && cmp -s "$tmp/full2.tail" "$tmp/k.tail"; then
    pass "config checkpoint.load resumes like --load"
else
    fail "config checkpoint.load" "rc=$rc $(cat "$err")"
fi

# deterministic mode with a fixed number of micro-shards (8 rows in 4
# shards of 2) sums gradients in one tree at every dp size, so resharding
# is bitwise too, given one BLAS thread per rank (the automatic count
# differs between 1 and 2 ranks on a node, and a GEMM's sum order with it)
sed 's/"bucket_size": 5000}/"bucket_size": 5000, "deterministic": true}/' "$tmp/base.json" \
    >"$tmp/det.json"
sed 's/"dp_engine": "ddp"/"dp_engine": "fsdp"/' "$tmp/det.json" >"$tmp/detf.json"
MHUB_BLAS_THREADS=1
export MHUB_BLAS_THREADS
for ranks in 1 2; do
    run_train det "$ranks" --micro-batch 2 --save "$tmp/ckdet$ranks" --save-every 6 \
        --metrics "$tmp/det$ranks.jsonl"
    eval "det_digest_$ranks=\$(digest)"
    losses "$tmp/det$ranks.jsonl" 7 >"$tmp/det$ranks.tail"
done
if [ -n "$det_digest_1" ] && [ "$det_digest_1" = "$det_digest_2" ]; then
    pass "deterministic: 1 and 2 ranks train to the same bits"
else
    fail "deterministic across sizes" "$det_digest_1 vs $det_digest_2 $(cat "$err")"
fi
for pair in "2 1 det" "1 2 det" "2 1 detf"; do
    set -- $pair
    run_train "$3" "$2" --micro-batch 2 --load "$tmp/ckdet$1/step-6" --metrics "$tmp/rd.jsonl"
    losses "$tmp/rd.jsonl" 1 >"$tmp/rd.tail"
    if [ "$rc" -eq 0 ] && cmp -s "$tmp/det$2.tail" "$tmp/rd.tail" &&
        [ "$(digest)" = "$det_digest_1" ]; then
        pass "deterministic $3 $1 -> $2 rank(s): steps 7-12 and digest bitwise equal"
    else
        fail "deterministic $3 $1 -> $2" "rc=$rc $(cat "$err") $(digest)
$(paste "$tmp/det$2.tail" "$tmp/rd.tail")"
    fi
done
unset MHUB_BLAS_THREADS

# a crash mid-save leaves a .tmp-step directory without a manifest: the
# previous checkpoint still loads, and the next save clears it
mkdir "$tmp/ck2/.tmp-step-18" && cp "$tmp/ck2/step-6/shard-00000-of-00002.safetensors" \
    "$tmp/ck2/.tmp-step-18/"
run_train base 2 --load "$tmp/ck2"
if [ "$rc" -eq 0 ] && [ "$(digest)" = "$full_digest_2" ]; then
    pass "an interrupted save leaves latest loadable"
else
    fail "interrupted save" "rc=$rc $(cat "$err")"
fi

# expect_fail WHAT PATTERN NAME RANKS FLAGS...: fails, every rank says PATTERN
expect_fail() {
    what=$1 pattern=$2 name=$3 ranks=$4
    shift 4
    run_train "$name" "$ranks" "$@"
    n=$(grep -c -- "$pattern" "$err")
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$n" -eq "$ranks" ]; then
        pass "$what: fails on all $ranks ranks ($(head -1 "$err" | cut -c1-150))"
    else
        fail "$what" "rc=$rc, $n of $ranks ranks matched '$pattern': $(cat "$err")"
    fi
}

config other ddp 64
expect_fail "another model" '"hidden_size" is 32 there and 64 here' other 2 --load "$tmp/ck2/step-6"

sed 's/"adamw"/"sgd"/' "$tmp/base.json" >"$tmp/sgd.json"
expect_fail "another optimizer" 'another optimizer' sgd 2 --load "$tmp/ck2/step-6"

cp -r "$tmp/ck2/step-6" "$tmp/bad"
rm "$tmp/bad/shard-00001-of-00002.safetensors"
expect_fail "missing shard" 'shard-00001-of-00002.safetensors' base 2 --load "$tmp/bad"

cp "$tmp/ck2/step-6/shard-00001-of-00002.safetensors" "$tmp/bad/"
head -c 1000 "$tmp/ck2/step-6/shard-00000-of-00002.safetensors" \
    >"$tmp/bad/shard-00000-of-00002.safetensors"
expect_fail "truncated shard" 'shard-00000-of-00002.safetensors' base 1 --load "$tmp/bad"

cp "$tmp/ck2/step-6/shard-00000-of-00002.safetensors" "$tmp/bad/"
sed 's/"version":[[:space:]]*2,/"version": 99,/' "$tmp/ck2/step-6/manifest.json" \
    >"$tmp/bad/manifest.json"
expect_fail "unknown version" 'version 99 is not supported' base 2 --load "$tmp/bad"
sed 's/"version":[[:space:]]*2,/"version": 1,/' "$tmp/ck2/step-6/manifest.json" \
    >"$tmp/bad/manifest.json"
expect_fail "version 1" 'version 1 is not supported: it has no shard checksums' base 2 \
    --load "$tmp/bad"

# one byte flipped inside the tensor data of shard 1 (past the 8-byte
# length and the JSON header, which stay valid): both ranks read that
# shard, both refuse it
cp "$tmp/ck2/step-6/manifest.json" "$tmp/bad/"
shard="$tmp/bad/shard-00001-of-00002.safetensors"
header=$(od -An -tu8 -N8 "$shard" | tr -d ' ')
at=$((8 + header + 100))
byte=$(od -An -tu1 -j "$at" -N1 "$shard" | tr -d ' ')
printf "$(printf '\\%03o' $((byte ^ 255)))" |
    dd of="$shard" bs=1 seek="$at" conv=notrunc 2>/dev/null
if [ "$(od -An -tu1 -j "$at" -N1 "$shard" | tr -d ' ')" -eq $((byte ^ 255)) ] &&
    cmp -s -n "$((8 + header))" "$shard" "$tmp/ck2/step-6/shard-00001-of-00002.safetensors"
then
    expect_fail "flipped data byte" \
        'shard-00001-of-00002.safetensors fails its sha256 checksum: the manifest has' \
        base 2 --load "$tmp/bad"
else
    fail "flipping a byte at $at of $shard"
fi
cp "$tmp/ck2/step-6/shard-00001-of-00002.safetensors" "$tmp/bad/"

printf '{"format": "mhub-checkpoint", "vers' >"$tmp/bad/manifest.json"
expect_fail "corrupted manifest" 'bad/manifest.json' base 2 --load "$tmp/bad"

expect_fail "no checkpoint" 'latest' base 2 --load "$tmp/nowhere"

# what a resume must keep: the batch shape and the data
expect_fail "another global batch" \
    'global_batch was 8 in the saved run and is 16 here; resuming with another value' \
    base 2 --load "$tmp/ck2/step-6" --global-batch 16
sed "s|\"path\": \"$tmp/copy.txt\"|\"path\": \"$tmp/copy2.txt\"|" "$tmp/base.json" \
    >"$tmp/data2.json"
cp "$tmp/copy.txt" "$tmp/copy2.txt"
expect_fail "another data file" "data was $tmp/copy.txt in the saved run and is $tmp/copy2.txt" \
    data2 2 --load "$tmp/ck2/step-6"

# what it may change, with one warning (rank 0's): a longer run at another
# learning rate trains on from step 7 to 18
run_train base 2 --load "$tmp/ck2/step-6" --steps 18 --lr 0.02 --metrics "$tmp/ext.jsonl"
warned=$(grep -c 'warning: resuming .* another schedule .*steps 12 -> 18; lr 0.01 -> 0.02' "$err")
trained=$(losses "$tmp/ext.jsonl" 1 | awk 'NR == 1 { a = $1 } END { print a "-" $1 }')
if [ "$rc" -eq 0 ] && [ "$warned" -eq 1 ] && [ "$trained" = 7-18 ]; then
    pass "another schedule: one warning ($(cut -c1-120 "$err")), steps 7-18 trained"
else
    fail "another schedule" "rc=$rc, $warned warnings, steps $trained: $(cat "$err")"
fi

# the sharded engines: bitwise at the same size, and their checkpoints
# are engine-neutral (full tensors), so ddp resumes from them
for engine in distopt fsdp; do
    config "$engine" "$engine" 32
    run_train "$engine" 2 --save "$tmp/ck-$engine" --save-every 6 --metrics "$tmp/f.jsonl"
    want=$(digest)
    losses "$tmp/f.jsonl" 7 >"$tmp/f.tail"
    run_train "$engine" 2 --load "$tmp/ck-$engine/step-6" --metrics "$tmp/r.jsonl"
    losses "$tmp/r.jsonl" 1 >"$tmp/r.tail"
    if [ "$rc" -eq 0 ] && [ -n "$want" ] && cmp -s "$tmp/f.tail" "$tmp/r.tail" &&
        [ "$(digest)" = "$want" ]; then
        pass "$engine 2 -> 2 ranks: steps 7-12 and final digest bitwise equal"
    else
        fail "$engine resume" "rc=$rc $(cat "$err") digest $(digest) want $want"
    fi
    run_train base 1 --load "$tmp/ck-$engine/step-6" --metrics "$tmp/r.jsonl"
    losses "$tmp/r.jsonl" 1 >"$tmp/r.tail"
    if [ "$rc" -eq 0 ] && close "$tmp/full1.tail" "$tmp/r.tail"; then
        pass "$engine at 2 ranks -> ddp at 1: steps 7-12 within 1e-3"
    else
        fail "$engine -> ddp" "rc=$rc $(cat "$err")"
    fi
done

# a save that fails (step-6 is taken by a file) fails on every rank and
# leaves no temporary behind
mkdir "$tmp/ckx" && : >"$tmp/ckx/step-6"
expect_fail "failed save" 'step-6' base 2 --save "$tmp/ckx" --save-every 6
if [ "$(ls -A "$tmp/ckx")" = step-6 ]; then
    pass "a failed save leaves nothing behind"
else
    fail "failed save leftovers" "$(ls -a "$tmp/ckx")"
fi

echo "$checks checks, $failures failures"
[ "$failures" -eq 0 ]
