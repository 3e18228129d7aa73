#!/usr/bin/env bash
# The GPU check built by `cargo xtask gpu-check`. Run from anywhere on a machine with an NVIDIA
# GPU and its driver (no internet, no Rust needed): `bash gpu-check/run.sh`.
#
# Steps, most valuable first, each under `timeout` against one deadline (GPU_CHECK_DEADLINE
# seconds from the start, 540 by default: a 10-minute command limit less a minute), with budgets
# that add up to it: preflight → the CubeCL kernels against their references → the paper's
# PyTorch code (golden check, then its bench beside torchvision's static ResNet-18) → pedconv's
# bench of the same networks → the side-by-side table → a learning check → a profile of one
# pedconv training step → the per-layer rows → a suite subset → a user's crate → the DDP build.
# After every step it rewrites docs/gpu-notes.md and, where $OUT is set, copies there the notes,
# logs.tar.gz (every step's log and results so far) and gpu-cache.tar.gz (the compiled kernels
# and autotune results), so that a run stopped at any moment returns what it has seen, and a
# second run starts warm (`cargo xtask gpu-check --cache gpu-cache.tar.gz`).
#
# Exits 0 only when every step ran and passed. Without a GPU every GPU step is recorded as not
# run, with the reason, in a few seconds.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
check="$root/gpu-check"
deadline_s=${GPU_CHECK_DEADLINE:-540}
end=$((SECONDS + deadline_s))
work="$check/work"
cache="$check/cache"
notes="$root/docs/gpu-notes.md"
torch_script="$root/bench/torch_reference.py"
rm -rf "$work"
mkdir -p "$work/logs" "$work/lib" "$cache" "$(dirname "$notes")"
# The unpacked binaries (some hundred MiB) live outside the folder that travels with the tree.
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
started=$(date -u '+%Y-%m-%d %H:%M UTC')
rows=""
failed=0
no_gpu=""       # why the GPU steps cannot run, once the preflight has found out
no_torch=""     # why the PyTorch steps cannot run

for name in pedconv pedconv-ddp downstream lib-tests suite; do
    if ! gzip -dc "$check/bin/$name.gz" > "$bin/$name"; then
        echo "gpu-check: cannot unpack $check/bin/$name.gz: build the check with \`cargo xtask gpu-check\`" >&2
        exit 2
    fi
    chmod +x "$bin/$name"
done

# The compiled kernels belong to the binaries that compiled them: a cache from other binaries
# keeps its autotune results (choices of speed, never of results) and loses its kernels.
build_id=$(cat "$check"/bin/*.gz | cksum | cut -d' ' -f1)
if [ "$(cat "$cache/BUILD" 2> /dev/null)" != "$build_id" ]; then
    rm -rf "$cache/kernels" "$cache/nv"
    echo "$build_id" > "$cache/BUILD"
fi
cache_files_at_start=$(find "$cache" -type f | wc -l)

# The cubecl configuration of every step but the profile (each runs in $work, where cubecl
# looks for it): compiled kernels and autotune results cached across the steps' processes and
# across runs; the CUDA driver's own JIT cache beside them.
cubecl_cache="[compilation]
cache = { file = \"$cache/kernels\" }

[autotune]
cache = { file = \"$cache/autotune\" }
"
printf '%s' "$cubecl_cache" > "$work/cubecl.toml"
export CUDA_CACHE_PATH="$cache/nv"
export PEDCONV_GOLDEN_DIR="$root/tests/fixtures/golden"
cd "$work" || exit 1

# record STEP STATUS: adds a row to the notes' table and publishes them.
record() {
    rows="$rows| $1 | $2 |"$'\n'
    case $2 in passed*) ;; *) failed=1 ;; esac
    write_notes
    publish
}

# step NAME BUDGET_S REQUIREMENT COMMAND...: runs COMMAND (output in logs/NAME.log) for at most
# BUDGET_S seconds and what is left before the deadline, unless REQUIREMENT (gpu, torch,
# gpu+torch or none) is missing.
step() {
    local name=$1 budget=$2 needs=$3
    shift 3
    local reason=""
    case $needs in
        gpu) reason=$no_gpu ;;
        torch) reason=$no_torch ;;
        gpu+torch) reason=${no_gpu:-$no_torch} ;;
    esac
    if [ -n "$reason" ]; then
        echo "== $name: not run: $reason" >&2
        record "$name" "not run: $reason"
        return
    fi
    local left=$((end - SECONDS))
    if [ "$left" -lt 5 ]; then
        record "$name" "not run: the deadline (${deadline_s} s) was reached"
        return
    fi
    local limit=$((budget < left ? budget : left))
    echo "== $name (at most $limit s): $*" >&2
    local start=$SECONDS
    timeout --kill-after=5 "$limit" "$@" > "logs/$name.log" 2>&1
    local rc=$? took=$((SECONDS - start))
    tail -n 5 "logs/$name.log" >&2
    case $rc in
        0) record "$name" "passed in $took s" ;;
        124 | 137) record "$name" "TIMED OUT after $limit s" ;;
        *) record "$name" "FAILED (exit $rc) after $took s" ;;
    esac
}

# CUDA's compiler: on the path, else in the toolkit's usual place; nothing when neither.
find_nvcc() {
    command -v nvcc || ls /usr/local/cuda/bin/nvcc 2> /dev/null | head -n 1
}

# What the machine is, and the environment the CUDA steps need.
preflight() {
    echo "date: $started"
    echo "CPU threads: $(nproc)"
    if ! command -v nvidia-smi > /dev/null; then
        echo "nvidia-smi: not found"
    else
        nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
    fi
    local nvcc
    nvcc=$(find_nvcc)
    if [ -n "$nvcc" ]; then
        "$nvcc" --version | tail -n 2
        echo "CUDA_PATH=$CUDA_PATH"
    else
        echo "nvcc: not found (cubecl-cuda needs CUDA's headers: set CUDA_PATH)"
    fi
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    for library in libcuda.so libnvrtc.so libnccl.so; do
        local found
        found=$(ldconfig -p 2> /dev/null | grep -F "$library" | awk '{print $NF}' | head -n 3)
        found="$found $(find ${LD_LIBRARY_PATH//:/ } -maxdepth 1 -name "$library*" 2> /dev/null)"
        echo "$library: $(echo $found | tr '\n' ' ')"
    done
    python3 -c 'import torch; print("PyTorch", torch.__version__, "CUDA", torch.version.cuda, "available:", torch.cuda.is_available())' 2>&1 | tail -n 1
    echo "kernel and autotune cache at the start: $cache_files_at_start files"
    if [ -n "$no_gpu" ]; then
        echo "The GPU steps cannot run: $no_gpu"
        return 1
    fi
}

# CUDA_PATH from nvcc where unset; CUDA's and NCCL's libraries on the loader path (cudarc loads
# them by name, and looks for libnccl.so but not pip's libnccl.so.2).
prepare_cuda() {
    if ! command -v nvidia-smi > /dev/null; then
        no_gpu="no NVIDIA GPU (nvidia-smi not found)"
    elif ! nvidia-smi -L > /dev/null 2>&1; then
        no_gpu="no NVIDIA GPU (nvidia-smi -L failed)"
    fi
    local nvcc
    nvcc=$(find_nvcc)
    if [ -z "${CUDA_PATH:-}" ] && [ -n "$nvcc" ]; then
        CUDA_PATH=$(dirname "$(dirname "$(readlink -f "$nvcc")")")
    fi
    export CUDA_PATH=${CUDA_PATH:-}
    local paths="$work/lib"
    if [ -n "$CUDA_PATH" ]; then
        for dir in "$CUDA_PATH/lib64" "$CUDA_PATH/targets/x86_64-linux/lib"; do
            [ -d "$dir" ] && paths="$paths:$dir"
        done
    fi
    local nccl
    nccl=$( (ldconfig -p 2> /dev/null | grep -F 'libnccl.so' | awk '{print $NF}';
        python3 -c 'import site; print("\n".join(site.getsitepackages()))' 2> /dev/null |
            xargs -I{} find {} -name 'libnccl.so*' 2> /dev/null) | head -n 1)
    [ -n "$nccl" ] && ln -sf "$nccl" "$work/lib/libnccl.so"
    export LD_LIBRARY_PATH="$paths${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    if ! python3 -c 'import torch' > /dev/null 2>&1; then
        no_torch="PyTorch is not installed (python3 -c 'import torch' failed)"
    fi
}

# The learning check: `pedconv train` on the built-in 12-class set on CUDA, then whether the
# training loss fell and the validation top-1 rose from the first epoch to the last.
learn() {
    "$bin/pedconv" train --backend cuda --epochs 4 --output learn || return
    python3 - learn/report.json << 'EOF'
import json, sys
epochs = json.load(open(sys.argv[1]))["epochs"]
print("| epoch | train loss | valid top-1 % | train img/s |")
print("| ---: | ---: | ---: | ---: |")
for e in epochs:
    print(f"| {e['epoch']} | {e['train']['Loss']:.4f} | {e['valid']['Accuracy']:.1f} "
          f"| {e['images_per_second']:.0f} |")
first, last = epochs[0], epochs[-1]
falls = last["train"]["Loss"] < first["train"]["Loss"]
rises = last["valid"]["Accuracy"] > first["valid"]["Accuracy"]
print(f"loss falls: {falls}; top-1 rises: {rises}")
sys.exit(0 if falls and rises else 1)
EOF
}

# A profile of pedconv's PEDConv ResNet-18 training steps (bfloat16, 128×224²): the bench with
# CubeCL's profiling logger on (every kernel timed on the device, which slows the run: apart
# from the timed steps), in a folder of its own; the most expensive kernels of the training
# steps, per step.
profile() {
    mkdir -p profile && cd profile || return
    printf '%s\n[profiling]\nlogger = { level = "basic", stderr = true }\n' "$cubecl_cache" \
        > cubecl.toml
    "$bin/pedconv" bench --backend cuda --layers none --networks r18 --settings 128x224 \
        --precision bf16 --reps 1 --output . 2> kernels.log
    local rc=$?
    python3 "$root/bench/cubecl_profile.py" kernels.log --steps 4 --top 15 > pedconv-profile.md
    return $((rc > 0 ? rc : $?))
}

# The last lines of a log in a code block, or why there is none.
log_tail() {
    echo '```'
    if [ -f "logs/$1.log" ]; then tail -n "$2" "logs/$1.log"; else echo "(no log: not run)"; fi
    echo '```'
}

# A test binary's outcome: its summary, the failed tests and their messages.
test_summary() {
    echo '```'
    if [ -f "logs/$1.log" ]; then
        grep -E "^test result|^test .* FAILED|panicked|error |largest|allowed" "logs/$1.log" |
            head -n 40
    else
        echo "(no log: not run)"
    fi
    echo '```'
}

# A file's text where it exists, else FALLBACK's output.
file_or() {
    if [ -f "$1" ]; then cat "$1"; else shift; "$@"; fi
}

# A benchmark's tables: bench.md once written, else the rows measured so far.
bench_tables() {
    if [ -f "$1/bench.md" ]; then
        cat "$1/bench.md"
    elif [ -f "$1/bench.jsonl" ]; then
        echo "The run stopped before its report; the rows it measured (bench.jsonl):"
        echo '```'
        cat "$1/bench.jsonl"
        echo '```'
    else
        echo "(no rows)"
    fi
}

write_notes() {
    {
        echo "# GPU check"
        echo
        echo "Written by \`gpu-check/run.sh\` (built by \`cargo xtask gpu-check\`), started"
        echo "$started, deadline ${deadline_s} s; $((SECONDS)) s in when last written."
        echo
        echo "## The machine"
        echo
        log_tail preflight 20
        echo
        echo "## Steps"
        echo
        echo "| step | outcome |"
        echo "| --- | --- |"
        printf '%s' "$rows"
        echo
        echo "## Side by side: pedconv and PyTorch (bfloat16, batch 128, 224²)"
        echo
        file_or torch/side-by-side.md log_tail torch-bench 10
        echo
        echo "## pedconv bench, bfloat16"
        echo
        bench_tables bench
        echo
        echo "## Learning check: pedconv train on the built-in set, CUDA"
        echo
        log_tail learn 12
        echo
        echo "## Profiles of one training step (PEDConv ResNet-18, bfloat16, 128×224²)"
        echo
        echo "### pedconv (CubeCL's profiling logger)"
        echo
        file_or profile/pedconv-profile.md log_tail profile 8
        echo
        echo "### The paper's PyTorch code (torch.profiler)"
        echo
        for file in torch/profile-*.md; do
            [ -f "$file" ] && { echo "#### $(basename "$file" .md)"; echo; cat "$file"; echo; }
        done
        echo "## Kernels against their references on CUDA (lib-tests)"
        echo
        test_summary kernels
        echo
        echo "## Golden check of the PyTorch reference (CPU)"
        echo
        log_tail torch-golden 4
        echo
        echo "## PEDConv layers of ResNet-18 and -50 (float32, batch 32): Auto's rule on CUDA"
        echo
        bench_tables layers
        echo
        echo "## The suite's golden parity on CUDA"
        echo
        test_summary suite
        echo
        echo "## A user's crate with burn's default features (tests/downstream) on CUDA"
        echo
        log_tail downstream 12
        echo
        echo "## train-ddp (burn-train's DDP strategy over the one GPU; a build of its own)"
        echo
        log_tail train-ddp 12
    } > "$notes"
}

publish() {
    [ -n "${OUT:-}" ] || return 0
    mkdir -p "$OUT"
    cp "$notes" "$OUT/gpu-notes.md"
    tar -czf "$OUT/logs.tar.gz" --exclude=./lib --exclude='*.mpk' . 2> /dev/null
    tar -czf "$OUT/gpu-cache.tar.gz" -C "$check" cache 2> /dev/null
}

prepare_cuda
export -f preflight find_nvcc learn profile
export started no_gpu bin root cache_files_at_start cubecl_cache
step preflight 10 none bash -c preflight
step kernels 40 gpu "$bin/lib-tests" on_the_gpu --test-threads=1
step torch-golden 15 torch python3 "$torch_script" check-golden --golden "$PEDCONV_GOLDEN_DIR"
step torch-bench 100 gpu+torch python3 "$torch_script" bench --settings 128x224 \
    --precision bf16 --reps 5 --profile 15 --output torch --pedconv bench
step bench 140 gpu "$bin/pedconv" bench --backend cuda --layers none --networks r18 \
    --settings 128x224 --precision bf16 --reps 5 --output bench
step table 10 torch python3 "$torch_script" table --torch torch --pedconv bench
step learn 50 gpu bash -c learn
step profile 40 gpu bash -c profile
step layers 50 gpu "$bin/pedconv" bench --backend cuda --layers r18,r50 --layer-batch 32 \
    --networks none --reps 3 --output layers
step suite 40 gpu "$bin/suite" golden_parity --test-threads=1
step downstream 15 gpu "$bin/downstream"
step train-ddp 30 gpu "$bin/pedconv-ddp" train --backend cuda --devices 0 --epochs 1 \
    --output train-ddp
echo "wrote $notes" >&2
exit $failed
