#!/bin/sh
# test_cli.sh - the mhub command's dispatch and `mhub train`: every flag's
# bad values exit 2 with a message naming the problem; a real run trains.
MHUB=${MHUB:-./mhub}
MPIEXEC=${MPIEXEC:-mpiexec}
fails=0
out=$(mktemp)
err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT

# expect CODE PATTERN ARGS...: exit status CODE and PATTERN (grep -E) in
# stdout+stderr; a crash (status >= 128) always fails.
expect() {
    code=$1 pattern=$2
    shift 2
    "$@" >"$out" 2>"$err"
    got=$?
    if [ "$got" -ne "$code" ] || ! cat "$out" "$err" | grep -Eq -- "$pattern"; then
        echo "FAIL: $* -> exit $got (want $code), output:"
        sed 's/^/    /' "$out" "$err" | head -20
        fails=$((fails + 1))
    else
        echo "ok:   $* -> $got"
    fi
}

expect 2 "usage: mhub" "$MHUB"
expect 2 "unknown command 'bogus'" "$MHUB" bogus
expect 0 "^mhub [0-9]" "$MHUB" --version
expect 0 "commands:" "$MHUB" --help

T="$MHUB train"
expect 0 "usage: mhub train" $T --help
expect 2 "--model is required" $T
expect 2 "unknown model 'gpt9'" $T --model gpt9
expect 2 "--model needs a value" $T --model
expect 2 "unknown option '--bogus'" $T --model mlp --bogus
expect 2 "unknown option '--quiet=1'" $T --model mlp --quiet=1
expect 2 "'abc' is not an integer" $T --model mlp --steps abc
expect 2 "0 is out of range" $T --model mlp --steps 0
expect 2 "-5 is out of range" $T --model mlp --steps -5
expect 2 "'12x' is not an integer" $T --model mlp --steps=12x
expect 2 "--steps needs a value" $T --model mlp --steps
expect 2 "empty value" $T --model mlp --batch=
expect 2 "out of range" $T --model mlp --batch 99999999999999999999
expect 2 "'nan' is not a finite number" $T --model mlp --lr nan
expect 2 "'inf' is not a finite number" $T --model mlp --lr inf
expect 2 "out of range" $T --model mlp --lr -0.1
expect 2 "out of range" $T --model mlp --momentum 1
expect 2 "'0.5.5' is not a finite number" $T --model mlp --weight-decay 0.5.5
expect 2 "0 is out of range" $T --model mlp --hidden 0
expect 2 "empty value" $T --model mlp --hidden 4,,4
expect 2 "empty value" $T --model mlp --hidden 4,
expect 2 "empty value" $T --model mlp --hidden ""
expect 0 "32-4-4-8" $T --model mlp --hidden 4,4 --steps 2 --eval-samples 0
expect 2 "at most 16 layers" $T --model mlp --hidden 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1
expect 2 "1 is out of range" $T --model mlp --classes 1
expect 2 "0 is out of range" $T --model mlp --features 0
expect 2 "out of range" $T --model mlp --seed -1
expect 2 "0 is out of range" $T --model mlp --threads 0
expect 2 "0 is out of range" $T --model mlp --log-every 0
expect 2 "out of range" $T --model mlp --eval-samples -1

# a real, short run: the loss is printed and the summary line appears
expect 0 "first loss [0-9.]+, last loss [0-9.]+" \
    $T --model mlp --steps 40 --batch 32 --hidden 32 --eval-samples 256 --threads 1
expect 0 "step +40/40 +loss" \
    $T --model mlp --steps 40 --log-every 20 --hidden none --eval-samples 0
# divergence is reported as an error, not printed as a result
expect 1 "loss became (nan|inf|-nan)" \
    $T --model mlp --steps 50 --lr 900 --momentum 0.99 --hidden 64 --eval-samples 0
expect 2 "unknown engine 'zero9'" $T --model mlp --dp-engine zero9
expect 2 "unknown optimizer 'adam'" $T --model mlp --optimizer adam
expect 2 "'3' is not a power of two|3 is not a power of two" $T --model mlp --deterministic --micro-shards 3
expect 2 "--micro-shards needs --deterministic" $T --model mlp --micro-shards 4
expect 2 "--grad-accum does not apply" $T --model mlp --deterministic --grad-accum 2
expect 2 "0 is out of range" $T --model mlp --bucket-size 0
expect 2 "out of range" $T --model mlp --grad-accum 0

# 16-bit parameters (DDP keeps f32 main copies)
expect 0 "first loss 2\.[0-9]+, last loss 0\.[0-9]+" timeout 120 "$MPIEXEC" -n 2 $T --model mlp \
    --param-dtype bf16 --steps 200 --eval-samples 256 --quiet
expect 0 "last loss" timeout 120 "$MPIEXEC" -n 2 $T --model mlp --param-dtype f16 \
    --grad-reduce-in-fp32 --steps 20 --quiet
expect 2 "unknown dtype 'fp8'" $T --model mlp --param-dtype fp8
for engine in distopt fsdp; do
    expect 0 "last loss" timeout 120 "$MPIEXEC" -n 2 $T --model mlp --param-dtype bf16 \
        --dp-engine $engine --steps 20 --eval-samples 256 --quiet
done
expect 1 "set grad_reduce_in_fp32" $T --model mlp --param-dtype bf16 --deterministic --steps 2

# --ddp-config: a file of Megatron-named settings, errors name file and key
cfgdir=$(mktemp -d)
printf '{"overlap_grad_reduce": true, "bucket_size": 5000}' > "$cfgdir/ok.json"
printf '{"bucket_sise": 5000}' > "$cfgdir/typo.json"
printf '{"bucket_size": 0}' > "$cfgdir/zero.json"
printf '{"overlap_grad_reduce": "yes"}' > "$cfgdir/type.json"
printf '{"overlap' > "$cfgdir/broken.json"
printf '{"use_distributed_optimizer": true}' > "$cfgdir/distopt.json"
expect 0 "last loss" $T --model mlp --steps 5 --ddp-config "$cfgdir/ok.json" --quiet
expect 0 "engine distopt" $T --model mlp --steps 5 --ddp-config "$cfgdir/distopt.json"
expect 2 "typo.json: unknown ddp config key 'bucket_sise'" $T --model mlp --ddp-config "$cfgdir/typo.json"
expect 2 "zero.json: ddp config key 'bucket_size' must be a whole number" $T --model mlp --ddp-config "$cfgdir/zero.json"
expect 2 "type.json: ddp config key 'overlap_grad_reduce' must be true or false" $T --model mlp --ddp-config "$cfgdir/type.json"
expect 2 "broken.json: not valid JSON" $T --model mlp --ddp-config "$cfgdir/broken.json"
expect 2 "cannot open '$cfgdir/missing.json'" $T --model mlp --ddp-config "$cfgdir/missing.json"
rm -rf "$cfgdir"

# data parallel: bad layouts fail on every rank with exit 2, no hang
expect 2 "rank 1: .*--batch 6 must be divisible by ranks x --grad-accum = 4 x 1" \
    timeout 60 "$MPIEXEC" -n 4 $T --model mlp --batch 6 --steps 2
expect 2 "rank 2: .*power-of-two number of ranks, not 3" \
    timeout 60 "$MPIEXEC" -n 3 $T --model mlp --deterministic --micro-shards 8 --batch 48 --steps 2
expect 2 "--micro-shards 2 must be a multiple of the 4 ranks" \
    timeout 60 "$MPIEXEC" -n 4 $T --model mlp --deterministic --micro-shards 2 --steps 2

# DDP on 2 ranks trains, with overlap and accumulation
expect 0 "gradient sync: [0-9]+ of [0-9]+ bucket" \
    timeout 120 "$MPIEXEC" -n 2 $T --model mlp --steps 30 --grad-accum 2 --bucket-size 1000 \
    --eval-samples 256 --quiet

# every engine trains on 2 ranks (the loss falls: checked by the summary)
for engine in ddp distopt fsdp; do
    expect 0 "first loss 2\.[0-9]+, last loss (0|1)\.[0-9]+" \
        timeout 120 "$MPIEXEC" -n 2 $T --model mlp --dp-engine $engine --optimizer adamw \
        --lr 0.003 --steps 150 --eval-samples 512 --quiet
done
expect 0 "last loss" timeout 120 "$MPIEXEC" -n 2 $T --model mlp --dp-engine distopt \
    --overlap-param-gather --grad-accum 2 --steps 20 --quiet

# deterministic mode: the same parameters, bit for bit, on 1, 2, 4 and 8 ranks,
# and the same with every engine
digests=""
for n in 1 2 4 8; do
    for engine in ddp distopt fsdp; do
        d=$(timeout 120 "$MPIEXEC" -n $n $T --model mlp --deterministic --steps 20 --digest \
            --quiet --eval-samples 0 --dp-engine $engine | sed -n 's/^params sha256: //p')
        echo "deterministic digest, $engine at $n rank(s): $d"
        digests="$digests $d"
    done
done
if [ "$(echo $digests | tr ' ' '\n' | sort -u | wc -l)" -ne 1 ] || [ -z "$(echo $digests)" ]; then
    echo "FAIL: deterministic digests differ or are missing:$digests"
    fails=$((fails + 1))
else
    echo "ok:   deterministic digests equal at 1, 2, 4 and 8 ranks, for ddp, distopt and fsdp"
fi

echo "$fails failure(s)"
[ "$fails" -eq 0 ]
