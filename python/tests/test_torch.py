"""PyTorch integration against real daemons: a 2-process CPU DDP run (gloo) of a small CNN on the
digits, each rank with its own gradtel-agent, through examples/ddp_digits.py."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

if os.environ.get("GRADTEL_REQUIRE_TORCH") == "1":
    import torch
else:
    torch = pytest.importorskip("torch")

import gradtel  # noqa: E402
from gradtel.torch import watch  # noqa: E402
from conftest import REPO, read_table, stop_and_read  # noqa: E402

EXAMPLE = REPO / "examples" / "ddp_digits.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, world=2):
    """Start the ranks the way torchrun does (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(EXAMPLE), *args], env=env,
                                      stdout=subprocess.PIPE, text=True))
    return procs


def wait_all(procs, timeout=600):
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out
        outs.append(out)
    return outs


def test_watch_single_process_reports_the_grads(collector, agent_factory):
    agent = agent_factory(extra=["--track-count", "100000"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.Tanh(), torch.nn.Linear(30, 3))
    client = gradtel.Client("py-watch", socket=agent.socket)
    w = watch(model, client, every=2, params=lambda n, p: n.startswith("0."))
    grads = {}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(8):
        w.paused = step in (2, 3)  # step 2 would be reported: paused, it is not
        # The parameter hooks are attached only for a reported step (steps 0, 4 and 6).
        assert len(w._handles) == (2 if step in (0, 4, 6) else 0), (step, w._handles)
        opt.zero_grad()
        model(torch.randn(8, 20)).pow(2).mean().backward()
        grads[step] = {n: p.grad.detach().clone().numpy().ravel()
                       for n, p in model.named_parameters()}
        opt.step()
        w.end_step(loss=0.0)
    stats = w.close()
    assert stats.steps_ended == 3 and stats.steps_delivered == 3, stats
    coords = stop_and_read(collector, [agent], "py-watch", "coords").to_pylist()
    assert {c["step"] for c in coords} == {0, 4, 6}
    assert {c["tensor"] for c in coords} == {"0.weight", "0.bias"}
    assert len(coords) == 3 * (20 * 30 + 30), "every coordinate is tracked at this budget"
    for c in coords:
        assert c["value"] == grads[c["step"]][c["tensor"]][c["index"]]


def test_a_job_resumed_from_a_checkpoint_is_a_new_trajectory_of_its_run(collector, agent_factory):
    """A first job reports steps 0-7; a second one, resumed from the checkpoint of step 4, starts
    its watcher there (``start_step=4``) and reports 4-9 under the same run id. The collector
    sees the rank go back and writes the resumed steps as a new trajectory of the run."""
    from conftest import metric

    agent = agent_factory()
    torch.manual_seed(1)
    model = torch.nn.Linear(10, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bad = gradtel.Client("py-resume", socket=agent.socket)
    with pytest.raises(gradtel.GradtelError):
        watch(model, bad, start_step=-1)
    bad.close()

    def job(start, stop):
        w = watch(model, gradtel.Client("py-resume", socket=agent.socket), start_step=start)
        for _ in range(start, stop):
            opt.zero_grad()
            model(torch.randn(8, 10)).pow(2).mean().backward()
            opt.step()
            w.end_step()
        stats = w.close()
        assert stats.steps_delivered == stop - start, stats

    job(0, 8)
    job(4, 10)
    deadline = time.monotonic() + 30
    while metric(collector, "gradtel_collector_trajectories_resumed_total") < 1:
        assert time.monotonic() < deadline, "the resume was not recognised"
        time.sleep(0.05)
    steps = stop_and_read(collector, [agent], "py-resume", "steps").to_pylist()
    model_rows = sorted(
        (r["step"], r["trajectory"] > 0) for r in steps if r["scope_kind"] == "model")
    assert model_rows == sorted([(s, False) for s in range(8)] + [(s, True) for s in range(4, 10)])
    assert not any(r["late"] for r in steps)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_watch_on_a_gpu_copies_gradients_straight_into_the_shared_region(collector, agent_factory):
    """On a GPU, watch registers the client's shared region with CUDA and copies every gradient
    into its slot there; what the lake holds is exactly each step's .grad."""
    agent = agent_factory(extra=["--track-count", "100000"])
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = torch.nn.Sequential(torch.nn.Linear(64, 300), torch.nn.Tanh(),
                                torch.nn.Linear(300, 10)).to(dev)
    client = gradtel.Client("py-gpu", socket=agent.socket)
    w = watch(model, client)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads, losses = {}, {}
    for step in range(5):
        if step == 3:
            # A second watcher of the same client (as when a loop re-wraps the model) shares
            # the one CUDA registration of the region.
            for h in w._handles:
                h.remove()
            w._copier.flush()
            first = w._copier.region
            w = watch(model, client)
            w.step = step
        opt.zero_grad(set_to_none=False)
        loss = model(torch.randn(32, 64, device=dev)).pow(2).mean()
        loss.backward()
        losses[step] = loss.item()
        kept = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        # Changed in place right after backward (as clip_grad_norm_ does): the report must
        # hold the gradient as backward left it, not a copy racing this.
        for p in model.parameters():
            p.grad.mul_(-3.0)
        grads[step] = {n: g.cpu().numpy().ravel() for n, g in kept.items()}
        opt.step()
        # A CUDA loss is read on the copier's thread, never with .item() in the step.
        w.end_step(loss=loss)
    assert w._copier is not None and w._copier.region, "the region was registered with CUDA"
    assert w._copier.region == first
    stats = w.close()
    assert stats.steps_delivered == 5, stats
    assert stats.bytes_shared == stats.bytes_sent == 5 * sum(
        g.nbytes for g in grads[0].values()), stats
    coords = stop_and_read(collector, [agent], "py-gpu", "coords").to_pylist()
    assert len(coords) == 5 * sum(g.size for g in grads[0].values())
    steps = read_table(collector.out, "py-gpu", "steps").to_pylist()
    assert {r["step"]: r["loss"] for r in steps if r["scope_kind"] == "model"} == losses
    for c in coords:
        assert c["value"] == grads[c["step"]][c["tensor"]][c["index"]]


# With bucket views DDP's gradients live in the buckets the hook all-reduces aside from, and
# get the all-reduced values back from the tensor the hook returns.
@pytest.mark.parametrize("bucket_view", [False, True], ids=["grads-apart", "bucket-view"])
def test_ddp_reports_each_ranks_local_gradient_and_leaves_training_unchanged(
    tmp_path, collector, agent_factory, bucket_view
):
    steps = 120
    agents = [agent_factory(f"agent-{r}.sock", extra=["--track-count", "512"]) for r in range(2)]
    common = ["--steps", str(steps), "--batch", "16", "--seed", "3"]
    common += ["--bucket-view"] if bucket_view else []
    wait_all(launch(common + [
        "--run-id", "py-ddp", "--socket", str(tmp_path / "agent-{rank}.sock"),
        "--record-local", str(tmp_path / "local-{rank}.npz"),
        "--save-model", str(tmp_path / "with.npz"), "--stats", str(tmp_path / "stats-{rank}.json"),
    ]))
    wait_all(launch(common + ["--no-gradtel", "--save-model", str(tmp_path / "without.npz")]))

    for rank in range(2):
        client = json.loads((tmp_path / f"stats-{rank}.json").read_text())["client"]
        assert client["steps_delivered"] == steps and client["steps_dropped"] == 0, client

    with_g, without = np.load(tmp_path / "with.npz"), np.load(tmp_path / "without.npz")
    for name in without.files:
        # allreduce_hook divides before summing where DDP's built-in hook sums first; with two
        # ranks, halving is exact, so the models agree to the bit.
        np.testing.assert_array_equal(with_g[name], without[name], err_msg=name)

    coords = stop_and_read(collector, agents, "py-ddp", "coords").to_pylist()
    local = [dict(np.load(tmp_path / f"local-{r}.npz")) for r in range(2)]
    seen = set()
    for c in coords:
        assert c["local"], "DDP hook values are local (pre-all-reduce) gradients"
        expected = local[c["rank"]][c["tensor"]][c["step"]].ravel()[c["index"]]
        assert c["value"] == expected, c
        seen.add((c["rank"], c["step"]))
    assert seen == {(r, s) for r in range(2) for s in range(steps)}
    model_rows = [r for r in read_table(collector.out, "py-ddp", "steps").to_pylist()
                  if r["scope_kind"] == "model"]
    assert sorted(r["step"] for r in model_rows) == list(range(steps))
    assert all(r["ranks_reported"] == 2 and r["local"] for r in model_rows)
    n_params = sum(v.size for k, v in without.items())
    assert all(r["elements_received"] == 2 * n_params for r in model_rows)


def test_ddp_training_completes_when_an_agent_is_killed(tmp_path, collector, agent_factory):
    steps = 150
    agents = [agent_factory(f"agent-{r}.sock") for r in range(2)]
    procs = launch(["--steps", str(steps), "--batch", "16", "--step-sleep", "0.02",
                    "--run-id", "py-kill", "--socket", str(tmp_path / "agent-{rank}.sock"),
                    "--stats", str(tmp_path / "stats-{rank}.json")])
    for line in procs[0].stdout:
        if line.startswith("step 50 "):
            agents[0].kill()
            break
    outs = wait_all(procs)
    assert any("gradtel:" in o for o in outs)
    s0 = json.loads((tmp_path / "stats-0.json").read_text())["client"]
    s1 = json.loads((tmp_path / "stats-1.json").read_text())["client"]
    assert s0["steps_ended"] == steps and s0["steps_dropped"] > 0, s0
    assert s0["steps_delivered"] + s0["steps_dropped"] == steps, s0
    assert s1["steps_delivered"] == steps, s1


def test_bucket_copies_go_through_the_copier_thread(collector, agent_factory):
    """The path GPU DDP buckets take (one copy of the flat buffer, pushed as slices by the
    copier's thread), driven with a CPU tensor: the same code apart from the CUDA event."""
    from gradtel.torch import _DeviceCopier

    agent = agent_factory(extra=["--track-count", "100000"])
    client = gradtel.Client("py-bucket", socket=agent.socket)
    client.register([gradtel.Tensor("a", (3, 4)), gradtel.Tensor("b", (5,))])
    copier = _DeviceCopier(client)
    layout = [("a", 0, 12), ("b", 12, 5)]
    sent = {}
    for step in range(4):
        flat = torch.randn(17)
        sent[step] = flat.clone().numpy()
        copier.submit_bucket(step, flat, layout)
        flat.zero_()  # as the all-reduce overwrites the bucket: the copy must already be taken
        copier.end_step(step, {})
    copier.flush()
    stats = client.close()
    assert stats.steps_delivered == 4, stats
    coords = stop_and_read(collector, [agent], "py-bucket", "coords").to_pylist()
    assert len(coords) == 4 * 17
    for c in coords:
        offset = {"a": 0, "b": 12}[c["tensor"]]
        assert c["local"] and c["value"] == sent[c["step"]][offset + c["index"]]
