#!/usr/bin/env bash
# maskddp against PyTorch DDP, one command: installs torch into
# benches/vs_pytorch/.venv if it is missing (PyPI's Linux wheel, ~5 GB with its
# CUDA libraries; only the CPU is used), builds the `vs_pytorch` bench in
# release, runs ddp.py and the bench alternately for --rounds rounds (both
# routings each), and prints the table of report.py. See BENCHMARKS.md.
#
#   benches/vs_pytorch/run.sh [--rounds 5] [--steps 50] [--warmup 10] [--batch 32]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."

rounds=5 steps=50 warmup=10 batch=32
while (($#)); do
    case $1 in
    --rounds) rounds=$2 ;;
    --steps) steps=$2 ;;
    --warmup) warmup=$2 ;;
    --batch) batch=$2 ;;
    -h | --help)
        sed -n '2,8s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    *)
        echo "unknown argument $1 (try --help)" >&2
        exit 2
        ;;
    esac
    shift 2
done

venv=$here/.venv
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    echo "installing torch into benches/vs_pytorch/.venv ..." >&2
    python3 -m venv "$venv"
    # numpy only silences torch's warning that it is missing.
    "$venv/bin/pip" install --quiet torch numpy
fi

echo "building the vs_pytorch bench (release) ..." >&2
bench=$(cargo bench --bench vs_pytorch --no-run --message-format=json-render-diagnostics |
    python3 -c 'import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "vs_pytorch":
        print(msg["executable"])')

results=$(mktemp) log=$(mktemp)
trap 'rm -f "$results" "$log"' EXIT
args=(--batch "$batch" --warmup "$warmup" --steps "$steps")
pytorch=("$venv/bin/python" "$here/ddp.py" "${args[@]}")
maskddp=("$bench" "${args[@]}")

run() { # stdout (the JSON lines) to the results, stderr to the log
    "$@" >>"$results" 2>>"$log" || {
        cat "$log" >&2
        exit 1
    }
}

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
started=$SECONDS
for ((round = 1; round <= rounds; round++)); do
    # Alternate which side goes first, so drift of the machine hits both.
    if ((round % 2)); then
        run "${pytorch[@]}"
        run "${maskddp[@]}"
    else
        run "${maskddp[@]}"
        run "${pytorch[@]}"
    fi
    echo "round $round/$rounds done ($((SECONDS - started)) s)" >&2
done
python3 "$here/report.py" "$results"
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); measuring took $((SECONDS - started)) s"
