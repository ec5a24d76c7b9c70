"""PyTorch DDP side of the maskddp-vs-PyTorch benchmark (see run.sh).

Two ranks as processes, gloo over loopback, one intra-op thread each, CPU.
The model and the routings match benches/vs_pytorch/main.rs:

  encoder Linear(256, 256) -> relu
  8 experts, each Linear(256, 1024) -> relu -> Linear(1024, 256), summed onto
    the encoder output (residual)
  head Linear(256, 256), always used
  4 336 128 parameters, 16.54 MiB of f32

Routings: `conditional` (rank r at step s runs expert (s*world + r) mod 8) and
`all` (every expert every step on every rank). The encoder and the head are
used on every path in both.

Each step pair runs one step of a plain copy of the model ("local": forward,
MSE loss, backward, SGD step) and one of a DDP-wrapped copy
(find_unused_parameters=True), each started right after a barrier. A step's
time is the slowest rank's; the result is the median over the measured steps,
printed as one JSON line per routing by rank 0.

Bytes per step = what DDP hands to all-reduce per rank: the gradient buckets
(counted by a comm hook in an untimed probe) plus the int32 per parameter
tensor of the local-used map that find_unused_parameters all-reduces every
step.
"""

import argparse
import gc
import json
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

WORLD = 2
WIDTH = 256
EXPERT_HIDDEN = 1024
EXPERTS = 8
LR = 1e-3


class Expert(nn.Sequential):
    def __init__(self):
        super().__init__(
            nn.Linear(WIDTH, EXPERT_HIDDEN), nn.ReLU(), nn.Linear(EXPERT_HIDDEN, WIDTH)
        )


class MoeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(WIDTH, WIDTH)
        self.experts = nn.ModuleList(Expert() for _ in range(EXPERTS))
        self.head = nn.Linear(WIDTH, WIDTH)

    def forward(self, x, route):
        h = torch.relu(self.encoder(x))
        y = h
        for expert in route:
            y = y + self.experts[expert](h)
        return self.head(y)


def route(routing, step, rank):
    if routing == "all":
        return list(range(EXPERTS))
    return [(step * WORLD + rank) % EXPERTS]


def train_step(model, optimizer, x, target, experts):
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.mse_loss(model(x, experts), target)
    loss.backward()
    optimizer.step()


def batch(size):
    x = torch.rand(size, WIDTH) * 2 - 1
    return x, torch.randn(size, WIDTH)


def timed(fn):
    dist.barrier()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def bytes_per_step(routing, args, rank):
    """Runs a few untimed DDP steps with a comm hook that counts the bytes of
    every bucket handed to all-reduce; returns (bucket bytes, used-map bytes)
    of the last step."""
    torch.manual_seed(0)
    model = DDP(MoeNet(), find_unused_parameters=True)
    counted = [0]

    def counting_allreduce(state, bucket):
        buffer = bucket.buffer()
        counted[0] += buffer.numel() * buffer.element_size()
        return default_hooks.allreduce_hook(state, bucket)

    model.register_comm_hook(None, counting_allreduce)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(3):  # the buckets are rebuilt after the first step
        counted[0] = 0
        train_step(model, optimizer, *batch(args.batch), route(routing, step, rank))
    used_map = model.reducer._get_local_used_map()
    return counted[0], used_map.numel() * used_map.element_size()


def median_of_slowest(times_per_rank):
    """The median over steps of the slowest rank's time."""
    return statistics.median(max(step) for step in zip(*times_per_rank))


def run_routing(routing, args, rank):
    bucket_bytes, used_map_bytes = bytes_per_step(routing, args, rank)

    torch.manual_seed(0)
    local = MoeNet()
    local_opt = torch.optim.SGD(local.parameters(), lr=LR)
    wrapped = DDP(MoeNet(), find_unused_parameters=True)
    ddp_opt = torch.optim.SGD(wrapped.parameters(), lr=LR)

    torch.manual_seed(1 + rank)  # each rank its own data
    local_ms, ddp_ms = [], []
    for step in range(args.warmup + args.steps):
        experts = route(routing, step, rank)
        x, target = batch(args.batch)
        t_local = timed(lambda: train_step(local, local_opt, x, target, experts))
        t_ddp = timed(lambda: train_step(wrapped, ddp_opt, x, target, experts))
        if step >= args.warmup:
            local_ms.append(t_local)
            ddp_ms.append(t_ddp)

    every = [None] * WORLD
    dist.all_gather_object(every, (local_ms, ddp_ms))
    if rank != 0:
        return
    params = sum(p.numel() for p in local.parameters())
    result = {
        "impl": "pytorch",
        "routing": routing,
        "world": WORLD,
        "batch": args.batch,
        "warmup": args.warmup,
        "steps": args.steps,
        "params": params,
        "param_bytes": 4 * params,
        "local_ms": median_of_slowest([local for local, _ in every]),
        "ddp_ms": median_of_slowest([ddp for _, ddp in every]),
        "bytes_per_step": bucket_bytes + used_map_bytes,
        "bucket_bytes": bucket_bytes,
        "used_map_bytes": used_map_bytes,
        "intra_op_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(json.dumps(result), flush=True)


def worker(rank, port, args):
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    for routing in args.routing:
        run_routing(routing, args, rank)
        # DDP modules sit in reference cycles: free them (and their gloo
        # work) now, not at interpreter exit after the group is gone, which
        # intermittently aborts with "terminate called without an active
        # exception".
        gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--routing",
        nargs="+",
        choices=["conditional", "all"],
        default=["conditional", "all"],
    )
    parser.add_argument("--batch", type=int, default=32, help="samples per rank")
    parser.add_argument("--warmup", type=int, default=10, help="step pairs")
    parser.add_argument("--steps", type=int, default=50, help="measured step pairs")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned ranks
    mp.spawn(worker, args=(free_port(), args), nprocs=WORLD)


if __name__ == "__main__":
    main()
