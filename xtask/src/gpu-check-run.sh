#!/usr/bin/env bash
# The GPU check built by `cargo xtask gpu-check`. Run from anywhere on a machine with an NVIDIA
# GPU and its driver (no internet, no Rust needed): `bash gpu-check/run.sh`.
#
# Steps, in this order, each under `timeout` against one deadline (GPU_CHECK_DEADLINE seconds
# from the start, 420 by default): preflight (GPU, driver, nvcc, the CUDA libraries; CUDA_PATH
# and the loader path set) → the CubeCL kernels against their references on CUDA → a short
# training run, with the CUDA and the DDP builds → pedconv's benchmarks and the paper's PyTorch
# code beside them → the rest of the suite. After every step it rewrites docs/gpu-notes.md and,
# where $OUT is set, copies there the notes and logs.tar.gz (every step's log and results so
# far): two files, so that a run stopped at any moment returns what it has seen.
#
# Exits 0 only when every step ran and passed. Without a GPU every step is recorded as not run,
# with the reason, in a few seconds.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
check="$root/gpu-check"
deadline_s=${GPU_CHECK_DEADLINE:-420}
end=$((SECONDS + deadline_s))
work="$check/work"
notes="$root/docs/gpu-notes.md"
rm -rf "$work"
mkdir -p "$work/logs" "$work/lib" "$check/cache" "$(dirname "$notes")"
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

# One cubecl configuration for every step (each runs in $work, where cubecl looks for it): the
# compiled kernels and the autotune results cached across the steps' processes.
cat > "$work/cubecl.toml" <<EOF
[compilation]
cache = { file = "$check/cache/kernels" }

[autotune]
cache = { file = "$check/cache/autotune" }
EOF
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

# The training configuration of the short runs: the synthetic ImageNet-shaped recipe, with
# 2,560 training and 512 validation images.
short_config() {
    sed -e 's/"train_images": [0-9]*/"train_images": 2560/' \
        -e 's/"valid_images": [0-9]*/"valid_images": 512/' \
        "$root/configs/pedconv-resnet18-synthetic.json" > "$work/short-synthetic.json"
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
        echo "## Kernels against their references on CUDA (lib-tests)"
        echo
        test_summary kernels
        echo
        echo "## Short training runs"
        echo
        echo "### train"
        echo
        log_tail train 12
        echo
        echo "### train-ddp (burn-train's DDP strategy over the one GPU)"
        echo
        log_tail train-ddp 12
        echo
        echo "## A user's crate with burn's default features (tests/downstream) on CUDA"
        echo
        log_tail downstream 12
        echo
        echo "## pedconv bench, bfloat16"
        echo
        bench_tables bench-bf16
        echo
        echo "## The paper's PyTorch code beside pedconv"
        echo
        echo "### Golden check of the PyTorch reference (CPU)"
        echo
        log_tail torch-golden 4
        echo
        if [ -f torch/side-by-side.md ]; then cat torch/side-by-side.md; else log_tail torch-bench 10; fi
        echo
        echo "## pedconv bench, float32"
        echo
        bench_tables bench
        echo
        echo "## The suite on CUDA"
        echo
        test_summary suite
    } > "$notes"
}

publish() {
    [ -n "${OUT:-}" ] || return 0
    cp "$notes" "$OUT/gpu-notes.md"
    tar -czf "$OUT/logs.tar.gz" --exclude=./lib --exclude='*.mpk' . 2> /dev/null
}

prepare_cuda
short_config
export -f preflight find_nvcc
export started no_gpu
step preflight 20 none bash -c preflight
step kernels 90 gpu "$bin/lib-tests" --test-threads=1
step train 60 gpu "$bin/pedconv" train --backend cuda --config short-synthetic.json --output train
step train-ddp 60 gpu "$bin/pedconv-ddp" train --backend cuda --devices 0 \
    --config short-synthetic.json --output train-ddp
step downstream 45 gpu "$bin/downstream"
step bench-bf16 90 gpu "$bin/pedconv" bench --backend cuda --layers none --networks r18 \
    --settings 128x224 --precision bf16 --reps 5 --output bench-bf16
step torch-golden 30 torch python3 "$root/bench/torch_reference.py" check-golden \
    --golden "$PEDCONV_GOLDEN_DIR"
step torch-bench 90 gpu+torch python3 "$root/bench/torch_reference.py" bench \
    --settings 128x224 --precision bf16 --reps 5 --output torch \
    --pedconv bench-bf16
step bench 150 gpu "$bin/pedconv" bench --backend cuda --layers r18,r50 --layer-batch 32 \
    --networks r18 --settings 128x224,64x224 --reps 3 --output bench
step suite 300 gpu "$bin/suite" --test-threads=1
echo "wrote $notes" >&2
exit $failed
