"""Where the DDP overhead lies (results in bench/RESULTS.md): examples/ddp_digits.py (2-process
CPU DDP, gloo) as plain DDP, with torch's own Python all-reduce hook registered, with gradtel's
hook registered but no step reported (client connected, paused), and watched every step — in
rounds of the four, interleaved so that drift between runs spreads over all of them. Prints
each variant's median step time and its ratio to plain DDP (median over the rounds).

    GRADTEL_BIN_DIR=target/release python3 bench/ddp_hook_probe.py [--ddp-python PY]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from python_client import Agent, Collector, ddp_run  # noqa: E402

VARIANTS = {
    "plain DDP": ["--no-gradtel"],
    "torch's Python hook": ["--no-gradtel", "--probe", "torch-hook"],
    "gradtel hook, paused": ["--probe", "paused"],
    "gradtel, every step": [],
}


def main() -> int:
    # The live alerts of a training run (norm spikes, tail changes) are warnings; printed by
    # the hundred, they bury the figures. GRADTEL_LOG=warn brings them back.
    os.environ.setdefault("GRADTEL_LOG", "error")
    p = argparse.ArgumentParser()
    p.add_argument("--ddp-python", default=sys.executable)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=400)
    args = p.parse_args()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        with Collector(str(tmp / "lake"), wrapper=["chrt", "--idle", "0"]) as col:
            agents = [Agent(str(tmp / f"a-{r}.sock"), col.url) for r in range(2)]
            try:
                for i in range(args.rounds):
                    for v, (name, extra) in enumerate(VARIANTS.items()):
                        if "--no-gradtel" not in extra:
                            extra = [*extra, "--run-id", f"probe-{i}-{v}",
                                     "--socket", str(tmp / "a-{rank}.sock")]
                        t, _ = ddp_run(args.ddp_python, tmp, f"r{i}v{v}", extra, args.steps)
                        times[name].append(t)
                        # As it goes, so that a run cut short still tells something.
                        print(f"round {i}: {name}: {t * 1e3:.3f} ms", flush=True)
            finally:
                for a in agents:
                    a.stop()
    plain = times["plain DDP"]
    print(f"DDP hook probe: {args.rounds} rounds of {args.steps} steps, 2 ranks, median step time")
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, plain))
        print(f"  {name:22s} {statistics.median(ts) * 1e3:7.3f} ms  ({ratio - 1:+.2%} vs plain; "
              f"runs {', '.join(f'{t * 1e3:.3f}' for t in ts)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
