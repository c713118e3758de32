#!/usr/bin/python3
"""torch_ddp.py - PyTorch peer for `mhub train --model mlp`.

Trains the same MLP as mhub (Linear with bias, GELU tanh approximation
between layers, softmax cross-entropy, SGD with momentum) on random data
made once, and prints the median ms/step over the timed steps (rank 0).

  --world 1   one process, no DDP
  --world N   N processes, DistributedDataParallel over gloo on 127.0.0.1;
              each rank gets --batch/N samples (--batch is global)

A step is timed from zero_grad through forward, backward (DDP all-reduce
included) and optimizer.step(); the dist.barrier() that lines the ranks
up before each step is not timed.  Threads: --threads per rank (default:
cores / world), applied through OMP/OPENBLAS/MKL_NUM_THREADS and
torch.set_num_threads, with OMP_WAIT_POLICY=passive (unless set).

Run with the Debian torch: /usr/bin/python3 bench/peers/torch_ddp.py --help
"""
import argparse
import json
import os
import socket
import statistics
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", type=int, default=1, help="processes (1: no DDP)")
    p.add_argument("--features", type=int, default=784)
    p.add_argument("--hidden", default="1024,1024", help="comma-separated widths")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=128, help="global batch")
    p.add_argument("--steps", type=int, default=60, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--threads", type=int, default=0, help="per rank (0: cores/world)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--port", type=int, default=0, help="gloo master port (0: a free one)")
    p.add_argument("--json", action="store_true", help="print one line of JSON")
    a = p.parse_args()
    a.hidden = [int(w) for w in a.hidden.split(",") if w]
    if a.world < 1 or a.batch % a.world or a.steps < 1 or a.warmup < 0:
        p.error("need --world >= 1, --batch divisible by --world, --steps >= 1")
    if a.threads <= 0:
        a.threads = max(1, (os.cpu_count() or 1) // a.world)
    return a


def worker(rank, a):
    import torch
    import torch.distributed as dist
    from torch import nn

    torch.set_num_threads(a.threads)
    torch.manual_seed(1234 + rank)
    ddp = a.world > 1
    if ddp:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(a.world))
        dist.init_process_group("gloo", init_method="env://")

    widths = [a.features] + a.hidden + [a.classes]
    layers = []
    for i in range(len(widths) - 1):
        if i:
            layers.append(nn.GELU(approximate="tanh"))
        layers.append(nn.Linear(widths[i], widths[i + 1]))
    model = nn.Sequential(*layers)
    if ddp:  # DDP also broadcasts rank 0's initial weights
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum)
    loss_fn = nn.CrossEntropyLoss()
    rows = a.batch // a.world
    x = torch.randn(rows, a.features)
    y = torch.randint(0, a.classes, (rows,))

    times = []
    for step in range(a.warmup + a.steps):
        if ddp:
            dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if step >= a.warmup:
            times.append(1e3 * (time.perf_counter() - t0))

    if rank == 0:
        med = statistics.median(times)
        nparams = sum(p.numel() for p in model.parameters())
        res = {"impl": "torch-ddp" if ddp else "torch", "torch": torch.__version__,
               "world": a.world, "threads_per_rank": a.threads,
               "shape": "-".join(map(str, widths)), "params": nparams,
               "global_batch": a.batch, "warmup": a.warmup, "steps": a.steps,
               "median_ms": round(med, 3), "min_ms": round(min(times), 3),
               "last_loss": round(loss.item(), 4)}
        if a.json:
            print(json.dumps(res), flush=True)
        else:
            print(f"torch {torch.__version__}, {res['impl']}, world {a.world}, "
                  f"{a.threads} thread(s)/rank, {res['shape']} ({nparams} params), "
                  f"global batch {a.batch}: median {med:.3f} ms/step over "
                  f"{a.steps} steps (min {min(times):.3f})", flush=True)
    if ddp:
        dist.barrier()
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    a = parse_args()
    # before torch is imported here or in the spawned workers
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    # torch's OpenMP threads spin after each parallel region and then fight
    # OpenBLAS's threads for the cores (here, 2+2 threads: 13.5 vs 9.0 ms/step)
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    if a.world == 1:
        worker(0, a)
        return 0
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(a.port or free_port()),
                      GLOO_SOCKET_IFNAME="lo")
    import torch.multiprocessing as mp
    mp.spawn(worker, args=(a,), nprocs=a.world, join=True)  # raises if a rank fails
    return 0


if __name__ == "__main__":
    sys.exit(main())
