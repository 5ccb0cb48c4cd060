"""Seeded random traffic through real agents and a real collector: gradients of every awkward
kind (zeros, NaN, ±Inf, constants, 1e±30, heavy tails, a one-element and an f16 tensor),
tensors and ranks missing from steps, training scalars present at random. Nothing may be
refused, dropped or left unwritten, and the collector must report no failed write: such a run
once wrote no `steps` row at all (a column null only in a later record batch of a file)."""

import numpy as np

from gradtel import Client, Tensor
from gradtel.sidecar import Agent, Collector
from conftest import metric, read_table

RUN = "random-inputs"
LAYOUT = [Tensor("enc.w", (40, 5)), Tensor("enc.b", (1,)), Tensor("dec.w", (300,)),
          Tensor("dec.h", (64,), dtype="f16"), Tensor("big", (20_000,))]


def values(rng, shape, kind):
    return {
        0: lambda: np.zeros(shape),
        1: lambda: np.full(shape, np.nan),
        2: lambda: rng.standard_cauchy(shape),
        3: lambda: np.full(shape, np.inf) * rng.choice([-1, 1], size=shape),
        4: lambda: np.full(shape, 3.0),
        5: lambda: rng.normal(size=shape) * 1e30,
        6: lambda: rng.normal(size=shape) * 1e-30,
    }.get(kind, lambda: rng.normal(size=shape))()


def test_random_awkward_inputs_fill_every_table_without_a_failed_write(tmp_path):
    rng = np.random.default_rng(18)
    col = Collector(str(tmp_path / "lake"),
                    extra=["--roll-interval", "200ms", "--straggler-timeout", "2s",
                           "--metrics", "127.0.0.1:0"])
    agents = [Agent(str(tmp_path / f"a{r}.sock"), col.url) for r in range(2)]
    try:
        clients = [Client(RUN, rank=r, world_size=2, socket=agents[r].socket) for r in range(2)]
        for c in clients:
            assert c.register(LAYOUT)
        ended = set()
        for step in range(120):
            local = bool(rng.integers(0, 2))
            for c in clients:
                if step > 5 and rng.random() < 0.05:
                    continue  # this rank skips the step
                for t in LAYOUT:
                    if rng.random() < 0.15:
                        continue  # the tensor has no gradient this step
                    v = values(rng, t.shape, int(rng.integers(0, 9)))
                    with np.errstate(over="ignore"):  # 1e30 in f16 is Inf, as meant
                        v = v.astype(np.float16 if t.dtype == "f16" else np.float32)
                    assert c.push(step, t.name, v, local=local)
                scalars = {}
                if rng.random() < 0.5:
                    scalars["loss"] = float(rng.normal()) if rng.random() < 0.9 else float("nan")
                if rng.random() < 0.5:
                    scalars["lr"] = 0.1
                if rng.random() < 0.5:
                    scalars["batch_size"] = int(rng.integers(1, 100))
                assert c.end_step(step, **scalars)
                ended.add(step)
        for c in clients:
            stats = c.close()
            assert stats.steps_dropped == 0 and stats.refusals == 0, stats
            assert stats.steps_delivered == stats.steps_ended, stats
        for a in agents:
            assert a.stop() == 0
        # Everything acknowledged is in the log; what is written is published within a roll.
        counted = {name: metric(col, f"gradtel_collector_{name}_total")
                   for name in ("reports_rejected", "rows_unencodable", "write_errors")}
        assert col.stop() == 0
    finally:
        for p in (*agents, col):
            if p.alive():
                p.kill()
    assert counted == {"reports_rejected": 0, "rows_unencodable": 0, "write_errors": 0}
    steps = read_table(col.out, RUN, "steps")
    assert steps is not None
    model = {r["step"] for r in steps.to_pylist() if r["scope_kind"] == "model"}
    assert model == ended
    for table in ("tails", "coords", "spectra", "alerts"):
        t = read_table(col.out, RUN, table)
        assert t is not None and t.num_rows > 0, f"{table} is empty"
