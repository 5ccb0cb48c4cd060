"""One process: train the digits CNN and report its gradients with ``gradtel.torch.watch``.

    python examples/watch_single.py --collector http://127.0.0.1:4317 --start-agent

``--start-agent`` starts a ``gradtel-agent`` beside the process (found in $GRADTEL_BIN_DIR or on
PATH); without it, one must already listen on ``--socket``.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

import gradtel
from gradtel.torch import watch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from ddp_digits import SmallCNN, batches, load_digits  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--run-id", default="single-digits")
    p.add_argument("--collector", default="http://127.0.0.1:4317")
    p.add_argument("--socket", default="gradtel-agent.sock")
    p.add_argument("--start-agent", action="store_true")
    p.add_argument("--params", nargs="*", help="report only these parameters (default: all)")
    args = p.parse_args(argv)

    agent = None
    if args.start_agent:
        from gradtel.sidecar import Agent

        agent = Agent(args.socket, args.collector)
    torch.manual_seed(0)
    model = SmallCNN()
    client = gradtel.Client(args.run_id, socket=args.socket)
    watcher = watch(model, client, params=args.params or None)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    x_all, y_all = load_digits()
    for step, idx in enumerate(batches(len(y_all), args.batch, 0, 1, 0, args.steps)):
        x, y = torch.from_numpy(x_all[idx]), torch.from_numpy(y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        watcher.end_step(loss=loss, lr=args.lr, batch_size=args.batch)
        if (step + 1) % 50 == 0:
            print(f"step {step + 1} loss {loss.item():.4f}", flush=True)
    print("gradtel:", watcher.close().summary())
    if agent is not None:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
