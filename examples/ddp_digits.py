"""Data-parallel training of a small CNN on the 8×8 digits, every rank reporting its local
(pre-all-reduce) gradients to its own gradtel agent through a DDP communication hook.

Launch with torchrun (CPU, gloo):

    torchrun --nproc_per_node 2 examples/ddp_digits.py --collector http://127.0.0.1:4317 --start-agent

``--start-agent`` starts each rank's ``gradtel-agent`` beside it (socket ``--socket``, where
``{rank}`` is replaced); without it the agents are expected to be running already. Any launcher
that sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT works the same way. ``--no-gradtel`` runs
the identical training without telemetry (the tests compare the two models).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8×8 digits (scikit-learn's load_digits), stored in the repository: 64 pixel
    values 0..16 and the label per line."""
    with gzip.open(REPO / "trainer" / "data" / "digits.csv.gz", "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return data[:, :64].reshape(-1, 1, 8, 8) / 16.0, data[:, 64].astype(np.int64)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def batches(n: int, batch: int, rank: int, world: int, seed: int, steps: int):
    """Per step, this rank's slice of a global batch drawn from a seeded permutation: every rank
    sees different examples, and a rerun sees the same ones."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    at = 0
    for _ in range(steps):
        if at + batch * world > n:
            order, at = rng.permutation(n), 0
        glob = order[at : at + batch * world]
        at += batch * world
        yield glob[rank * batch : (rank + 1) * batch]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=32, help="examples per rank and step")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-id", default="ddp-digits")
    p.add_argument("--collector", default="http://127.0.0.1:4317")
    p.add_argument("--socket", default="gradtel-agent-{rank}.sock")
    p.add_argument("--start-agent", action="store_true", help="start this rank's agent beside it")
    p.add_argument("--every", type=int, default=1, help="report every N-th step")
    p.add_argument("--no-gradtel", action="store_true", help="train without telemetry")
    p.add_argument("--save-model", help="write the final parameters (rank 0) to this .npz")
    p.add_argument("--stats", help="write this rank's client stats and step times as JSON here "
                   "({rank} is replaced)")
    p.add_argument("--record-local", help="(verification) save this rank's local gradients, "
                   "taken by independent tensor hooks, to this .npz ({rank} is replaced)")
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to idle per step")
    p.add_argument("--probe", choices=["torch-hook", "paused"],
                   help="(benchmark) torch-hook: no gradtel, torch's own Python all-reduce hook "
                        "registered instead; paused: gradtel's hook registered, no step reported")
    p.add_argument("--toggle", type=int, default=0, metavar="N",
                   help="(benchmark) report only in every other block of N steps; --stats "
                        "marks which steps were watched")
    p.add_argument("--bucket-view", action="store_true",
                   help="DDP(gradient_as_bucket_view=True): gradients are views of the buckets")
    args = p.parse_args(argv)

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(args.seed)
    model = SmallCNN()
    ddp = DDP(model, gradient_as_bucket_view=args.bucket_view)

    watcher = agent = None
    if args.probe == "torch-hook" and args.no_gradtel:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        ddp.register_comm_hook(None, allreduce_hook)
    if not args.no_gradtel:
        import gradtel
        from gradtel.torch import watch_ddp

        socket = args.socket.format(rank=rank)
        if args.start_agent:
            from gradtel.sidecar import Agent

            agent = Agent(socket, args.collector)
        client = gradtel.Client(args.run_id, rank=rank, world_size=world, socket=socket)
        watcher = watch_ddp(ddp, client, every=args.every)

    recorded: dict[str, list[np.ndarray]] = {}
    if args.record_local:
        # Tensor hooks see each parameter's gradient as autograd computes it on this rank,
        # before DDP reduces it: an independent record of the local gradient.
        for name, prm in model.named_parameters():
            recorded[name] = []
            prm.register_hook(lambda g, name=name: recorded[name].append(g.detach().clone().numpy()))

    x_all, y_all = load_digits()
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)
    # CPU time per step, of the whole rank process (every thread: the training thread, gloo's,
    # and the client's sender and grpcio threads) and of the training thread alone: in a
    # toggled run, the difference between watched and unwatched steps is what the client
    # costs the rank in CPU (on a machine whose cores the sidecars share it also holds the
    # slowdown they cause: caches, memory bandwidth).
    step_times, step_cpu, step_thread_cpu, watched = [], [], [], []
    for step, idx in enumerate(batches(len(y_all), args.batch, rank, world, args.seed, args.steps)):
        if watcher is not None and args.toggle:
            watcher.paused = (step // args.toggle) % 2 == 1
        if watcher is not None and args.probe == "paused":
            watcher.paused = True
        watched.append(watcher is not None and watcher.active)
        t0, c0, h0 = time.perf_counter(), time.process_time(), time.thread_time()
        x, y = torch.from_numpy(x_all[idx]), torch.from_numpy(y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
        if watcher is not None:
            watcher.end_step(loss=loss, lr=args.lr, batch_size=args.batch)
        step_times.append(time.perf_counter() - t0)
        step_cpu.append(time.process_time() - c0)
        step_thread_cpu.append(time.thread_time() - h0)
        if args.step_sleep:
            time.sleep(args.step_sleep)
        if rank == 0 and (step + 1) % 10 == 0:
            print(f"step {step + 1} loss {loss.item():.4f}", flush=True)

    stats = watcher.close() if watcher is not None else None
    if agent is not None:
        agent.stop()
    if stats is not None:
        print(f"rank {rank} gradtel: {stats.summary()}", flush=True)
    if args.stats:
        with open(args.stats.format(rank=rank), "w") as f:
            json.dump(
                {"rank": rank, "step_times": step_times, "step_cpu": step_cpu,
                 "step_thread_cpu": step_thread_cpu, "watched": watched,
                 "client": None if stats is None else {**stats.__dict__,
                                                        "steps_dropped": stats.steps_dropped}},
                f,
            )
    if args.record_local:
        np.savez(args.record_local.format(rank=rank),
                 **{k: np.stack(v) for k, v in recorded.items()})
    if args.save_model and rank == 0:
        np.savez(args.save_model, **{k: v.detach().numpy() for k, v in model.state_dict().items()})
    dist.destroy_process_group()
    if (watcher is not None or args.probe == "torch-hook") and _torch_before(2, 8):
        # Before torch 2.8 the gloo process group, destroyed with the DDP model when this
        # function returns, joins its worker threads while holding the GIL; a worker still
        # finishing a Python future callback (the all-reduce of every Python communication
        # hook has one) then waits for the GIL forever (torch issue 56297) — seen in 3 of
        # about 65 runs on a 2-core machine. Everything is written: leave without it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def _torch_before(major: int, minor: int) -> bool:
    version = torch.__version__.split("+")[0].split(".")
    return tuple(int(v) for v in version[:2] if v.isdigit()) < (major, minor)


if __name__ == "__main__":
    sys.exit(main())
