#!/usr/bin/env bash
# The GPU check built by `cargo xtask gpu-check`. Run from the repository's root on a machine
# with an NVIDIA GPU and its driver (no internet, no Rust needed); it takes a few minutes and
# writes what it saw to docs/gpu-notes.md (and, where $OUT is set, copies the notes and logs
# there).
set -u
cd "$(dirname "$0")/.."
work=$(mktemp -d)
for name in pedconv pedconv-ddp lib-tests suite; do
    gzip -dc "gpu-check/bin/$name.gz" > "$work/$name" && chmod +x "$work/$name"
done
export PEDCONV_GOLDEN_DIR="$PWD/tests/fixtures/golden"
rows=""
failed=0

# step NAME COMMAND...: runs COMMAND, its output in $work/NAME.log, and records its status.
step() {
    local name=$1
    shift
    local start=$SECONDS
    echo "== $name: $*" >&2
    "$@" > "$work/$name.log" 2>&1
    local rc=$?
    local took=$((SECONDS - start))
    tail -n 25 "$work/$name.log" >&2
    local status="passed"
    if [ $rc -ne 0 ]; then
        status="FAILED (exit $rc)"
        failed=1
    fi
    rows="$rows| $name | \`${*/#$work\//}\` | $status | $took s |"$'\n'
}

step lib-tests "$work/lib-tests" --test-threads=8
step suite "$work/suite" --test-threads=1
step bench "$work/pedconv" bench --backend cuda --layers r18,r50 --layer-batch 32 \
    --networks r18 --settings 64x224,128x112,128x224 --reps 3 --output "$work/bench"
step bench-bf16 "$work/pedconv" bench --backend cuda --layers none --networks r18 \
    --settings 128x224 --precision bf16 --reps 3 --output "$work/bench-bf16"
step train "$work/pedconv" train --backend cuda \
    --config configs/pedconv-resnet18-synthetic.json --output "$work/train"
step train-ddp "$work/pedconv-ddp" train --backend cuda --devices 0 \
    --config configs/pedconv-resnet18-synthetic.json --output "$work/train-ddp"

notes=docs/gpu-notes.md
mkdir -p docs
{
    echo "# GPU check"
    echo
    echo "Written by \`gpu-check/run.sh\` (built by \`cargo xtask gpu-check\`) on $(date -u +%Y-%m-%d)."
    echo
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi not found"
    echo "$(nproc) CPU threads"
    echo '```'
    echo
    echo "| step | command | status | time |"
    echo "| --- | --- | --- | ---: |"
    printf '%s' "$rows"
    for name in bench bench-bf16; do
        if [ -f "$work/$name/bench.md" ]; then
            echo
            echo "## $name"
            echo
            cat "$work/$name/bench.md"
        fi
    done
    for name in train train-ddp; do
        echo
        echo "## $name (last lines)"
        echo
        echo '```'
        tail -n 15 "$work/$name.log"
        echo '```'
    done
    for name in lib-tests suite; do
        echo
        echo "## $name (summary)"
        echo
        echo '```'
        grep -E "^test result|FAILED|panicked" "$work/$name.log" | head -n 30
        echo '```'
    done
} > "$notes"
echo "wrote $notes" >&2
if [ -n "${OUT:-}" ]; then
    cp "$notes" "$OUT/" && cp "$work"/*.log "$OUT/"
fi
exit $failed
