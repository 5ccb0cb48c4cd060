"""Step-time overhead of ``gradtel.torch.watch`` on one GPU training step of a ResNet-50
(25.6M parameters, 102 MB of f32 gradients per step), every step, all parameters, against the same
loop without gradtel, in alternating blocks in one process. Needs a CUDA GPU, torchvision, and the
gradtel binaries (``GRADTEL_BIN_DIR``). Results: bench/RESULTS.md.

    GRADTEL_BIN_DIR=target/release python3 bench/gpu_overhead.py [--batch 64] [--blocks 3]

It first measures the floor of any tool that reads every gradient on the host: copying the step's
gradients device-to-host, as one tensor and parameter by parameter, into pinned and pageable
memory. ``--variant`` takes the watch apart: ``hooks`` runs the hooks but copies nothing,
``copy`` copies every gradient to the host but pushes nothing, ``full`` is the real thing.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import statistics
import sys
import tempfile
import time

import torch
import torchvision

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "python"))
import gradtel  # noqa: E402
from gradtel.sidecar import Agent, Collector  # noqa: E402
from gradtel.torch import watch  # noqa: E402


def steps(model, opt, x, y, n: int, watcher=None) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if watcher is not None:
            watcher.end_step(loss=loss)  # a CUDA tensor: read off the step, on the copier thread
        # A training loop synchronises once per step when it reads the loss; so does this one.
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def d2h_floor(model) -> None:
    """Time device-to-host copies of the model's gradient bytes (after a backward)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    nbytes = flat.numel() * flat.element_size()

    def timed(fn) -> float:
        fn()
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        return best

    pinned = torch.empty_like(flat, device="cpu").pin_memory()
    pageable = torch.empty_like(flat, device="cpu")
    per_param = [torch.empty_like(g, device="cpu").pin_memory() for g in grads]
    for what, fn in [
        ("one tensor → pinned", lambda: pinned.copy_(flat, non_blocking=True)),
        ("one tensor → pageable", lambda: pageable.copy_(flat)),
        (f"{len(grads)} parameters → pinned",
         lambda: [b.copy_(g, non_blocking=True) for b, g in zip(per_param, grads)]),
    ]:
        t = timed(fn)
        print(f"  D2H {nbytes / 1e6:.0f} MB, {what}: {t * 1e3:.2f} ms ({nbytes / t / 1e9:.1f} GB/s)")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="timed steps per block")
    p.add_argument("--every", type=int, nargs="*", default=[1, 10],
                   help="report every N-th step (one measurement per value)")
    p.add_argument("--transport", nargs="*", default=["shared", "inline"],
                   choices=["shared", "inline"],
                   help="payloads through the shared memory region, or inline in the stream")
    p.add_argument("--variant", nargs="*", default=["full"], choices=["full", "copy", "hooks"],
                   help="what the watch does: everything, host copies only, or hooks only")
    args = p.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = torchvision.models.resnet50().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 3, 224, 224, device=dev)
    y = torch.randint(0, 1000, (args.batch,), device=dev)
    steps(model, opt, x, y, 10)  # warm-up (cuDNN autotuning, allocator)
    d2h_floor(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{torch.cuda.get_device_name()}: ResNet-50, batch {args.batch}, {n_params / 1e6:.1f}M "
          f"parameters ({n_params * 4 / 1e6:.0f} MB of gradients per step), "
          f"{args.blocks} alternating blocks of {args.steps} steps; mean step time")
    with tempfile.TemporaryDirectory() as d, Collector(d + "/lake") as col, \
            Agent(d + "/a.sock", col.url):
        next_step = 0
        for variant, transport, every in itertools.product(args.variant, args.transport,
                                                           args.every):
            client = gradtel.Client(f"gpu-overhead-{transport}-{every}", socket=d + "/a.sock",
                                    queue_bytes=1 << 30,
                                    shared_memory_bytes=None if transport == "shared" else 0)
            base, watched = [], []
            for _ in range(args.blocks):
                base += steps(model, opt, x, y, args.steps)
                w = watch(model, client, every=every)
                if variant == "copy":
                    # Copies land on the host and stop there.
                    client.push = client.push_many = lambda *a, **k: True
                    client.end_step = lambda *a, **k: True
                elif variant == "hooks":
                    w._push = lambda *a, **k: None
                # Step numbers go on across blocks, each block's from a reported step, so that
                # its first (and what a first report sets up) falls in the untimed warm-up.
                w.step = next_step + (-next_step) % every
                steps(model, opt, x, y, 3, w)  # pinned buffers allocated here
                watched += steps(model, opt, x, y, args.steps, w)
                next_step = w.step + (-w.step) % every
                for h in w._handles:
                    h.remove()
                w._handles.clear()
                if w._copier is not None:
                    w._copier.flush()
            client.flush(timeout=120)
            b, m = statistics.mean(base), statistics.mean(watched)
            print(f"  {variant} {transport} every={every}: without gradtel {b * 1e3:.2f} ms, with watch "
                  f"(all parameters) {m * 1e3:.2f} ms: overhead {(m / b - 1) * 100:+.2f} %")
            # Whether the mean comes from every step or from a few slow ones, and (every > 1)
            # which steps of the cycle pay: the reported one, or the ones after it.
            print(f"    median {statistics.median(base) * 1e3:.2f} → "
                  f"{statistics.median(watched) * 1e3:.2f} ms, max {max(base) * 1e3:.2f} → "
                  f"{max(watched) * 1e3:.2f} ms")
            if every > 1:
                # Each block's timed steps start 3 steps into the cycle (after the warm-up).
                pos: dict[int, list[float]] = {}
                for i, t in enumerate(watched):
                    pos.setdefault((i % args.steps + 3) % every, []).append(t)
                print("    mean by steps since the reported one: " + ", ".join(
                    f"{k}: {statistics.mean(v) * 1e3:.1f}" for k, v in sorted(pos.items())))
            print(f"    client: {client.close().summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
