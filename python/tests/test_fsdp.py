"""FSDP (torch >= 2.1, CPU with gloo): each rank reports only the coordinates its shard owns, at
their offsets in the flattened parameter; together they are the reduced gradient. Skipped where
FSDP is unavailable (Debian's torch 1.13 cannot import it on Python 3.11)."""

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
try:
    from torch.distributed.fsdp import FullyShardedDataParallel  # noqa: F401
except Exception as e:  # noqa: BLE001 - any import failure means no FSDP here
    pytest.skip(f"FSDP unavailable: {e}", allow_module_level=True)
if tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 1):
    pytest.skip("watch_fsdp needs torch >= 2.1", allow_module_level=True)

from conftest import read_table, stop_and_read  # noqa: E402
from test_torch import free_port  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "fsdp_worker.py")


def test_fsdp_ranks_report_their_shards_of_the_reduced_gradient(tmp_path, collector, agent_factory):
    steps, world = 5, 2
    agents = [agent_factory(f"f-{r}.sock", extra=["--track-count", "100000"]) for r in range(world)]
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, str(tmp_path / f"f-{r}.sock"), str(tmp_path / "expected.npz"),
             str(steps)],
            env={**os.environ, "RANK": str(r), "WORLD_SIZE": str(world),
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
        )
        for r in range(world)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0
    coords = stop_and_read(collector, agents, "py-fsdp", "coords").to_pylist()
    expected = dict(np.load(tmp_path / "expected.npz"))
    seen = {}
    for c in coords:
        want = expected[c["tensor"]][c["step"]][c["index"]]
        assert c["value"] == pytest.approx(want, rel=1e-5, abs=1e-7), c
        seen.setdefault((c["step"], c["tensor"]), []).append(c["index"])
    # Every coordinate of every tensor, exactly once per step: the shards tile the parameters.
    for step in range(steps):
        for name, g in expected.items():
            assert sorted(seen[(step, name)]) == list(range(g.shape[1])), (step, name)
    rows = [r for r in read_table(collector.out, "py-fsdp", "steps").to_pylist()
            if r["scope_kind"] == "model"]
    total = sum(g.shape[1] for g in expected.values())
    assert sorted(r["step"] for r in rows) == list(range(steps))
    assert all(r["elements_received"] == total and r["reports_received"] == world for r in rows)
