"""One rank of the FSDP check (test_fsdp.py): a small MLP under FullyShardedDataParallel on CPU
(gloo), each rank reporting the coordinates its shard owns; a plain replica computes the reduced
gradient independently for comparison."""

import copy
import os
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

import gradtel
from gradtel.torch import watch_fsdp


def main(socket: str, out: str, steps: int) -> int:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    # Odd sizes, so shard boundaries fall inside parameters.
    model = nn.Sequential(nn.Linear(10, 37), nn.Tanh(), nn.Linear(37, 5))
    ref = copy.deepcopy(model)
    fsdp = FSDP(model, device_id=torch.device("cpu"))
    # The ranks' reports are shards of one (reduced) gradient: one data-parallel replica.
    client = gradtel.Client("py-fsdp", rank=0, world_size=1, shard=rank, shard_count=world,
                            socket=socket)
    w = watch_fsdp(fsdp, client)
    expected = {n: [] for n, _ in ref.named_parameters()}
    gen = torch.Generator().manual_seed(100 + rank)
    for _ in range(steps):
        x, y = torch.randn(8, 10, generator=gen), torch.randn(8, 5, generator=gen)
        fsdp.zero_grad(set_to_none=True)
        nn.functional.mse_loss(fsdp(x), y).backward()
        w.end_step()
        ref.zero_grad(set_to_none=True)
        nn.functional.mse_loss(ref(x), y).backward()
        for n, p in ref.named_parameters():
            g = p.grad.detach().clone()
            dist.all_reduce(g)
            expected[n].append((g / world).numpy().ravel())
        # No optimiser step: parameters stay equal, so the replica keeps matching.
    stats = w.close()
    assert stats.steps_delivered == steps, stats
    if rank == 0:
        np.savez(out, **{n: np.stack(v) for n, v in expected.items()})
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
