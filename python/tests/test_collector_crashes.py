"""The collector SIGKILLed and restarted (same address, same lake) at seeded random moments
while two ranks train: every step must reach the lake exactly once. Replaying a write-ahead
log segment whose reports were partly published used to write those rows again — four kills in
400 steps doubled the rows of hundreds of steps."""

import collections
import os
import socket
import threading
import time

import numpy as np
import pyarrow.dataset as pds

from gradtel import Client, Tensor
from gradtel.sidecar import Agent, Collector
from conftest import metric

RUN = "crashes"
LAYOUT = [Tensor("enc.w", (40, 5)), Tensor("enc.b", (1,)), Tensor("dec.w", (300,)),
          Tensor("big", (20_000,))]
STEPS = 240


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_collector_killed_and_restarted_mid_run_writes_every_step_once(tmp_path):
    rng = np.random.default_rng(19)
    lake = str(tmp_path / "lake")
    listen = f"127.0.0.1:{free_port()}"
    # A straggler timeout longer than any outage: each step is released whole, once.
    extra = ["--roll-interval", "200ms", "--straggler-timeout", "30s", "--metrics", "127.0.0.1:0"]
    collector = [Collector(lake, listen=listen, extra=extra)]
    agents = [Agent(str(tmp_path / f"a{r}.sock"), collector[0].url) for r in range(2)]
    stop = threading.Event()
    kills = []
    pauses = rng.uniform(0.3, 1.2, size=8)

    def crash_and_restart():
        for pause in pauses:
            if stop.wait(float(pause)):
                return
            collector[0].kill()
            kills.append(time.monotonic())
            time.sleep(0.2)
            collector[0] = Collector(lake, listen=listen, extra=extra)

    chaos = threading.Thread(target=crash_and_restart)
    try:
        clients = [Client(RUN, rank=r, world_size=2, socket=agents[r].socket) for r in range(2)]
        for c in clients:
            assert c.register(LAYOUT)
        chaos.start()
        for step in range(STEPS):
            for c in clients:
                for t in LAYOUT:
                    assert c.push(step, t.name, rng.normal(size=t.shape).astype(np.float32),
                                  local=True)
                assert c.end_step(step, loss=float(rng.normal()))
            time.sleep(0.01)
        stop.set()
        chaos.join()
        for c in clients:
            stats = c.close()
            assert stats.steps_delivered == stats.steps_ended == STEPS, stats
        for a in agents:
            assert a.stop() == 0
        col = collector[0]
        write_errors = metric(col, "gradtel_collector_write_errors_total")
        assert col.stop() == 0
    finally:
        stop.set()
        if chaos.is_alive():
            chaos.join()
        for p in (*agents, collector[0]):
            if p.alive():
                p.kill()
    assert len(kills) >= 2, "the run outlived too few crashes to test anything"
    assert write_errors == 0

    steps = pds.dataset(f"{lake}/run={RUN}/table=steps", format="parquet").to_table()
    model = collections.Counter(
        r["step"] for r in steps.select(["step", "scope_kind"]).to_pylist()
        if r["scope_kind"] == "model")
    assert sorted(model) == list(range(STEPS))
    assert [s for s, n in model.items() if n > 1] == [], "steps written twice"
    # coords keeps a row per (step, rank, tensor) with the tracked values as lists.
    coords = pds.dataset(f"{lake}/run={RUN}/table=coords", format="parquet").to_table()
    groups = collections.Counter(
        (r["step"], r["rank"], r["tensor"])
        for r in coords.select(["step", "rank", "tensor"]).to_pylist())
    assert len(groups) == STEPS * 2 * len(LAYOUT)
    assert max(groups.values()) == 1, "coords written twice"
    hidden = [f for _, _, fs in os.walk(lake) for f in fs if f.startswith(".")]
    assert hidden == [], f"temporary files left: {hidden}"
