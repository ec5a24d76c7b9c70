#!/usr/bin/env bash
# Checks the NCCL collective on a machine with an NVIDIA GPU, in about five
# minutes, with release binaries built elsewhere (no CUDA build here). Build
# them on any machine (no GPU or CUDA toolkit needed) and carry `gpu-bin/`:
#
#   scripts/gpu-check.sh --build      # writes gpu-bin/{nccl_gpu,moe_training}
#   scripts/gpu-check.sh              # on the GPU machine
#
# Needs there: the NVIDIA driver (libcuda), libnvrtc and CUDA headers (burn's
# kernels are compiled at run time: CUDA_PATH or /usr/local/cuda), and a
# libnccl.so.2 (for example from a pip `nvidia-nccl-cu*` wheel; the script
# searches the Python site-packages and the usual library folders).
#
# Runs: (a) world size 1: device packing, f32 and bf16 in-place all-reduce,
# one reducer step on a small conditional model against the CPU reference;
# (b) the main job for a few steps with `--collective nccl`; (c) two ranks on
# one GPU, best effort (NCCL refuses duplicate GPUs unless each rank claims
# its own host, NCCL_HOSTID); (d) the bucket all-reduce throughput, printed
# by (a) and (c). Exits non-zero if (a) or (b) fails; (c) only reports.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=gpu-bin

if [ "${1:-}" = "--build" ]; then
    set -e
    target=${CARGO_TARGET_DIR:-target}
    test_bin=$(cargo test --release -p maskddp-runtime --features nccl --test nccl_gpu \
        --no-run --message-format=json \
        | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
    cargo build --release --example moe_training --features nccl
    mkdir -p "$bin"
    cp "$test_bin" "$bin/nccl_gpu"
    cp "$target/release/examples/moe_training" "$bin/moe_training"
    # Without symbols each binary is about 30 MB instead of 40: less to carry.
    strip "$bin/nccl_gpu" "$bin/moe_training"
    ls -l "$bin"
    exit 0
fi

for file in nccl_gpu moe_training; do
    [ -x "$bin/$file" ] || { echo "FAIL: $bin/$file missing: run '$0 --build' first" >&2; exit 1; }
done

# cudarc looks for libnccl.so (and .so.13, .so.12, ...), pip wheels ship
# libnccl.so.2: link it under the name cudarc loads.
nccl=$(
    { python3 - <<'PY' 2>/dev/null
import site, sys
for d in site.getsitepackages() + [site.getusersitepackages()]:
    print(d)
PY
      echo /usr/lib/x86_64-linux-gnu /usr/local/lib /usr/local/cuda/lib64 /opt; } \
    | xargs -n1 2>/dev/null | while read -r dir; do
        [ -d "$dir" ] && find "$dir" -name 'libnccl.so.2*' 2>/dev/null
    done | head -n 1
)
if [ -z "$nccl" ]; then
    echo "SKIP: no libnccl.so.2 found (pip install nvidia-nccl-cu12 or cu13)"
    exit 0
fi
libdir=$(mktemp -d)
ln -s "$nccl" "$libdir/libnccl.so"
export LD_LIBRARY_PATH="$libdir:$(dirname "$nccl")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export NCCL_DEBUG=WARN
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
echo "libnccl: $nccl"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

status=0
echo "=== (a) world size 1: packing, f32/bf16 all-reduce, reducer step vs CPU, throughput"
timeout 300 "$bin/nccl_gpu" || status=1

echo "=== (b) main job, --collective nccl, 1 GPU, 30 steps"
timeout 300 "$bin/moe_training" --collective nccl --ranks 1 --steps 30 || status=1

echo "=== (c) two ranks on one GPU, one process each (best effort)"
port=$((29500 + RANDOM % 1000))
pids=()
for rank in 0 1; do
    RANK=$rank WORLD_SIZE=2 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
        NCCL_HOSTID="maskddp-rank-$rank" \
        timeout 180 "$bin/nccl_gpu" >"$libdir/rank$rank.log" 2>&1 &
    pids+=($!)
done
two=0
for pid in "${pids[@]}"; do wait "$pid" || two=1; done
cat "$libdir/rank0.log" "$libdir/rank1.log"
if [ "$two" -eq 0 ]; then
    echo "=== (c) main job on two ranks of one GPU"
    for rank in 0 1; do
        RANK=$rank WORLD_SIZE=2 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=$((port + 1)) \
            NCCL_HOSTID="maskddp-rank-$rank" \
            timeout 180 "$bin/moe_training" --collective nccl --steps 30 \
            >"$libdir/job$rank.log" 2>&1 &
        pids[rank]=$!
    done
    for pid in "${pids[@]}"; do wait "$pid" || two=1; done
    cat "$libdir/job0.log"
fi
echo "(c) two ranks on one GPU: $([ "$two" -eq 0 ] && echo ok || echo 'did not work (best effort)')"

[ "$status" -eq 0 ] && echo "gpu-check: passed" || echo "gpu-check: FAILED"
exit "$status"
