"""Fixtures: a real gradtel-collector and gradtel-agent (the repository's binaries) per test, and
the lake read back with pyarrow."""

import os
import pathlib
import re
import urllib.request

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from gradtel.sidecar import Agent, Collector

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="session")
def _binaries():
    # The test command builds these; fall back to the workspace's debug build.
    os.environ.setdefault("GRADTEL_BIN_DIR", str(REPO / "target" / "debug"))
    for name in ("gradtel-agent", "gradtel-collector"):
        path = pathlib.Path(os.environ["GRADTEL_BIN_DIR"]) / name
        assert path.exists(), f"{path} missing: run `cargo build --bins` first"


@pytest.fixture
def collector(tmp_path):
    c = Collector(
        str(tmp_path / "lake"),
        extra=["--roll-interval", "200ms", "--straggler-timeout", "3s", "--metrics", "127.0.0.1:0"],
    )
    yield c
    if c.alive():
        c.kill()


@pytest.fixture
def agent_factory(tmp_path, collector):
    agents = []

    def start(name="agent.sock", extra=()):
        a = Agent(str(tmp_path / name), collector.url, extra=list(extra))
        agents.append(a)
        return a

    yield start
    for a in agents:
        if a.alive():
            a.kill()


def explode_coords(t):
    """``coords`` as a row per tracked value: its ``index`` and ``value`` lists flattened, every
    other column repeated over its row's values (docs/parquet.md)."""
    import pyarrow.compute as pc

    if not pa.types.is_list(t.schema.field("index").type):
        return t
    parents = pc.list_parent_indices(t["index"])
    flat = t.drop_columns(["index", "value"]).take(parents)
    return flat.append_column("index", pc.list_flatten(t["index"])).append_column(
        "value", pc.list_flatten(t["value"])
    )


def read_table(lake, run_id, table):
    """The table of one run as a pyarrow Table (empty list of rows if nothing was written)."""
    path = pathlib.Path(lake) / f"run={run_id}" / f"table={table}"
    if not path.exists():
        return None
    t = ds.dataset(str(path), format="parquet").to_table()
    if table == "coords":
        t = explode_coords(t)
    # Nanosecond timestamps do not convert to Python datetimes without pandas; no test needs them.
    return t.select([f.name for f in t.schema if not pa.types.is_timestamp(f.type)])


def stop_and_read(collector, agents, run_id, table):
    """SIGTERM the agents (they flush to the collector), then the collector (it writes), and read
    ``table`` back."""
    for a in agents:
        assert a.stop() == 0
    assert collector.stop() == 0
    return read_table(collector.out, run_id, table)


def metric(collector, name):
    """The value of the unlabelled sample ``name`` in the collector's /metrics (it was started
    with ``--metrics``)."""
    text = urllib.request.urlopen(f"http://{collector.metrics}/metrics", timeout=10).read()
    m = re.search(rf"^{name} (\S+)$", text.decode(), re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))
