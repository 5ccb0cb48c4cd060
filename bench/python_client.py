"""Benchmarks of the Python client (results in bench/RESULTS.md):

1. ingest: client → agent throughput over the Unix socket, from the first push until the agent
   has summarised the last chunk (the Push stream's reply comes after that), against a numpy copy
   of the same buffer measured in the same run;
2. overhead: the step time of examples/ddp_digits.py (2-process CPU DDP, gloo) with every-step
   telemetry through the DDP hook at the default tracked-coordinate budget, against the identical
   run without gradtel, alternating runs.

    GRADTEL_BIN_DIR=target/release python3 bench/python_client.py [--skip-ddp] [--ddp-python PY]

The DDP part needs PyTorch in ``--ddp-python`` (default: this interpreter).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

import gradtel  # noqa: E402
from gradtel.sidecar import Agent, Collector  # noqa: E402


def ingest(tmp: pathlib.Path, values: int, steps: int, threads: int | None,
           shared: bool) -> dict:
    with Collector(str(tmp / "lake-ingest")) as col:
        extra = [] if threads is None else ["--ingest-threads", str(threads)]
        with Agent(str(tmp / "ingest.sock"), col.url, extra=extra):
            client = gradtel.Client("bench-ingest", socket=str(tmp / "ingest.sock"),
                                    queue_bytes=(steps + 1) * values * 4,
                                    shared_memory_bytes=None if shared else 0)
            client.register([gradtel.Tensor("w", (values,))])
            g = np.random.default_rng(0).standard_t(3, size=values).astype(np.float32)
            # Warm-up: connection, first allocations.
            client.push(0, "w", g)
            client.end_step(0)
            client.flush()
            t0 = time.perf_counter()
            for step in range(1, steps + 1):
                client.push(step, "w", g)
                client.end_step(step)
            client.flush()
            seconds = time.perf_counter() - t0
            stats = client.close()
            assert stats.steps_dropped == 0, stats
            assert (stats.bytes_shared > 0) == shared, stats
    copies = []
    for _ in range(steps):
        t = time.perf_counter()
        g.copy()
        copies.append(time.perf_counter() - t)
    nbytes = values * 4 * steps
    return {
        "bytes": nbytes,
        "seconds": seconds,
        "gb_per_s": nbytes / seconds / 1e9,
        "copy_gb_per_s": values * 4 / statistics.median(copies) / 1e9,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_ranks(python: str, tmp: pathlib.Path, tag: str, extra: list[str],
              steps: int) -> list[dict]:
    """Run the 2-rank DDP example to the end; each rank's `--stats` record."""
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "PYTHONPATH": os.pathsep.join(
                   filter(None, (str(REPO / "python"), os.environ.get("PYTHONPATH"))))}
        procs.append(subprocess.Popen(
            [python, str(REPO / "examples" / "ddp_digits.py"), "--steps", str(steps),
             "--stats", str(tmp / f"{tag}-{{rank}}.json"), *extra],
            env=env, stdout=subprocess.DEVNULL))
    for p in procs:
        assert p.wait() == 0
    return [json.loads((tmp / f"{tag}-{rank}.json").read_text()) for rank in range(2)]


def dropped_steps(records: list[dict]) -> int:
    return sum((r["client"] or {}).get("steps_dropped", 0) for r in records)


def ddp_run(python: str, tmp: pathlib.Path, tag: str, extra: list[str],
            steps: int) -> tuple[float, int]:
    """Median step time over both ranks (warm-up skipped: bucket rebuild, first
    allocations), and steps dropped."""
    records = ddp_ranks(python, tmp, tag, extra, steps)
    times = [t for r in records for t in r["step_times"][20:]]
    return statistics.median(times), dropped_steps(records)


def toggled_run(python: str, tmp: pathlib.Path, tag: str, extra: list[str], steps: int,
                block: int) -> tuple[float, float, int, dict]:
    """One watched 2-rank run that reports only in every other block of ``block`` steps:
    median step times of the unwatched and the watched steps, steps dropped, and the medians of
    the ranks' CPU per step (``process``: all the rank's threads; ``thread``: the training
    thread), unwatched and watched. Both kinds share the processes and the minute, so the
    machine's drift between runs cancels; what the hooks cost while paused (a Python call per
    bucket, +0.2 % measured) is not counted."""
    records = ddp_ranks(python, tmp, tag, [*extra, "--toggle", str(block)], steps)
    series = {"wall": "step_times", "process": "step_cpu", "thread": "step_thread_cpu"}
    split = {k: ([], []) for k in series}
    for r in records:
        for i, w in enumerate(r["watched"]):
            # Skip the warm-up and each block's first steps, where the other kind's work
            # (the sidecars finishing the previous block's steps) may still run.
            if i >= 20 and i % block >= 3:
                for k, key in series.items():
                    split[k][w].append(r[key][i])
    med = {k: (statistics.median(off), statistics.median(on)) for k, (off, on) in split.items()}
    return (*med.pop("wall"), dropped_steps(records), med)


def overhead(python: str, tmp: pathlib.Path, pairs: int, steps: int, idle: bool,
             pause_collector: bool = False, toggle: int = 0) -> dict:
    # In a deployment the collector runs on another machine. Here it shares the cores with the
    # training ranks, so (by default) it runs under SCHED_IDLE: it only gets cycles the ranks and
    # their agents leave, and its own CPU time is reported apart.
    wrapper = ["chrt", "--idle", "0"] if idle else []
    with Collector(str(tmp / "lake-ddp"), wrapper=wrapper) as col:
        # The agents run at their default niceness (19), as deployed.
        agents = [Agent(str(tmp / f"a-{r}.sock"), col.url) for r in range(2)]
        try:
            base, watched, dropped, cpu = [], [], 0, []
            if pause_collector:
                os.kill(col.proc.pid, signal.SIGSTOP)
            cpu0 = [cpu_seconds(p.proc.pid) for p in (col, *agents)]
            for i in range(pairs):
                watch = ["--run-id", f"bench-ddp-{i}", "--socket", str(tmp / "a-{rank}.sock"),
                         *os.environ.get("GRADTEL_BENCH_WATCH_ARGS", "").split()]
                if toggle:
                    b, t, d, c = toggled_run(python, tmp, f"toggle{i}", watch, steps, toggle)
                    cpu.append(c)
                    base.append(b)
                else:
                    base.append(ddp_run(python, tmp, f"base{i}", ["--no-gradtel"], steps)[0])
                    t, d = ddp_run(python, tmp, f"watch{i}", watch, steps)
                watched.append(t)
                dropped += d
            cpu1 = [cpu_seconds(p.proc.pid) for p in (col, *agents)]
            if pause_collector:
                os.kill(col.proc.pid, signal.SIGCONT)
        finally:
            for a in agents:
                a.stop()
    b, w = statistics.median(base), statistics.median(watched)
    # Toggled runs report every other block: half their steps.
    per_step = [(c1 - c0) / (pairs * steps / (2 if toggle else 1)) * 1e3
                for c0, c1 in zip(cpu0, cpu1)]
    # This VM's speed drifts between runs by more than the effect: the ratio within each
    # adjacent pair cancels the drift, and its median is the headline.
    ratios = [y / x - 1 for x, y in zip(base, watched)]
    ratio = statistics.median(ratios) + 1
    # The mean of the pairs' overheads and its standard error: whether a difference between
    # two clients (or from the goal) is more than the scatter between runs.
    se = statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else float("nan")
    return {"base_ms": b * 1e3, "watched_ms": w * 1e3, "overhead": ratio - 1,
            "overhead_mean": statistics.mean(ratios), "overhead_se": se,
            "pairs": [(x * 1e3, y * 1e3) for x, y in zip(base, watched)],
            "collector_cpu_ms": per_step[0], "agent_cpu_ms": per_step[1:],
            "dropped": dropped, "reported": 2 * pairs * steps // (2 if toggle else 1),
            # What a watched step costs each rank in CPU beyond an unwatched one (median over
            # the runs), and the CPU of an unwatched step.
            "rank_cpu_ms": {k: (statistics.median(c[k][0] for c in cpu) * 1e3,
                                statistics.median((c[k][1] - c[k][0]) for c in cpu) * 1e3)
                            for k in ("process", "thread")} if cpu else None}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    # The live alerts of a training run (norm spikes, tail changes) are warnings; printed by
    # the hundred, they bury the figures. GRADTEL_LOG=warn brings them back.
    os.environ.setdefault("GRADTEL_LOG", "error")
    p = argparse.ArgumentParser()
    p.add_argument("--values", type=int, default=64 << 20, help="f32 values per step (ingest)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, nargs="*", default=[None],
                   help="agent --ingest-threads values to try (default: the agent's default)")
    p.add_argument("--transport", nargs="*", default=["shared", "inline"],
                   choices=["shared", "inline"],
                   help="payloads through the shared memory region, or inline in the stream")
    p.add_argument("--skip-ddp", action="store_true")
    p.add_argument("--ddp-python", default=sys.executable)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--ddp-steps", type=int, default=300)
    p.add_argument("--collector-normal-priority", action="store_true",
                   help="run the collector at normal priority beside the ranks")
    p.add_argument("--toggle", type=int, default=0, metavar="N",
                   help="measure within each watched run instead of against runs without "
                        "gradtel: report only in every other block of N steps and compare "
                        "the watched steps with the unwatched ones")
    p.add_argument("--pause-collector", action="store_true",
                   help="stop the collector (SIGSTOP) during the runs, as if it ran on another "
                        "host: agents keep their reports queued (and drop, counted, when full)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        for threads, transport in itertools.product(args.threads, args.transport):
            r = ingest(tmp, args.values, args.steps, threads, transport == "shared")
            print(f"ingest {transport} (agent --ingest-threads {threads or 'default'}): "
                  f"{r['bytes'] / 1e9:.2f} GB in {r['seconds']:.2f} s = {r['gb_per_s']:.2f} GB/s; "
                  f"numpy copy of the same buffer {r['copy_gb_per_s']:.1f} GB/s; "
                  f"ratio {r['gb_per_s'] / r['copy_gb_per_s']:.3f}")
        if not args.skip_ddp:
            o = overhead(args.ddp_python, tmp, args.pairs, args.ddp_steps,
                         idle=not args.collector_normal_priority,
                         pause_collector=args.pause_collector, toggle=args.toggle)
            how = (f"{args.pairs} runs, each alternating blocks of {args.toggle} steps "
                   "unwatched and watched" if args.toggle
                   else f"{args.pairs} alternating pairs of runs without and with gradtel")
            print(f"DDP step time (median of {how}, 2 ranks, {args.ddp_steps} steps): "
                  f"without {o['base_ms']:.3f} ms, with {o['watched_ms']:.3f} ms; overhead "
                  f"(median of the pairs' ratios) {o['overhead'] * 100:+.2f} %")
            print("  pairs (ms):", ", ".join(f"{a:.3f}/{b:.3f}" for a, b in o["pairs"]))
            print(f"  overhead, mean of the pairs: {o['overhead_mean'] * 100:+.2f} % "
                  f"± {o['overhead_se'] * 100:.2f} (standard error)")
            print(f"  CPU per watched step: collector {o['collector_cpu_ms']:.2f} ms, agents "
                  + ", ".join(f"{x:.2f} ms" for x in o["agent_cpu_ms"]))
            if o["rank_cpu_ms"]:
                print("  rank CPU per step (unwatched, and extra when watched; medians of the "
                      "runs): " + ", ".join(f"{k} {a:.3f} ms + {d * 1e3:.1f} µs"
                                            for k, (a, d) in o["rank_cpu_ms"].items()))
            print(f"  steps dropped by the clients: {o['dropped']} of {o['reported']} rank-steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
