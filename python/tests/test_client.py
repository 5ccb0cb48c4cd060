"""The numpy-level client against a real agent and collector: what is pushed is what the Parquet
holds, whole steps are dropped (and counted) when the queue is full, bad calls raise."""

import time

import numpy as np
import pytest

import gradtel
import gradtel.v1.ingest_pb2
from gradtel import Client, GradtelError, Tensor
from gradtel.client import _RING_CYCLE_BYTES, _SharedRing
from conftest import read_table, stop_and_read

RUN = "py-client"


def rows(table, **eq):
    d = table.to_pylist()
    return [r for r in d if all(r[k] == v for k, v in eq.items())]


@pytest.mark.parametrize("shared", [None, 0], ids=["shared-memory", "inline"])
def test_pushed_values_are_what_the_lake_holds(collector, agent_factory, shared):
    agent = agent_factory(extra=["--track-count", "5000"])
    rng = np.random.default_rng(1)
    layout = [Tensor("enc.weight", (64, 80)), Tensor("enc.bias", (80,), dtype="f16")]
    # A small chunk size so a tensor travels as many chunks.
    client = Client(RUN, socket=agent.socket, chunk_bytes=4000, shared_memory_bytes=shared)
    assert client.register(layout)
    sent = {}
    for step in range(6):
        w = rng.standard_t(3, size=(64, 80)).astype(np.float32)
        b = rng.normal(size=80).astype(np.float16)
        sent[step] = {"enc.weight": w, "enc.bias": b}
        assert client.push(step, "enc.weight", w)
        assert client.push(step, "enc.bias", b)
        assert client.end_step(step, loss=0.5 + step, lr=0.1, batch_size=32)
    stats = client.close()
    assert stats.steps_delivered == 6 and stats.steps_dropped == 0, stats
    assert stats.bytes_sent == 6 * (64 * 80 * 4 + 80 * 2)
    # The 20 kB weight goes through the shared region (when there is one), the bias inline.
    assert stats.bytes_shared == (6 * 64 * 80 * 4 if shared is None else 0)

    steps = stop_and_read(collector, [agent], RUN, "steps")
    for step, tensors in sent.items():
        for name, values in tensors.items():
            (r,) = rows(steps, step=step, scope_kind="tensor", scope=name)
            x = values.astype(np.float64).ravel()
            assert r["count"] == x.size and r["elements_received"] == x.size
            assert r["mean"] == pytest.approx(x.mean(), rel=1e-9, abs=1e-12)
            assert r["variance"] == pytest.approx(x.var(), rel=1e-9)
            assert r["max_abs"] == np.abs(x).max()
            assert r["loss"] == 0.5 + step and r["batch_size"] == 32
    coords = read_table(collector.out, RUN, "coords").to_pylist()
    assert coords, "no tracked coordinates written"
    for c in coords:
        expected = sent[c["step"]][c["tensor"]].ravel()[c["index"]]
        assert c["value"] == np.float32(expected)
        assert c["local"] is False
    # Every step carries the same tracked coordinates (the sample does not depend on the step).
    per_step = {}
    for c in coords:
        per_step.setdefault(c["step"], set()).add((c["tensor"], c["index"]))
    assert len(per_step) == 6 and len({frozenset(s) for s in per_step.values()}) == 1


def test_push_many_puts_every_part_in_the_lake(collector, agent_factory):
    agent = agent_factory(extra=["--track-count", "100000"])
    rng = np.random.default_rng(2)
    # Four small tensors, one half-sent in two parts, and one above the batching threshold.
    layout = [Tensor("a", (300,)), Tensor("b", (7,)), Tensor("c", (40, 25)),
              Tensor("h", (64,), dtype="f16"), Tensor("big", (100_000,))]
    # chunk_bytes makes the small parts span several messages.
    client = Client(RUN, socket=agent.socket, chunk_bytes=3000)
    assert client.register(layout)
    sent = {}
    for step in range(5):
        v = {t.name: rng.standard_t(4, size=t.shape).astype(
            np.float16 if t.dtype == "f16" else np.float32) for t in layout}
        sent[step] = v
        c = v["c"].ravel()
        assert client.push_many(step, [("a", v["a"], 0), ("b", v["b"], 0), ("c", c[:600], 0),
                                       ("h", v["h"], 0), ("big", v["big"], 0),
                                       ("c", c[600:], 600)], local=True)
        assert client.end_step(step)
    stats = client.close()
    assert stats.steps_delivered == 5 and stats.steps_dropped == 0, stats
    # Five small parts a step, and the large one as pushes of chunk_bytes.
    assert stats.chunks_sent == 5 * (5 + -(-400_000 // 3000))
    assert stats.bytes_sent == 5 * sum(x.nbytes for x in sent[0].values())
    assert stats.bytes_shared == stats.bytes_sent, "a step's parts share one slot"
    steps = stop_and_read(collector, [agent], RUN, "steps")
    for step, tensors in sent.items():
        for name, values in tensors.items():
            (r,) = rows(steps, step=step, scope_kind="tensor", scope=name)
            x = values.astype(np.float64).ravel()
            assert r["count"] == x.size
            assert r["mean"] == pytest.approx(x.mean(), rel=1e-9, abs=1e-12)
            assert r["max_abs"] == np.abs(x).max()
    coords = read_table(collector.out, RUN, "coords").to_pylist()
    assert {c["tensor"] for c in coords} == set(sent[0])
    for c in coords:
        assert c["local"] and c["value"] == np.float32(sent[c["step"]][c["tensor"]].ravel()[c["index"]])


def test_steps_ended_within_the_send_interval_travel_together_and_none_waits_longer(
    collector, agent_factory
):
    # The sender waits out send_interval_s after each message without being woken by the
    # steps ended meanwhile (each wake-up is a GIL hand-over in the training process): those
    # steps must still leave when the interval is over — the last one included, which no
    # later call follows.
    agent = agent_factory()
    client = Client(RUN, socket=agent.socket, send_interval_s=0.2)
    assert client.register([Tensor("w", (100,))])
    g = np.ones(100, np.float32)
    t0 = time.monotonic()
    for step in range(25):
        assert client.push(step, "w", g) and client.end_step(step)
        time.sleep(0.02)
    deadline = time.monotonic() + 10
    while client.stats.steps_delivered < 25 and time.monotonic() < deadline:
        time.sleep(0.01)
    took = time.monotonic() - t0
    stats = client.close()
    assert stats.steps_delivered == 25, stats
    # ≈ 0.5 s of steps: a message per interval, not one per step.
    assert 2 <= stats.messages_sent <= took / 0.2 + 2, (stats, took)
    steps = stop_and_read(collector, [agent], RUN, "steps")
    assert sorted(r["step"] for r in rows(steps, scope_kind="model")) == list(range(25))


def test_steps_with_and_without_a_loss_share_one_file(collector, agent_factory):
    # Four rows a step (two tensors, their layer, the model) and 16 rows per record batch:
    # the steps without a loss bring the first nulls of `loss` in the file's second batch,
    # which once failed every write of the run. Likewise a one-element tensor (a learned
    # scale), whose skewness is null, pushed only from step 8 on.
    agent = agent_factory()
    client = Client(RUN, socket=agent.socket)
    assert client.register([Tensor("enc.weight", (50,)), Tensor("enc.bias", (5,)),
                            Tensor("scale", (1,))])
    rng = np.random.default_rng(3)
    for step in range(12):
        client.push(step, "enc.weight", rng.normal(size=50).astype(np.float32))
        client.push(step, "enc.bias", rng.normal(size=5).astype(np.float32))
        if step >= 8:
            client.push(step, "scale", np.ones(1, np.float32))
        client.end_step(step, **({"loss": 2.0 * step} if step < 6 else {}))
    assert client.close().steps_delivered == 12
    steps = stop_and_read(collector, [agent], RUN, "steps")
    model = {r["step"]: r["loss"] for r in rows(steps, scope_kind="model")}
    assert model == {s: (2.0 * s if s < 6 else None) for s in range(12)}
    scale = rows(steps, scope_kind="tensor", scope="scale")
    assert sorted(r["step"] for r in scale) == [8, 9, 10, 11]
    assert all(r["skewness"] is None and r["count"] == 1 for r in scale)


def test_shared_ring_allocates_in_order_wraps_and_refuses_when_full():
    ring = _SharedRing(1000)
    try:
        # Slots are 64-byte aligned.
        a, b = ring.alloc(100), ring.alloc(300)
        assert (a.start, a.end, b.start, b.end) == (0, 100, 128, 428)
        c = ring.alloc(500)
        assert c.start == 448
        assert ring.alloc(100) is None, "52 bytes left at the end, none before the tail"
        # Freeing out of order gives nothing back until the tail slot is free.
        b.free = True
        assert ring.alloc(100) is None
        a.free = True
        d = ring.alloc(300)
        assert (d.start, d.end) == (0, 300), "wrapped to the front, before the tail (448)"
        assert ring.alloc(200) is None, "between 320 and the tail at 448 there are 128 bytes"
        e = ring.alloc(128)
        assert e.start == 320
        assert ring.live_bytes() == 500 + 300 + 128
        c.free = d.free = e.free = True
        # Empty again: allocation restarts at the front; larger than the ring never fits.
        assert ring.alloc(1000).start == 0
        assert ring.alloc(1) is None
        assert _SharedRing(64).alloc(65) is None
        # The head goes back to the front early once the front holds twice the bytes in flight
        # and an eighth of the ring, so a steady stream reuses a small, resident part of it.
        big = _SharedRing(8000)
        slots = [big.alloc(100) for _ in range(20)]
        assert [s.start for s in slots[:3]] == [0, 128, 256] and slots[-1].start == 2432
        for s in slots[:12]:
            s.free = True
        assert big.alloc(100).start == 2560, "front 1536 < 2 × 1152 in flight: keep going"
        for s in slots[12:18]:
            s.free = True
        assert big.alloc(100).start == 0, "front 2304 ≥ 2 × 384 in flight and ≥ 1000"
        big.close()
        # In a large ring the part cycled through is bounded by _RING_CYCLE_BYTES, not by an
        # eighth of it: a DDP bucket's stream of slots reuses a few offsets (whose descriptors
        # a plan keeps) in memory that stays cached.
        large = _SharedRing(512 << 20)
        try:
            live, starts = [], set()
            for _ in range(2000):
                live.append(large.alloc(150_000))
                starts.add(live[-1].start)
                if len(live) > 10:
                    live.pop(0).free = True
            # The head turns back once the tail (10 slots behind it) has passed the bound.
            in_flight = 11 * 150_016
            assert max(starts) < _RING_CYCLE_BYTES + in_flight
            assert len(starts) <= (_RING_CYCLE_BYTES + in_flight) // 150_016 + 1
        finally:
            large.close()
        # The region is a sealed memfd the agent can open by path.
        import fcntl
        import os
        seals = fcntl.fcntl(ring.fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
        assert os.path.exists(ring.path) and os.stat(ring.path).st_size == 1000
    finally:
        ring.close()


def test_a_small_shared_region_under_a_burst_never_mixes_up_steps(collector, agent_factory):
    """Slots are reused only after the agent has read them: with room for about three steps
    and 60 steps pushed as fast as possible, every delivered step's row matches its own values,
    and every step is accounted for."""
    agent = agent_factory()
    n = 50_000
    client = Client(RUN, socket=agent.socket, shared_memory_bytes=3 * n * 4 + 256)
    assert client.register([Tensor("w", (n,))])
    rng = np.random.default_rng(5)
    sent = {}
    for step in range(60):
        sent[step] = rng.standard_t(3, size=n).astype(np.float32) * (step + 1)
        client.push(step, "w", sent[step])
        client.end_step(step)
    assert client.flush(timeout=30)
    stats = client.close()
    assert stats.steps_ended == 60
    assert stats.steps_delivered + stats.steps_dropped == 60, stats
    assert stats.steps_dropped == stats.steps_dropped_queue_full, stats
    assert stats.bytes_shared == stats.bytes_sent == stats.steps_delivered * n * 4, stats
    steps = stop_and_read(collector, [agent], RUN, "steps")
    delivered = rows(steps, scope_kind="tensor")
    assert len(delivered) == stats.steps_delivered
    for r in delivered:
        x = sent[r["step"]].astype(np.float64)
        assert r["max_abs"] == np.abs(x).max()
        assert r["mean"] == pytest.approx(x.mean(), rel=1e-9, abs=1e-12)
        assert r["sum_sq"] == pytest.approx((x * x).sum(), rel=1e-12)


def test_reserved_slots_filled_by_the_caller_reach_the_lake(collector, agent_factory):
    """The GPU path's API: reserve room in the shared region, write it (there: a DMA copy),
    push the slots. Misuse frees the slots and raises; a dropped step frees them too."""
    agent = agent_factory(extra=["--track-count", "100000"])
    client = Client(RUN, socket=agent.socket, shared_memory_bytes=1 << 20)
    assert client.register([Tensor("w", (3000,)), Tensor("h", (500,), dtype="f16")])
    assert client.shared_memory_active
    addr, size = client.shared_region()
    assert addr and size == 1 << 20
    rng = np.random.default_rng(3)
    sent = {}
    for step in range(3):
        w = rng.normal(size=3000).astype(np.float32)
        h = rng.normal(size=500).astype(np.float16)
        sent[step] = {"w": w, "h": h}
        (sw, vw), (sh, vh) = client.reserve(step, w.nbytes), client.reserve(step, h.nbytes)
        vw.view(np.float32)[:] = w
        vh.view(np.float16)[:] = h
        assert client.push_reserved(step, [("w", sw, 0, "f32"), ("h", sh, 0, "f16")])
        assert client.end_step(step)
    slot, _ = client.reserve(9, 16)
    with pytest.raises(GradtelError, match="registered as f32"):
        client.push_reserved(9, [("w", slot, 0, "f16")])
    assert slot.free
    slot, _ = client.reserve(9, 16)
    with pytest.raises(GradtelError, match="owned range"):
        client.push_reserved(9, [("w", slot, 2999, "f32")])
    assert slot.free
    assert client.flush(timeout=30)
    stats = client.close()
    assert stats.steps_delivered == 3 and stats.bytes_shared == 3 * (3000 * 4 + 500 * 2), stats
    coords = stop_and_read(collector, [agent], RUN, "coords").to_pylist()
    assert len(coords) == 3 * 3500
    for c in coords:
        assert c["value"] == np.float32(sent[c["step"]][c["tensor"]][c["index"]])


def test_staged_bucket_is_what_was_there_at_staging(collector, agent_factory):
    """The DDP hook's CPU path: tensors laid out in one flat buffer are copied into the shared
    region at staging and queued later; what the lake holds is the buffer as it was when
    staged, not as it is after (the all-reduce overwrites it in place in between)."""
    agent = agent_factory(extra=["--track-count", "100000"])
    client = Client(RUN, socket=agent.socket, shared_memory_bytes=1 << 20)
    assert client.register([Tensor("a", (3000,)), Tensor("b", (40, 50))])
    rng = np.random.default_rng(5)
    layout = [("b", 3000, 2000), ("a", 0, 3000)]  # out of order, as DDP buckets are
    sent = {}
    kept = np.zeros(5000, np.float32)
    for step in range(4):
        # New arrays, then one buffer filled in place as DDP's bucket is (stage_many's fast
        # path for the array it checked last time).
        bucket = rng.normal(size=5000).astype(np.float32) if step < 2 else kept
        if step >= 2:
            kept[:] = rng.normal(size=5000)
        sent[step] = bucket.copy()
        staged = client.stage_many(step, bucket, layout, local=True)
        assert staged is not None
        bucket *= 0.5  # what an all-reduce would do to it meanwhile
        assert staged.push()
        assert not staged.push(), "a handle queues once"
        assert client.end_step(step)
    # Too small for the shared region: the caller pushes inline instead.
    assert client.stage_many(4, np.zeros(8, np.float32), [("a", 0, 8)]) is None
    # Parts beyond the array are refused before anything is copied.
    with pytest.raises(GradtelError, match="cover elements"):
        client.stage_many(4, np.zeros(4000, np.float32), layout)
    # A bad layout is found at push(), and the slot comes back.
    staged = client.stage_many(5, np.zeros(5000, np.float32), [("a", 0, 5000)])
    slot = staged._slot
    with pytest.raises(GradtelError, match="owned range"):
        staged.push()
    assert slot.free
    stats = client.close()
    assert stats.steps_delivered == 4 and stats.bytes_shared == 4 * 5000 * 4, stats
    coords = stop_and_read(collector, [agent], RUN, "coords").to_pylist()
    assert len(coords) == 4 * 5000
    for c in coords:
        at = {"a": 0, "b": 3000}[c["tensor"]]
        assert c["value"] == sent[c["step"]][at + c["index"]] and c["local"]


def test_bf16_and_local_flag_and_sharded_offsets(collector, agent_factory):
    agent = agent_factory(extra=["--track-count", "1000"])
    client = Client(RUN, socket=agent.socket, shard=1, shard_count=2)
    # This agent owns the second half of the tensor.
    client.register([Tensor("h.weight", (1000,), dtype="bf16", owned=(500, 1000))])
    x = np.linspace(-4, 4, 500, dtype=np.float32)
    bits = (x.view(np.uint32) >> 16).astype(np.uint16)  # truncation to bf16
    assert client.push(0, "h.weight", bits, local=True, offset=500, dtype="bf16")
    client.end_step(0)
    assert client.close().steps_delivered == 1
    coords = stop_and_read(collector, [agent], RUN, "coords").to_pylist()
    assert coords and all(500 <= c["index"] < 1000 and c["local"] for c in coords)
    widened = (bits.astype(np.uint32) << 16).view(np.float32)
    for c in coords:
        assert c["value"] == widened[c["index"] - 500]


def test_full_queue_drops_whole_steps_and_counts_them(tmp_path, collector):
    from gradtel.sidecar import Agent

    sock = str(tmp_path / "late-agent.sock")
    part = np.ones(1000, np.float32)  # 4000 bytes
    # Room for three pushes; no agent yet, so nothing leaves the queue.
    client = Client(RUN, socket=sock, queue_bytes=12_000, max_backoff_s=0.2)
    assert not client.register([Tensor("a", (1000,)), Tensor("b", (1000,))], wait_s=0.2)
    assert client.push(0, "a", part) and client.push(0, "b", part)
    client.end_step(0)
    assert client.push(1, "a", part)  # fits
    assert not client.push(1, "b", part)  # does not: step 1 is dropped whole
    assert not client.push(1, "a", part)  # and stays dropped
    assert not client.end_step(1)
    assert client.stats.steps_dropped_queue_full == 1
    agent = Agent(sock, collector.url)
    # The client finds the agent, registers and sends step 0; step 2 then fits again.
    assert client.flush(timeout=30)
    assert client.push(2, "a", part) and client.push(2, "b", part)
    client.end_step(2)
    assert client.flush(timeout=30)
    stats = client.close()
    assert (stats.steps_ended, stats.steps_delivered, stats.steps_dropped) == (3, 2, 1), stats
    steps = stop_and_read(collector, [agent], RUN, "steps")
    model = sorted(r["step"] for r in rows(steps, scope_kind="model"))
    assert model == [0, 2], "a dropped step must leave no row, not half a step"


def wait_for_steps(lake, wanted, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = read_table(lake, RUN, "steps")
        if t is not None and wanted <= {r["step"] for r in rows(t, scope_kind="model")}:
            return
        time.sleep(0.1)
    raise AssertionError(f"steps {sorted(wanted)} never reached the lake")


def test_agent_killed_mid_run_training_goes_on_and_drops_are_reported(
    tmp_path, collector, agent_factory
):
    agent = agent_factory("a.sock")
    # Room for 10 steps: the 20 steps pushed while no agent listens overflow it.
    client = Client(RUN, socket=agent.socket, max_backoff_s=0.2, queue_bytes=10 * 80_000)
    client.register([Tensor("w", (20_000,))])
    g = np.random.default_rng(0).normal(size=20_000).astype(np.float32)
    for step in range(60):
        if step == 20:
            # Let the first steps reach the lake, so the kill below loses only what is in flight.
            assert client.flush(timeout=30)
            wait_for_steps(collector.out, set(range(20)))
            agent.kill()
        if step == 40:
            agent = agent_factory("a.sock")
        if step == 50:
            # The client has found the new agent (how soon depends on its reconnect backoff):
            # from here on every step must arrive.
            assert client.flush(timeout=30)
        client.push(step, "w", g)
        client.end_step(step)
        time.sleep(0.02)
    assert client.flush(timeout=30)
    stats = client.close()
    accounted = stats.steps_delivered + stats.steps_dropped
    assert stats.steps_ended == 60 and accounted == 60, stats
    assert stats.steps_dropped_queue_full >= 10 and stats.reconnects >= 1, stats
    steps = stop_and_read(collector, [agent], RUN, "steps")
    delivered = {r["step"] for r in rows(steps, scope_kind="model")}
    # Steps before the kill and after the restart arrive; the agent's SIGKILL loses what it held.
    assert set(range(0, 20)) <= delivered
    assert set(range(50, 60)) <= delivered
    # Nothing was in flight at the kill, so every step the agent acknowledged reached the lake.
    assert len(delivered) == stats.steps_delivered


def test_bad_calls_raise_clear_errors(tmp_path, agent_factory):
    with pytest.raises(GradtelError, match="run id"):
        Client("../etc")
    with pytest.raises(GradtelError, match="rank"):
        Client("r", rank=2, world_size=2)
    agent = agent_factory()
    c = Client(RUN, socket=agent.socket)
    with pytest.raises(GradtelError, match="refused the layout"):
        c.register([Tensor("x", (2**62, 8))])
    c.register([Tensor("x", (10,))])
    with pytest.raises(GradtelError, match="not in the registered layout"):
        c.push(0, "y", np.zeros(10, np.float32))
    with pytest.raises(GradtelError, match="registered as f32"):
        c.push(0, "x", np.zeros(10, np.float16))
    with pytest.raises(GradtelError, match="outside the owned range"):
        c.push(0, "x", np.zeros(10, np.float32), offset=1)
    with pytest.raises(GradtelError, match="cannot send float64"):
        c.push(0, "x", np.zeros(10))
    # A step is local or reduced as a whole; a mixed one is refused here, where the agent
    # would refuse it together with every other step of its message.
    assert c.push(5, "x", np.zeros(10, np.float32), local=True)
    with pytest.raises(GradtelError, match="mixes local"):
        c.push(5, "x", np.zeros(10, np.float32))
    with pytest.raises(GradtelError, match="mixes local"):
        c.push_many(5, [("x", np.zeros(10, np.float32), 0)])
    c.end_step(5)
    # NaN and Inf are data, not errors: the agent counts them.
    assert c.push(0, "x", np.array([np.nan, np.inf] + [1.0] * 8, np.float32))
    c.end_step(0)
    assert c.close().steps_delivered == 2
    with pytest.raises(GradtelError, match="after close"):
        c.push(1, "x", np.zeros(10, np.float32))


def test_client_speaks_the_minor_of_this_build():
    import pathlib
    import re

    rust = (pathlib.Path(__file__).resolve().parents[2] / "proto" / "src" / "lib.rs").read_text()
    assert gradtel.PROTOCOL_MINOR == int(re.search(r"PROTOCOL_MINOR: u32 = (\d+);", rust)[1])
    assert set(gradtel.DTYPES) == {"f32", "f16", "bf16"}


def test_large_payloads_are_copied_exactly_outside_the_gil_path():
    from gradtel import client as cl

    rng = np.random.default_rng(7)
    for n in (cl._NOGIL_COPY_BYTES - 1, cl._NOGIL_COPY_BYTES, 3 << 20):
        payload = rng.integers(0, 256, size=n, dtype=np.uint8)
        head = b"\x0a\x93\x01header"
        out = cl._concat(head, payload)
        assert type(out) is bytes and out == head + payload.tobytes()
    # A strided view is made contiguous before the copy, values unchanged.
    x = rng.normal(size=(512, 300)).astype(np.float32)[:, ::3]
    c = Client(RUN, socket="/nonexistent.sock", chunk_bytes=1 << 20)
    c._tensors = {"t": Tensor("t", x.shape)}
    items = c._encode(0, "t", 0, DTYPES_F32, False, x)
    msg = gradtel.v1.ingest_pb2.PushRequest.FromString(items[0].wire)
    got = np.frombuffer(msg.chunk.data, np.float32)
    assert np.array_equal(got, x.ravel()[: got.size]) and sum(i.nbytes for i in items) == x.nbytes
    c.close(timeout=0.1)


DTYPES_F32 = gradtel.DTYPES["f32"][0]


def test_hand_encoded_shared_chunks_parse_as_the_generated_message():
    from gradtel.client import _Slot
    from gradtel.v1 import ingest_pb2

    c = Client(RUN, socket="/nonexistent.sock", chunk_bytes=4000)
    c._tensors = {"w": Tensor("w", (10_000,)), "layer.0.ä" + "b" * 200: Tensor("x", (10,))}
    long_name = "layer.0.ä" + "b" * 200
    for step, local, placed in [
        (0, False, [("w", 1, 4, 0, 0, 64)]),
        # A part longer than chunk_bytes is split; a long name needs two-byte lengths.
        (2**40 + 7, True, [("w", 1, 4, 17, 2**33, 10_000), (long_name, 2, 2, 3, 5, 14)]),
    ]:
        c._queue.clear()
        assert c._enqueue_shared(step, placed, local, (_Slot(0, 1),), 0)
        batch = ingest_pb2.MessageBatch.FromString(c._queue[-1].wire)
        want = []
        for name, dtype, size, offset, at, nbytes in placed:
            for done in range(0, nbytes, 4000):
                n = min(4000, nbytes - done)
                want.append(ingest_pb2.PushRequest(chunk=ingest_pb2.GradientChunk(
                    step=step, tensor=name, offset=offset + done // size, dtype=dtype,
                    local=local, shared=ingest_pb2.SharedSlice(offset=at + done, bytes=n))))
        assert list(batch.requests) == want


def test_hand_encoded_chunks_parse_as_the_generated_message():
    from gradtel.client import _encode_chunk
    from gradtel.v1 import ingest_pb2

    payload = np.arange(1000, dtype=np.float32)
    for step, name, offset, dtype, local, data in [
        (0, "w", 0, 1, False, payload[:3]),
        (2**40 + 7, "layer.0.ä", 123_456_789, 3, True, payload),
        (5, "b" * 300, 2**33, 2, True, payload[:0]),
        # Large enough for the GIL-free copy path.
        (9, "big", 17, 1, False, np.ones(100_000, np.float32)),
    ]:
        raw = data.view(np.uint8).reshape(-1)
        got = ingest_pb2.PushRequest.FromString(_encode_chunk(step, name, offset, dtype, local, raw))
        want = ingest_pb2.PushRequest(chunk=ingest_pb2.GradientChunk(
            step=step, tensor=name, offset=offset, dtype=dtype, local=local, data=raw.tobytes()))
        assert got == want, (step, name)


def test_hand_encoded_step_end_is_the_generated_message_byte_for_byte():
    from gradtel.client import _encode_end
    from gradtel.v1 import ingest_pb2

    for step, loss, lr, batch in [
        (0, None, None, None),
        (7, 0.25, None, None),
        (2**40 + 3, -1.5e-300, 3e-4, 256),
        (1, float("nan"), float("inf"), 0),
        (300, 2, 1, 2**33),  # ints as the training loop may pass them
    ]:
        end = ingest_pb2.EndStep(step=step)
        if loss is not None:
            end.loss = float(loss)
        if lr is not None:
            end.learning_rate = float(lr)
        if batch is not None:
            end.batch_size = int(batch)
        want = ingest_pb2.PushRequest(end_step=end).SerializeToString()
        assert _encode_end(step, loss, lr, batch) == want, (step, loss, lr, batch)


def test_shared_chunk_descriptors_decode_to_the_generated_messages():
    """The shared-region encoder writes each chunk's step last (so a plan can reuse the bytes
    before it); decoded, its MessageBatch elements are the messages protobuf would build,
    including parts split over several chunks."""
    from gradtel.v1 import ingest_pb2

    c = Client(RUN, socket="/nonexistent.sock", chunk_bytes=4000)
    long_name = "layer.0.ä" + "b" * 200
    placed = [("w", 1, 4, 3, 64, 2000), (long_name, 3, 2, 0, 2**33 + 6, 9000)]
    for step in (0, 1, 300, 2**40 + 7):
        for local in (False, True):
            body, chunks = c._encode_shared(step, placed, local)
            got = ingest_pb2.MessageBatch.FromString(body)
            want = []
            for name, dtype, size, offset, at, nbytes in placed:
                per = 4000 - 4000 % size
                for done in range(0, nbytes, per):
                    n = min(per, nbytes - done)
                    want.append(ingest_pb2.PushRequest(chunk=ingest_pb2.GradientChunk(
                        step=step, tensor=name, offset=offset + done // size, dtype=dtype,
                        local=local, shared=ingest_pb2.SharedSlice(offset=at + done, bytes=n))))
            assert list(got.requests) == want, (step, local)
            assert chunks == len(want) == 1 + 3
    c.close(timeout=0.1)


def test_a_span_plans_prepared_bytes_are_the_general_encoders():
    """Staged.push encodes a DDP bucket from bytes its plan prepares once; they must equal what
    the general shared-region encoder writes, for any step and region offset, and the plan must
    give way to it for a part longer than a chunk."""
    from gradtel.client import _SpanPlan

    c = Client(RUN, socket="/nonexistent.sock", chunk_bytes=4000)
    long_name = "layer.0.ä" + "b" * 200
    c._tensors = {"w": Tensor("w", (500,)), long_name: Tensor(long_name, (10,)),
                  "big": Tensor("big", (2000,))}
    flat = np.zeros(3000, np.float32)
    parts = (("w", 10, 500), (long_name, 0, 10))  # out of order, one name needs long lengths
    plan = _SpanPlan(parts, flat.dtype)
    placed_rel = plan.placed(c, flat)
    assert (plan.lo, plan.hi) == (0, 510)
    for step in (0, 1, 300, 2**40 + 7):
        for local in (False, True):
            for at in (0, 64, 2**20 + 128, (512 << 20) - 4096):
                placed = [(n, d, s, o, at + rel, b) for n, d, s, o, rel, b in placed_rel]
                want = c._encode_shared(step, placed, local)
                # Twice: the second from the pieces prepared for this offset.
                assert plan.encode(c, step, at, local) == want, (step, local, at)
                assert plan.encode(c, step, at, local) == want, (step, local, at)
    # 8,000 bytes do not fit one 4,000-byte chunk: the general encoder splits them.
    big = _SpanPlan((("big", 0, 2000),), flat.dtype)
    big.placed(c, flat)
    assert big.encode(c, 5, 0, False) is None
    # A new layout (register) checks the parts again, and prepares new bytes.
    c._tensors = dict(c._tensors)
    c._tensors["w"] = Tensor("w", (400,))
    with pytest.raises(GradtelError, match="owned range"):
        plan.placed(c, flat)
    c.close(timeout=0.1)
