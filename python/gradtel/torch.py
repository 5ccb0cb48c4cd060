"""PyTorch integration: hand a model's gradients to the local gradtel agent without waiting on it.

Three entry points, all returning a :class:`Watcher` whose ``end_step(loss=..., lr=...,
batch_size=...)`` the training loop calls once per optimiser step (after ``optimizer.step()``):

* :func:`watch` — one process (or any wrapper but DDP): a hook per parameter,
  ``register_post_accumulate_grad_hook`` on torch ≥ 2.1, ``Tensor.register_hook`` before (there
  the hook sees each backward's gradient, so with gradient accumulation every micro-batch's
  gradient is pushed; the agent merges them as more values of the same step).
* :func:`watch_ddp` — a DistributedDataParallel communication hook: it sees every bucket's
  *local* gradient before the all-reduce (the input of live SGN), maps it back to parameter names
  (``GradBucket.parameters()``/``gradients()``, looked up on every call so DDP's bucket rebuild
  after the first iteration needs nothing special), then runs the default all-reduce: training is
  unchanged.
* :func:`watch_fsdp` — FullyShardedDataParallel (torch ≥ 2.1): after backward each rank pushes
  the part of every original parameter that lies in its shard of the flat parameter, with the
  offset of that part in the flattened parameter.

Overhead model: on CPU each pushed gradient costs one memcpy on the training thread (into the
client's shared region or queue); the gRPC send and all summarising happen off the step, in the
client's sender thread and the agent process. On GPU the copy is an asynchronous device-to-host
copy — on a side stream for ``watch``/``watch_fsdp`` (it overlaps the next kernels), on the
current stream for DDP (the all-reduce overwrites the bucket in place) — and a separate thread
waits for it and pushes: the step never synchronises with it. When the client has a shared
region with the agent (the default on Linux), ``watch``/``watch_fsdp`` register it with CUDA
(``cudaHostRegister``) and copy each gradient straight into its slot there: the host CPU never
touches the bytes, and the thread waits once per step, not once per parameter. Otherwise the copy
goes to a pinned buffer per parameter (twice the watched gradients' size) and is copied again
into the client's queue. What remains on the step: the hooks' Python (tens of µs per parameter)
and the PCIe traffic. Parameters can be filtered (``params=``) and steps thinned (``every=``).
"""

from __future__ import annotations

import queue
import threading
import weakref
from typing import Callable, Iterable, Optional, Union

import numpy as np
import torch

from gradtel.client import Client, GradtelError, Staged, Tensor

ParamFilter = Union[None, Callable[[str, torch.nn.Parameter], bool], Iterable[str]]

_DTYPES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def _wire_dtype(t: torch.Tensor) -> str:
    try:
        return _DTYPES[t.dtype]
    except KeyError:
        raise GradtelError(f"cannot send {t.dtype} gradients (f32, f16 and bf16 only)") from None


def _host_view(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor's values (no copy); bf16 as its raw 16-bit pattern."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.reshape(-1).numpy()


def _select(model: torch.nn.Module, params: ParamFilter) -> list[tuple[str, torch.nn.Parameter]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if params is None:
        chosen = named
    elif callable(params):
        chosen = [(n, p) for n, p in named if params(n, p)]
    else:
        wanted = set(params)
        chosen = [(n, p) for n, p in named if n in wanted]
        missing = wanted - {n for n, _ in chosen}
        if missing:
            raise GradtelError(f"no trainable parameters named {sorted(missing)}")
    if not chosen:
        raise GradtelError("the parameter filter selects no trainable parameter")
    return chosen


def _strip(name: str) -> str:
    # Wrappers prefix names ("module." for DDP/DataParallel, "_fsdp_wrapped_module." for FSDP);
    # reporting the model's own names keeps runs comparable across wrappers.
    for prefix in ("module.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module."):
        name = name.replace(prefix, "")
    return name


class _DeviceCopier:
    """Copies that never block the step on the client: each gradient (or DDP bucket) is copied
    (device-to-host asynchronously into a pinned buffer, or host-to-host), and a thread waits on
    the copy's event, then pushes. A buffer goes back to its free list only after its push, so a
    copy never overwrites one still being read (steady state: two buffers per parameter)."""

    def __init__(self, client: Client):
        self.client = client
        self.free: dict[str, list[torch.Tensor]] = {}
        self.lock = threading.Lock()
        self.stream = None
        # The client's shared region as registered with CUDA: None until tried, then False
        # (not usable: copies go to pinned buffers) or its (address, size).
        self.region: Union[None, bool, tuple[int, int]] = None
        # Per step: gradients being copied into reserved slots, and which streams copy them.
        self.pending: dict[int, list] = {}
        self.pending_streams: dict[int, set] = {}
        # Whether a backward pass already has the end-of-backward join queued.
        self.join_queued = False
        self.work: "queue.Queue" = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="gradtel-d2h", daemon=True)
        self.thread.start()

    def _buffer(self, name, grad: torch.Tensor) -> torch.Tensor:
        with self.lock:
            bufs = self.free.setdefault(name, [])
            while bufs:
                buf = bufs.pop()
                if buf.numel() == grad.numel() and buf.dtype == grad.dtype:
                    return buf
        return torch.empty(grad.numel(), dtype=grad.dtype, pin_memory=grad.is_cuda)

    def submit(
        self, step: int, name: str, grad: torch.Tensor, local: bool, offset: int, side: bool
    ) -> None:
        """``side``: copy on a side stream, concurrently with the rest of backward (the gradient
        is kept alive for it with ``record_stream``, and the training stream waits for the copies
        at the end of backward, so an in-place change after it — ``clip_grad_norm_``,
        ``zero_grad(set_to_none=False)`` — cannot race them). Without it the copy is ordered on
        the current stream — needed where the next operation overwrites the gradient in place
        (DDP's all-reduce of the bucket)."""
        src = grad.detach().reshape(-1)
        if grad.is_cuda and self._region_usable():
            self._submit_reserved(step, name, src, local, offset, side)
            return
        buf = self._buffer(name, grad)
        event = torch.cuda.Event()
        event.record(self._copy(buf, src, side))
        self.work.put(("push", step, name, buf, event, local, offset))

    def _copy(self, dst: torch.Tensor, src: torch.Tensor, side: bool):
        """Start the asynchronous copy of ``src`` (on a GPU) into host memory ``dst``; the
        stream it runs on."""
        if not side:
            dst.copy_(src, non_blocking=True)
            return torch.cuda.current_stream(src.device)
        if self.stream is None:
            self.stream = torch.cuda.Stream(device=src.device)
        current = torch.cuda.current_stream(src.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            dst.copy_(src, non_blocking=True)
            src.record_stream(self.stream)
        self._join_after_backward(current)
        return self.stream

    def _join_after_backward(self, current) -> None:
        """Make ``current`` (the training stream) wait for the side stream's copies: once, at the
        end of the backward pass this copy was made in — a GPU-side wait, the host does not
        block, and by then most copies are done — or at once outside a backward pass."""
        with self.lock:
            if self.join_queued:
                return
            self.join_queued = True

        def join() -> None:
            with self.lock:
                self.join_queued = False
            current.wait_stream(self.stream)

        try:
            torch.autograd.Variable._execution_engine.queue_callback(join)
        except (AttributeError, RuntimeError):
            join()

    def _region_usable(self) -> bool:
        """Whether D2H copies can land in the client's shared region: it is in use and
        registered with CUDA (done once; a failure falls back to pinned buffers for good)."""
        if self.region is None and self.client.shared_memory_active:
            self.region = _cuda_registered(self.client)
        return bool(self.region) and self.client.shared_memory_active

    def _submit_reserved(
        self, step: int, name: str, src: torch.Tensor, local: bool, offset: int, side: bool
    ) -> None:
        try:
            got = self.client.reserve(step, src.numel() * src.element_size())
        except GradtelError:
            return  # the client was closed: the step cannot be reported (and never blocks)
        if got is None:
            return  # the step is dropped (counted by the client)
        slot, view = got
        stream = self._copy(torch.from_numpy(view).view(src.dtype), src, side)
        with self.lock:
            self.pending.setdefault(step, []).append((name, slot, offset, _wire_dtype(src), local))
            self.pending_streams.setdefault(step, set()).add(stream)

    def submit_bucket(self, step: int, buf: torch.Tensor, layout: list) -> None:
        """One copy of a DDP bucket (device-to-host on the current stream, or host-to-host),
        pushed from this thread: the training thread pays only the copy."""
        key = ("bucket", buf.numel(), buf.dtype, tuple(layout))
        host = self._buffer(key, buf)
        host.copy_(buf.detach().reshape(-1), non_blocking=buf.is_cuda)
        event = None
        if buf.is_cuda:
            event = torch.cuda.Event()
            event.record()
        self.work.put(("bucket", step, key, host, event, layout))

    def end_step(self, step: int, scalars: dict) -> None:
        with self.lock:
            # A backward that failed before its end never ran the join; the next one queues anew.
            self.join_queued = False
            parts = self.pending.pop(step, None)
            streams = self.pending_streams.pop(step, ())
        if parts:
            # One event per stream that copied: the thread waits once for the whole step.
            events = []
            for stream in streams:
                event = torch.cuda.Event()
                event.record(stream)
                events.append(event)
            self.work.put(("reserved", step, parts, events))
        # Ordered behind the step's pushes, so the end reaches the client after them.
        self.work.put(("end", step, scalars))

    def flush(self) -> None:
        self.work.join()

    def _run(self) -> None:
        while True:
            job = self.work.get()
            try:
                if job[0] == "push":
                    _, step, name, buf, event, local, offset = job
                    event.synchronize()
                    try:
                        self.client.push(step, name, _host_view(buf), local=local, offset=offset)
                    finally:
                        with self.lock:
                            self.free.setdefault(name, []).append(buf)
                elif job[0] == "bucket":
                    _, step, key, buf, event, layout = job
                    if event is not None:
                        event.synchronize()
                    try:
                        _push_layout(self.client, step, _host_view(buf), layout)
                    finally:
                        with self.lock:
                            self.free.setdefault(key, []).append(buf)
                elif job[0] == "reserved":
                    _, step, parts, events = job
                    for event in events:
                        event.synchronize()
                    for local in {p[4] for p in parts}:
                        self.client.push_reserved(
                            step, [p[:4] for p in parts if p[4] == local], local=local)
                else:
                    _, step, scalars = job
                    if isinstance(scalars.get("loss"), _PendingScalar):
                        scalars = {**scalars, "loss": scalars["loss"].value()}
                    self.client.end_step(step, **scalars)
            except GradtelError:
                pass  # counted by the client (closed, or dropped)
            finally:
                self.work.task_done()


# Clients whose shared region this process registered with CUDA (or failed to): a region is
# registered once, whatever the number of watchers — a second cudaHostRegister of the same memory
# fails, and its error would surface in the next kernel launch of the training loop.
_REGISTERED: "weakref.WeakKeyDictionary[Client, Union[bool, tuple[int, int]]]" = (
    weakref.WeakKeyDictionary())
_REGISTER_LOCK = threading.Lock()


def _cuda_registered(client: Client) -> Union[bool, tuple[int, int]]:
    """The client's shared region, registered with CUDA as page-locked memory (so device-to-host
    copies into it are asynchronous DMA), or False where that cannot be done."""
    with _REGISTER_LOCK:
        if client in _REGISTERED:
            return _REGISTERED[client]
        region = client.shared_region()
        result: Union[bool, tuple[int, int]] = False
        if region is not None:
            try:
                cudart = torch.cuda.cudart()
                rc = cudart.cudaHostRegister(region[0], region[1], 0)
                if int(getattr(rc, "value", rc)) == 0:
                    result = region
                    client.on_close(lambda: cudart.cudaHostUnregister(region[0]))
                else:
                    # Clear the failed call's error before torch's next launch check sees it.
                    getattr(cudart, "cudaGetLastError", lambda: None)()
            except (AttributeError, RuntimeError, TypeError, ValueError):
                pass
        _REGISTERED[client] = result
        return result


def _push_layout(client: Client, step: int, flat: np.ndarray, layout: list) -> None:
    client.push_many(step, [(name, flat[off:off + n], 0) for name, off, n in layout], local=True)


class Watcher:
    """What the watch functions return: counts steps and pushes through the client."""

    def __init__(self, client: Client, every: int, start_step: int = 0):
        if every < 1:
            raise GradtelError("every must be ≥ 1")
        if start_step < 0:
            raise GradtelError("start_step must be ≥ 0")
        self.client = client
        self.every = every
        self._step = start_step
        self._paused = False
        self._handles: list = []
        # Per-parameter hooks (watch): attaches them and returns their handles. They are
        # attached only while a step is reported (see _sync_hooks).
        self._attach: Optional[Callable[[], list]] = None
        self._copier: Optional[_DeviceCopier] = None
        self._lock = threading.Lock()

    @property
    def step(self) -> int:
        """The step the next ``end_step`` closes. A job resumed from a checkpoint starts at the
        checkpoint's step (``start_step=``), so its steps line up with the first run's and the
        collector takes them as a resumed trajectory of the same run (README)."""
        return self._step

    @step.setter
    def step(self, step: int) -> None:
        self._step = step
        self._sync_hooks()

    @property
    def paused(self) -> bool:
        """While True no step is reported (evaluation, or a run measuring what the telemetry
        costs in blocks of steps with and without it); in data-parallel runs every rank must
        pause on the same steps. Set it before the step's backward pass."""
        return self._paused

    @paused.setter
    def paused(self, paused: bool) -> None:
        self._paused = bool(paused)
        self._sync_hooks()

    @property
    def active(self) -> bool:
        """Whether the current step is one that is reported (``step % every == 0``, not
        :attr:`paused`)."""
        return not self._paused and self._step % self.every == 0

    def _sync_hooks(self) -> None:
        """Per-parameter hooks only on reported steps: each is a Python call per parameter and
        backward pass (≈ 15 µs on torch 2.11 beside a GPU; +2.4 % of a ResNet-50 step on an
        H200 at every=10 with them on every step, bench/RESULTS.md), and an unreported step
        needs none. Attaching them again costs one registration per parameter per reported
        step."""
        if self._attach is None:
            return
        if self.active:
            if not self._handles:
                self._handles = self._attach()
        elif self._handles:
            for h in self._handles:
                h.remove()
            self._handles = []

    def _push(
        self, name: str, grad: torch.Tensor, local: bool, offset: int = 0, side: bool = True
    ) -> None:
        if grad.is_cuda:
            with self._lock:
                if self._copier is None:
                    self._copier = _DeviceCopier(self.client)
            self._copier.submit(self.step, name, grad, local, offset, side)
        else:
            # The client copies before it returns, so the view may be reused right after.
            self.client.push(self.step, name, _host_view(grad), local=local, offset=offset)

    def _prepare_device(self) -> None:
        """For gradients on a GPU: the copier, and the client's shared region registered with
        CUDA as page-locked memory (``cudaHostRegister``) — here, at set-up, not in the first
        reported step's backward pass: for the default 512 MiB region that took ≈ 0.6 s on
        the H200 host, one stalled training step (bench/RESULTS.md, session 22)."""
        with self._lock:
            if self._copier is None:
                self._copier = _DeviceCopier(self.client)
        self._copier._region_usable()

    def _push_bucket(
        self, buf: torch.Tensor, layout: tuple, flat: Optional[np.ndarray] = None
    ) -> Optional[Staged]:
        """Local gradients laid out in a DDP bucket's flat buffer (``flat``: its numpy view, if
        the caller keeps one), which the all-reduce that follows overwrites in place. On a GPU
        the buffer is copied on the current stream and pushed by the copier's thread. On a CPU
        it is copied into the shared region now and the returned :class:`Staged` is pushed by
        the caller once the all-reduce is launched (its Python then overlaps the all-reduce);
        without a shared region it is pushed at once. Handing a CPU bucket to a thread measured
        slower: the thread's Python work then contends for the GIL with the all-reduce
        launch."""
        if buf.is_cuda:
            with self._lock:
                if self._copier is None:
                    self._copier = _DeviceCopier(self.client)
            self._copier.submit_bucket(self.step, buf, layout)
            return None
        if flat is None:
            flat = _host_view(buf)
        staged = self.client.stage_many(self.step, flat, layout, local=True)
        if staged is None:
            _push_layout(self.client, self.step, flat, layout)
        return staged

    def end_step(
        self,
        loss: Optional[float] = None,
        lr: Optional[float] = None,
        batch_size: Optional[int] = None,
    ) -> None:
        """Close the current step (call once per optimiser step) and move to the next."""
        if self.active:
            self._before_end()
            if self._copier is not None:
                # A loss on the GPU is read by the copier's thread: `.item()` here would make
                # the training thread wait for the GPU every step.
                self._copier.end_step(self.step, {"loss": _deferred_scalar(loss), "lr": lr,
                                                  "batch_size": batch_size})
            else:
                self.client.end_step(self.step, loss=_scalar(loss), lr=lr, batch_size=batch_size)
        self.step += 1

    def _before_end(self) -> None:
        pass

    def close(self, timeout: float = 10.0):
        """Remove the hooks, send what is queued, close the client; returns its Stats."""
        self._attach = None
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._copier is not None:
            self._copier.flush()
        return self.client.close(timeout)


def _scalar(x):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.item()
    return float(x)


class _PendingScalar:
    """A GPU scalar on its way to the host: an asynchronous copy into pinned memory and the
    event that marks its end; :meth:`value` (on the copier's thread) waits for that event."""

    __slots__ = ("host", "event")

    def __init__(self, x: torch.Tensor):
        self.host = torch.empty((), dtype=x.dtype, pin_memory=True)
        self.host.copy_(x.detach().reshape(()), non_blocking=True)
        self.event = torch.cuda.Event()
        self.event.record()

    def value(self) -> float:
        self.event.synchronize()
        return float(self.host.item())


def _deferred_scalar(x):
    if isinstance(x, torch.Tensor) and x.is_cuda:
        return _PendingScalar(x)
    return _scalar(x)


def _layout(named: list[tuple[str, torch.nn.Parameter]], track_count: Optional[int]) -> list[Tensor]:
    return [
        Tensor(name, tuple(p.shape), _wire_dtype(p), track_count=track_count) for name, p in named
    ]


def watch(
    model: torch.nn.Module,
    client: Client,
    *,
    every: int = 1,
    params: ParamFilter = None,
    track_count: Optional[int] = None,
    start_step: int = 0,
) -> Watcher:
    """Report the gradients of ``model``'s parameters (all trainable ones, or those ``params``
    selects: a list of names or a predicate ``(name, param) → bool``) every ``every`` steps.
    Steps count from ``start_step`` (a job resumed from a checkpoint: the checkpoint's step)."""
    w = Watcher(client, every, start_step)
    named = [(_strip(n), p) for n, p in _select(model, params)]
    client.register(_layout(named, track_count))
    post_accumulate = hasattr(torch.Tensor, "register_post_accumulate_grad_hook")

    def attach() -> list:
        handles = []
        for name, p in named:
            if post_accumulate:

                def hook(param, name=name):
                    if w.active and param.grad is not None:
                        w._push(name, param.grad, local=False)

                handles.append(p.register_post_accumulate_grad_hook(hook))
            else:

                def hook(grad, name=name):
                    if w.active:
                        w._push(name, grad, local=False)

                handles.append(p.register_hook(hook))
        return handles

    w._attach = attach
    w._sync_hooks()
    if any(p.is_cuda for _, p in named):
        w._prepare_device()
    return w


class _DDPState:
    def __init__(self, watcher: Watcher, names: dict[int, str], process_group):
        self.watcher = watcher
        self.names = names
        self.process_group = process_group
        # Bucket index → (its flat buffer, layout, numpy view of a CPU buffer, the buffer the
        # all-reduce works in): see plan.
        self.buckets: dict[int, tuple] = {}
        # Imported once: an import statement in the hook is a lookup per bucket and step.
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        self.allreduce_hook = allreduce_hook
        # allreduce_hook's arithmetic (divide by the group size, then sum) through the process
        # group's own binding: `dist.all_reduce` checks its arguments in Python every call, and
        # they are fixed here once (the all-reduce's share of a VM rank's training-thread
        # samples fell from 2.6 % to 2.1 %).
        self.group = self.options = None
        try:
            import torch.distributed as dist

            group = process_group if process_group is not None else dist.group.WORLD
            options = dist.AllreduceOptions()
            options.reduceOp = dist.ReduceOp.SUM
            if group is not None:
                self.group, self.options, self.group_size = group, options, group.size()
        except (AttributeError, ImportError, RuntimeError):
            pass

    def allreduce(self, bucket, buf: torch.Tensor):
        """What ``allreduce_hook(process_group, bucket)`` returns, the same operations
        (``buf``: the bucket's buffer)."""
        if not self.direct(buf):
            return self.allreduce_hook(self.process_group, bucket)
        buf.div_(self.group_size)
        return self.group.allreduce([buf], self.options).get_future().then(_first)

    def direct(self, buf: torch.Tensor) -> bool:
        """Whether the all-reduce goes through the process group's own binding."""
        return self.group is not None and not buf.is_complex()

    def allreduce_aside(self, buf: torch.Tensor, scratch: torch.Tensor):
        """The same all-reduce, of ``buf / group size`` written into ``scratch``, leaving
        ``buf`` — the rank's local gradients — untouched while it runs, so they can be copied
        out in its shadow. DDP takes the all-reduced values from the returned tensor (as it does
        from compression hooks'), so training is unchanged: the same division, the same sum."""
        torch.div(buf, self.group_size, out=scratch)
        return self.group.allreduce([scratch], self.options).get_future().then(_first)

    def plan(self, bucket) -> tuple:
        """The bucket's flat buffer, the watched gradients' layout in it — ``((name, offset,
        numel), ...)``, or None when a gradient is not a plain view of the buffer — the
        buffer's numpy view when it is on the CPU, and a tensor like it for the all-reduce to
        work in (see allreduce_aside; None where it is not used). Worked out once per bucket
        buffer: DDP hands the same buffer back every step, and building the key from the
        bucket's parameters cost more than the rest of the lookup (py-spy). A held buffer's address cannot be a
        newer buffer's, so a rebuilt bucket (DDP rebuilds them after the first iteration, all
        at once) always misses. Tuples, so that the client's per-layout plan
        (Client.stage_many) stays valid."""
        buf, index = bucket.buffer(), bucket.index()
        entry = self.buckets.get(index)
        if entry is not None:
            held = entry[0]
            if held is buf or (held.data_ptr() == buf.data_ptr() and held.numel() == buf.numel()
                               and held.dtype == buf.dtype and held.device == buf.device):
                return entry
        layout = self._layout(bucket, buf)
        view = None if layout is None or buf.is_cuda else _host_view(buf)
        # One more buffer of the bucket's size, on the CPU only: there memory is plentiful, and
        # the copy out of the bucket is the rank's work that the all-reduce can hide.
        scratch = (torch.empty_like(buf) if layout and view is not None and self.direct(buf)
                   else None)
        entry = self.buckets[index] = (buf, layout, view, scratch)
        return entry

    def _layout(self, bucket, buf: torch.Tensor) -> Optional[tuple]:
        base, size, layout = buf.data_ptr(), buf.element_size(), []
        for p, g in zip(bucket.parameters(), bucket.gradients()):
            name = self.names.get(id(p))
            if name is None:
                continue
            off, rem = divmod(g.data_ptr() - base, size)
            if (rem or g.dtype != buf.dtype or g.device != buf.device
                    or not g.is_contiguous() or off < 0 or off + g.numel() > buf.numel()):
                return None
            layout.append((name, off, g.numel()))
        return tuple(layout)


def _first(fut):
    return fut.value()[0]


def _ddp_hook(state: _DDPState, bucket):
    w = state.watcher
    staged = None
    if w.active:
        buf, layout, flat, scratch = state.plan(bucket)
        if layout and scratch is not None:
            # A CPU bucket: the all-reduce first, into the scratch buffer; the local gradients
            # stay in the bucket and are copied out and queued while it runs.
            fut = state.allreduce_aside(buf, scratch)
            staged = w._push_bucket(buf, layout, flat)
            if staged is not None:
                staged.push()
            return fut
        if layout is not None:
            # The bucket's flat buffer holds every local gradient: one view (or one
            # device-to-host copy) for all of them instead of one per parameter.
            if layout:
                staged = w._push_bucket(buf, layout, flat)
        else:
            for p, g in zip(bucket.parameters(), bucket.gradients()):
                name = state.names.get(id(p))
                if name is not None:
                    w._push(name, g, local=True, side=False)
    else:
        buf = bucket.buffer()
    try:
        return state.allreduce(bucket, buf)
    finally:
        if staged is not None:
            # The local gradients are in the shared region already; queueing them while the
            # all-reduce runs takes this Python off the step's critical path.
            staged.push()


def watch_ddp(
    ddp_model: "torch.nn.parallel.DistributedDataParallel",
    client: Client,
    *,
    every: int = 1,
    params: ParamFilter = None,
    track_count: Optional[int] = None,
    process_group=None,
    start_step: int = 0,
) -> Watcher:
    """Report every rank's local (pre-all-reduce) gradient through a DDP communication hook, then
    all-reduce as DDP does by default. Register before the first forward pass. Steps count from
    ``start_step`` (a job resumed from a checkpoint: the checkpoint's step)."""
    w = Watcher(client, every, start_step)
    named = [(_strip(n), p) for n, p in _select(ddp_model, params)]
    client.register(_layout(named, track_count))
    state = _DDPState(w, {id(p): n for n, p in named}, process_group)
    ddp_model.register_comm_hook(state, _ddp_hook)
    return w


class _FSDPWatcher(Watcher):
    def __init__(self, client: Client, every: int, flats: list, start_step: int = 0):
        super().__init__(client, every, start_step)
        self.flats = flats  # (flat parameter, [(name, param_index, start, end, shard_offset)])

    def _before_end(self) -> None:
        for flat, parts in self.flats:
            g = flat.grad
            if g is None:
                continue
            g = g.reshape(-1)
            for name, start, end, at in parts:
                self._push(name, g[at : at + (end - start)], local=False, offset=start)


def watch_fsdp(
    fsdp_model,
    client: Client,
    *,
    every: int = 1,
    track_count: Optional[int] = None,
    start_step: int = 0,
) -> Watcher:
    """Report, at each ``end_step``, the coordinates of every original parameter that this rank's
    FSDP shard holds (the reduce-scattered gradient, with ``owned`` ranges in the layout so the
    collector merges the shards into the full gradient). Needs torch ≥ 2.1 (``use_orig_params``
    either way); call ``end_step`` after backward and before ``zero_grad``. Steps count from
    ``start_step`` (a job resumed from a checkpoint: the checkpoint's step).

    The ranks' reports are shards of one reduced gradient, so the client is
    ``Client(run_id, rank=0, world_size=1, shard=dist.get_rank(), shard_count=world)``."""
    import torch.distributed as dist

    if every < 1 or start_step < 0:
        raise GradtelError("every must be ≥ 1 and start_step ≥ 0")
    if dist.is_initialized() and client.shard_count != dist.get_world_size():
        raise GradtelError(
            "FSDP shards the gradient over the process group: create the client with "
            f"shard={dist.get_rank()}, shard_count={dist.get_world_size()} (and world_size=1)"
        )
    flats = []
    layout = []
    for module in fsdp_model.modules():
        handle = getattr(module, "_handle", None)
        flat = getattr(handle, "flat_param", None)
        if flat is None:
            continue
        infos = getattr(flat, "_shard_param_infos", None)
        fqns = getattr(flat, "_fqns", None)
        shapes = getattr(flat, "_shapes", None)
        if infos is None or fqns is None or shapes is None:
            raise GradtelError(
                "this torch version's FSDP does not expose the flat parameter's shard layout "
                "(torch ≥ 2.1 needed)"
            )
        parts = []
        for fqn, shape, info in zip(fqns, shapes, infos):
            if not info.in_shard:
                continue
            name = _strip(fqn)
            start = int(info.intra_param_start_idx)
            end = int(info.intra_param_end_idx) + 1
            parts.append((name, start, end, int(info.offset_in_shard)))
            layout.append(
                Tensor(name, tuple(shape), _wire_dtype(flat), owned=(start, end),
                       track_count=track_count)
            )
        flats.append((flat, parts))
    if not layout:
        raise GradtelError("no FSDP flat parameter with a local shard found")
    client.register(layout)
    w = _FSDPWatcher(client, every, flats, start_step)
    if any(flat.is_cuda for flat, _ in flats):
        w._prepare_device()
    return w


__all__ = ["watch", "watch_ddp", "watch_fsdp", "Watcher"]
