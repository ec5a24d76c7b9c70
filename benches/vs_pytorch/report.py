"""Prints the comparison table of run.sh from the JSON lines of ddp.py and
the vs_pytorch bench (standard library only).

Every JSON line is one routing of one run; the n-th line of an (impl, routing)
pair is round n. Cells are the median over rounds and the spread (min-max);
the overhead ratio is taken per round (maskddp's overhead over PyTorch's in
the same round) before its median.
"""

import json
import statistics
import sys
from collections import defaultdict

IMPLS = ("pytorch", "maskddp")
ROUTINGS = ("conditional", "all")
TARGETS = {"conditional": 0.10, "all": 0.25}  # overhead ratio maskddp/PyTorch
PHASES = ("pack_ms", "exchange_ms", "all_reduce_ms", "unpack_ms", "reduce_ms")


def load(path):
    """(impl, routing) -> one dict per round, with the overhead added."""
    runs = defaultdict(list)
    with open(path) as lines:
        for line in lines:
            if line.startswith("{"):
                run = json.loads(line)
                run["overhead_ms"] = run["ddp_ms"] - run["local_ms"]
                runs[run["impl"], run["routing"]].append(run)
    rounds = min(len(rs) for rs in runs.values())
    return {key: rs[:rounds] for key, rs in runs.items()}, rounds


def spread(values, digits=2):
    """Median (min–max)."""
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}–{max(values):.{digits}f})"
    )


def mib(value):
    return f"{value / 2**20:.2f} MiB"


def overhead_ratios(runs, routing):
    """maskddp's overhead over PyTorch's, round by round."""
    return [
        m["overhead_ms"] / p["overhead_ms"]
        for m, p in zip(runs["maskddp", routing], runs["pytorch", routing])
    ]


def print_comparison(runs, rounds):
    first = runs["maskddp", ROUTINGS[0]][0]
    print(
        f"\nMoE, {first['params']:,} params ({mib(first['param_bytes'])} f32), "
        f"world {first['world']}, batch {first['batch']}/rank, SGD; "
        f"{first['warmup']} warm-up + {first['steps']} measured step pairs per run; "
        f"{rounds} rounds; cells: median over rounds (min–max)\n"
    )
    header = (
        f"{'workload':<12} {'impl':<8} {'local step ms':>22} {'DDP step ms':>22} "
        f"{'DDP overhead ms':>22} {'sent/step':>11}  {'overhead maskddp/PyTorch':>26}"
    )
    print(header)
    print("-" * len(header))
    for routing in ROUTINGS:
        for impl in IMPLS:
            rs = runs[impl, routing]
            cells = [spread([r[key] for r in rs]) for key in ("local_ms", "ddp_ms", "overhead_ms")]
            sent = mib(statistics.median(r["bytes_per_step"] for r in rs))
            ratio = spread(overhead_ratios(runs, routing), 3) if impl == "maskddp" else ""
            line = (
                f"{routing:<12} {impl:<8} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22} "
                f"{sent:>11}  {ratio:>26}"
            )
            print(line.rstrip())
    print()
    for routing in ROUTINGS:
        value, target = statistics.median(overhead_ratios(runs, routing)), TARGETS[routing]
        verdict = "met" if value <= target else f"missed, {value / target:.2f}x the target"
        print(f"target {routing}: ratio <= {target:.2f}: {value:.3f}, {verdict}")


def print_phases(runs):
    print("\nmaskddp reducer phases, rank 0 (median over rounds of per-run medians, ms):")
    print(
        f"{'workload':<12} {'pack':>7} {'exchange':>9} {'allreduce':>10} {'unpack':>7} "
        f"{'reduce()':>9} {'DDP-local':>10} {'params skipped':>15}"
    )
    for routing in ROUTINGS:
        rs = runs["maskddp", routing]
        values = [statistics.median(r[key] for r in rs) for key in PHASES + ("overhead_ms",)]
        widths = (7, 9, 10, 7, 9, 10)
        cells = " ".join(f"{v:>{w}.3f}" for v, w in zip(values, widths))
        print(f"{routing:<12} {cells} {rs[0]['params_skipped']:>15}")
    print(
        "(each column's median on its own: they need not add up. Within a step the four\n"
        " phases are all of reduce(); 'exchange' includes waiting for the other rank's backward)"
    )


def print_threads(runs):
    threads = sorted({r["process_threads"] for r in runs["maskddp", ROUTINGS[0]]})
    torch_threads = sorted({r["intra_op_threads"] for r in runs["pytorch", ROUTINGS[0]]})
    print(
        f"\nthreads: maskddp process {threads} (main + one per rank); "
        f"PyTorch intra-op threads per rank {torch_threads}; "
        f"torch {runs['pytorch', ROUTINGS[0]][0]['torch']}"
    )


def main():
    runs, rounds = load(sys.argv[1])
    print_comparison(runs, rounds)
    print_phases(runs)
    print_threads(runs)


if __name__ == "__main__":
    main()
