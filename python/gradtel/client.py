"""The numpy-level client of the local gradtel agent (gradtel.v1 Ingest over a Unix socket).

A training process registers its layout once, then per step calls :meth:`Client.push` for each
gradient it wants summarised and :meth:`Client.end_step` when the step is over. Every call returns
after at most one copy of the caller's buffer: the bytes go into a bounded queue that a background
thread streams to the agent on one long-lived ``PushSteps`` stream (the agent acknowledges every
step on it), packing small tensors into batches so a step costs a few messages, not one per
tensor.

Payloads of 16 kB and more normally skip the gRPC stream: the client copies them into a shared
memory region (a sealed memfd, Linux) that the agent maps read-only, and sends only where they lie
(gradtel.v1 minor 4). That leaves one copy of each gradient in the training process, made with the
GIL released, instead of the copies grpcio makes while holding it. A region is freed as soon as the
agent acknowledges the step. When the agent cannot map the region (another host or PID namespace,
an older agent) payloads travel inline, as before.

Loss is never silent. A step is dropped whole, and counted in :class:`Stats`, when
  * the queue has no room for one of its pushes (``steps_dropped_queue_full``) — its queued pushes
    are withdrawn, later pushes and its end are discarded, so no half step is ever reported;
  * the agent's own shipping queue is full (``steps_dropped_agent``, from the agent's reply);
  * the connection fails while the step is in flight, e.g. the agent was killed
    (``steps_lost_transport``) — the client reconnects and registers again;
  * the client is closed before the step could be sent (``steps_unsent_at_close``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import mmap
import os
import re
import struct
import threading
import time
import weakref
from typing import Iterable, Iterator, Optional, Sequence

import grpc
import numpy as np

from gradtel.v1 import common_pb2, ingest_pb2

log = logging.getLogger("gradtel")

#: Minor revision of gradtel.v1 this client speaks (see proto/gradtel/v1/common.proto); the
#: agent must speak at least minor 2 (PushSteps, ChunkBatch). With a minor-3 agent several
#: steps share one MessageBatch and one StepAck. (Minor 5 changed only what agents send
#: collectors: histogram indices as differences.)
PROTOCOL_MINOR = 5
_MIN_AGENT_MINOR = 2
_GROUP_MINOR = 3

_RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# The agent refuses messages above 64 MiB; 4 MiB chunks keep several in flight and are large
# enough that per-message overhead is negligible.
DEFAULT_CHUNK_BYTES = 4 << 20
_MAX_MESSAGE_BYTES = 64 << 20

#: dtype name → (wire enum, element size in bytes).
DTYPES = {
    "f32": (common_pb2.DTYPE_F32, 4),
    "f16": (common_pb2.DTYPE_F16, 2),
    "bf16": (common_pb2.DTYPE_BF16, 2),
}


class GradtelError(Exception):
    """A call the agent (or the client's own checks) refused: bad layout, run id, tensor, dtype."""


def dtype_of(array: np.ndarray, dtype: Optional[str] = None) -> str:
    """The wire dtype of ``array``: float32 → ``f32``, float16 → ``f16``, ml_dtypes' bfloat16 →
    ``bf16``. A 2-byte integer array holding raw bfloat16 bits (e.g. ``torch.bfloat16`` viewed
    as int16) needs ``dtype="bf16"``."""
    if dtype is not None:
        if dtype not in DTYPES:
            raise GradtelError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
        if array.dtype.itemsize != DTYPES[dtype][1]:
            raise GradtelError(
                f"dtype {dtype} has {DTYPES[dtype][1]}-byte elements, the array has "
                f"{array.dtype.itemsize}-byte {array.dtype}"
            )
        return dtype
    if array.dtype == np.float32:
        return "f32"
    if array.dtype == np.float16:
        return "f16"
    if array.dtype.name == "bfloat16":
        return "bf16"
    raise GradtelError(
        f"cannot send {array.dtype} gradients: use float32, float16 or bfloat16 "
        "(or raw bfloat16 bits with dtype='bf16')"
    )


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One tensor of the layout: its full shape, the dtype pushes will use, and — for sharded
    training (FSDP/ZeRO) — the half-open range ``owned`` of flattened coordinates this rank
    reports. ``track_count`` overrides the agent's number of tracked coordinates."""

    name: str
    shape: Sequence[int]
    dtype: str = "f32"
    owned: Optional[tuple[int, int]] = None
    track_count: Optional[int] = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n

    def owned_range(self) -> tuple[int, int]:
        return self.owned if self.owned is not None else (0, self.numel)


@dataclasses.dataclass
class Stats:
    """What happened to the steps this client was given. Every ended step lands in exactly one of
    ``steps_delivered`` or a ``steps_dropped_*``/``steps_lost_*``/``steps_unsent_*`` counter."""

    steps_ended: int = 0
    steps_delivered: int = 0
    steps_dropped_queue_full: int = 0
    steps_dropped_agent: int = 0
    steps_lost_transport: int = 0
    steps_unsent_at_close: int = 0
    pushes_discarded: int = 0
    chunks_sent: int = 0
    # gRPC messages written to the agent: each costs the training process grpcio's work.
    messages_sent: int = 0
    bytes_sent: int = 0
    bytes_shared: int = 0
    reconnects: int = 0
    refusals: int = 0

    @property
    def steps_dropped(self) -> int:
        return (
            self.steps_dropped_queue_full
            + self.steps_dropped_agent
            + self.steps_lost_transport
            + self.steps_unsent_at_close
        )

    def summary(self) -> str:
        return (
            f"{self.steps_delivered} of {self.steps_ended} steps delivered, "
            f"{self.steps_dropped} dropped (client queue full {self.steps_dropped_queue_full}, "
            f"agent queue full {self.steps_dropped_agent}, lost in transport "
            f"{self.steps_lost_transport}, unsent at close {self.steps_unsent_at_close}); "
            f"{self.bytes_sent / 1e6:.1f} MB in {self.chunks_sent} chunks "
            f"({self.bytes_shared / 1e6:.1f} MB through shared memory) in "
            f"{self.messages_sent} messages, "
            f"{self.reconnects} reconnects"
        )


_ONE_BYTE_VARINTS = [bytes((i,)) for i in range(0x80)]


def _varint(n: int) -> bytes:
    """Protobuf's base-128 varint of ``n`` ≥ 0 (a push encodes dozens: the common one-byte case
    is a table lookup)."""
    if n < 0x80:
        return _ONE_BYTE_VARINTS[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Wire tags, all length-delimited: PushRequest.chunk = 1, PushRequest.batch = 3,
# GradientChunk.data = 5. ChunkBatch.chunks is field 1 too, so a PushRequest{chunk} encoding is
# byte for byte one element of a ChunkBatch: a batch is those encodings concatenated.
# PushRequest.messages = 4 holds a MessageBatch, whose field 1 is a whole PushRequest.
_TAG_CHUNK = b"\x0a"
_TAG_BATCH = b"\x1a"
_TAG_MESSAGES = b"\x22"
_TAG_REQUEST = b"\x0a"
_TAG_DATA = b"\x2a"
# Chunks below this size are packed into batches (copied once more); larger ones travel alone.
_BATCH_ITEM_BYTES = 256 << 10


def _make_concat():
    """``concat(head, payload) -> bytes``: one copy of ``payload`` (a contiguous numpy uint8
    array) after ``head``. In CPython the bytes object is created uninitialised
    (``PyBytes_FromStringAndSize(NULL, n)``, the C API's documented way to build one) and filled
    with ``memmove`` through ctypes, which releases the GIL for the copy, so a large push on a
    background thread does not stall the training thread's Python code. Elsewhere: ``bytes.join``.
    """
    try:
        import ctypes

        new = ctypes.pythonapi.PyBytes_FromStringAndSize
        new.restype = ctypes.py_object
        new.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
        data = ctypes.pythonapi.PyBytes_AsString
        data.restype = ctypes.c_void_p
        data.argtypes = (ctypes.py_object,)
        memmove = ctypes.memmove
    except (ImportError, AttributeError):
        return lambda head, payload: b"".join((head, memoryview(payload)))

    def concat(head: bytes, payload: np.ndarray) -> bytes:
        if payload.nbytes < _NOGIL_COPY_BYTES:
            return b"".join((head, memoryview(payload)))
        out = new(None, len(head) + payload.nbytes)
        at = data(out)
        memmove(at, head, len(head))
        # __array_interface__ rather than .ctypes: the latter builds helper objects per call.
        memmove(at + len(head), payload.__array_interface__["data"][0], payload.nbytes)
        return out

    return concat


# Below this, releasing and re-taking the GIL costs more than the copy it frees.
_NOGIL_COPY_BYTES = 64 << 10
_concat = _make_concat()


@functools.lru_cache(maxsize=4096)
def _chunk_fields(name: str, dtype: int, local: bool) -> bytes:
    """GradientChunk fields that are the same at every step: tensor = 2, dtype = 4, local = 6."""
    raw = name.encode()
    return b"".join((b"\x12", _varint(len(raw)), raw, b"\x20", _varint(dtype),
                     b"\x30\x01" if local else b""))


def _encode_chunk(
    step: int, name: str, offset: int, dtype: int, local: bool, data: np.ndarray
) -> bytes:
    """A serialised PushRequest{chunk}; ``data`` is the payload as a contiguous uint8 array.
    Encoded by hand (step = 1, offset = 3, data = 5 last; protobuf takes fields in any order and
    tests/test_client.py checks the bytes against the generated message), so the caller's buffer
    is copied exactly once, into the returned bytes, and a push costs microseconds of Python."""
    return _concat(_chunk_head(step, name, offset, dtype, local, data.nbytes), data)


def _chunk_head(step: int, name: str, offset: int, dtype: int, local: bool, n: int) -> bytes:
    """The bytes of a PushRequest{chunk} before its ``n`` payload bytes."""
    inner = b"".join((b"\x08", _varint(step), _chunk_fields(name, dtype, local), b"\x18",
                      _varint(offset), _TAG_DATA, _varint(n)))
    return b"".join((_TAG_CHUNK, _varint(len(inner) + n), inner))


#: Pushes at least this large go through the shared region when there is one; below it the
#: inline path's single copy costs no more.
SHARED_MIN_BYTES = 16 << 10
# A copy into the region at least this large releases the GIL (it takes ≳ 100 µs, worth the
# hand-over); smaller ones keep it (measured: a DDP bucket of 212 kB in 8 parts took 290 µs
# per push with numpy releasing the GIL for each part ≥ 64 kB, against 210–230 µs inline).
_SHARED_NOGIL_COPY_BYTES = 1 << 20
_SHARED_ALIGN = 64
# The part of the shared ring cycled through while little is in flight (see _SharedRing.alloc):
# with 64 MiB a DDP bucket of 150 kB took ≈ 420 distinct offsets, each a fresh descriptor
# encoding (≈ 20 µs of Python on a 2-core VM) and a copy into memory out of cache.
_RING_CYCLE_BYTES = 16 << 20


class _Slot:
    """One allocation in a :class:`_SharedRing`: bytes ``[start, end)``."""

    __slots__ = ("start", "end", "free")

    def __init__(self, start: int, end: int):
        self.start, self.end, self.free = start, end, False


def _copy_into(view: np.ndarray, raw: memoryview, at: int, flat: np.ndarray) -> None:
    """Copy the bytes ``flat`` into the shared region at ``at``: through numpy (which releases
    the GIL) when large, else through the memoryview (see ``_SHARED_NOGIL_COPY_BYTES``)."""
    if flat.nbytes >= _SHARED_NOGIL_COPY_BYTES:
        np.copyto(view[at : at + flat.nbytes], flat)
    else:
        raw[at : at + flat.nbytes] = flat.data


class Staged:
    """Tensors copied into the shared region by :meth:`Client.stage_many`, not queued yet."""

    __slots__ = ("_client", "_step", "_flat", "_slot", "_plan", "_local")

    def __init__(self, client, step, flat, slot, plan, local):
        self._client, self._step, self._flat, self._slot = client, step, flat, slot
        self._plan, self._local = plan, local

    def push(self) -> bool:
        """Check and queue the staged tensors (once). False when the step was dropped — also
        when the region had no room at staging, counted then as a full queue."""
        slot, self._slot = self._slot, None
        if slot is None:
            return False
        client = self._client
        try:
            placed = self._plan.placed(client, self._flat)
        except GradtelError:
            with client._cv:
                slot.free = True
            raise
        encoded = self._plan.encode(client, self._step, slot.start, self._local)
        if encoded is None:
            at = slot.start
            placed = [(name, dtype, size, offset, at + rel, nbytes)
                      for name, dtype, size, offset, rel, nbytes in placed]
            encoded = client._encode_shared(self._step, placed, self._local)
        return client._queue_fragment(self._step, *encoded, (slot,), slot.end - slot.start)


def _chunk_request_head(n: int) -> bytes:
    """The bytes before an ``n``-byte encoded GradientChunk that make it one MessageBatch
    element, PushRequest{chunk}."""
    if n < 0x7E:  # both lengths fit one byte
        return b"".join((_TAG_REQUEST, _ONE_BYTE_VARINTS[n + 2], _TAG_CHUNK, _ONE_BYTE_VARINTS[n]))
    inner = _TAG_CHUNK + _varint(n)
    return b"".join((_TAG_REQUEST, _varint(len(inner) + n), inner))


class _SpanPlan:
    """What :meth:`Client.stage_many` and :meth:`Staged.push` derive from one ``parts`` sequence
    and dtype: the span the parts cover, and — once checked against the registered layout —
    each part's wire fields relative to the span. A DDP hook passes the same layout every step,
    so this Python runs once per bucket and layout instead of once per step (it was a third of
    the hook's cost)."""

    __slots__ = ("parts", "dtype", "lo", "hi", "rel", "tensors", "checked", "_wire_key", "_wire",
                 "_at", "flat")

    def __init__(self, parts, dtype):
        self.parts, self.dtype = parts, dtype
        self.lo = min(at for _, at, _ in parts)
        self.hi = max(at + n for _, at, n in parts)
        self.rel = [(name, at - self.lo, n) for name, at, n in parts]
        # The layout (the client's tensor table) the parts were checked against, and the
        # result: (name, wire dtype, element size, offset 0, bytes from the span's start, bytes).
        self.tensors, self.checked = None, None
        # Prepared wire bytes (see encode), for the (local, chunk_bytes) they were made with,
        # and per (region offset, step varint length) the pieces between the steps.
        self._wire_key, self._wire, self._at = None, None, {}
        # A weak reference to the array last checked against the span (see stage_many).
        self.flat = None

    def placed(self, client: "Client", flat: np.ndarray) -> list:
        tensors = client._tensors
        if self.tensors is not tensors:
            size, lo = flat.dtype.itemsize, self.lo
            checked = []
            for name, at, n in self.rel:
                _, kind = client._check(name, flat[lo + at : lo + at + n], 0, None)
                checked.append((name, DTYPES[kind][0], size, 0, at * size, n * size))
            self.tensors, self.checked, self._wire_key = tensors, checked, None
        return self.checked

    def encode(self, client: "Client", step: int, at: int, local: bool):
        """What :meth:`Client._encode_shared` gives for the checked parts placed at region
        offset ``at``, from bytes prepared once per plan and region offset; None when a part
        needs more than one chunk (then the general encoder splits it)."""
        key = (local, client.chunk_bytes)
        if self._wire_key != key:
            self._wire_key, self._wire, self._at = key, None, {}
            if all(nbytes <= client.chunk_bytes - client.chunk_bytes % size
                   for _, _, size, _, _, nbytes in self.checked):
                # Per part: the fields before `shared` (tensor, dtype, local, offset), where the
                # part starts in the span, and `shared`'s byte count field.
                self._wire = [(_chunk_fields(name, dtype, local) + b"\x18" + _varint(offset),
                               rel, b"\x10" + _varint(nbytes))
                              for name, dtype, _, offset, rel, nbytes in self.checked]
        if self._wire is None:
            return None
        # Each chunk ends with its step (see _encode_shared), so the bytes between two steps
        # depend only on the region offset and the step's varint length: the ring hands out a
        # few offsets over and over, and a push is one join.
        sv = _varint(step)
        between = self._at.get((at, len(sv)))
        if between is None:
            if len(self._at) >= 1024:
                self._at.clear()
            between = self._at[(at, len(sv))] = self._between(at, len(sv))
        return sv.join(between), len(self._wire)

    def _between(self, at: int, step_len: int) -> list:
        """The pieces that ``step varint``.join() turns into the parts' chunk requests."""
        one, pieces = _ONE_BYTE_VARINTS, []
        for fields, rel, count in self._wire:
            shared = b"".join((b"\x08", _varint(at + rel), count))
            before_step = b"".join((fields, b"\x3a", one[len(shared)], shared, b"\x08"))
            head = _chunk_request_head(len(before_step) + step_len)
            pieces.append(head + before_step)
        pieces.append(b"")
        return pieces


class _SharedRing:
    """A sealed memfd shared with the agent, allocated as a ring: slots are taken at the head and
    come back, once freed, from the tail, in allocation order; the head returns to the front
    early when the front has ample room. The agent opens it as
    ``/proc/<pid>/fd/<fd>``; the seals (shrink and grow) keep its size fixed, which the agent
    checks so that reading its mapping can never fault. Callers hold the client's lock."""

    def __init__(self, size: int):
        import fcntl

        self.size = int(size)
        self.fd = os.memfd_create("gradtel-payloads", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, self.size)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
            self._map = mmap.mmap(self.fd, self.size)
        except OSError:
            os.close(self.fd)
            raise
        self.view = np.frombuffer(self._map, dtype=np.uint8)
        # Fault in the part a steady stream cycles through (see alloc) now, at register, rather
        # than a page at a time during the first steps.
        self.view[: max(1, self.size // 8) : mmap.PAGESIZE] = 0
        # Copies below _SHARED_NOGIL_COPY_BYTES go through this instead of numpy, which would
        # release and re-take the GIL for each one: a hand-over to the sender's and grpcio's
        # threads every time, which under load costs far more than such a copy.
        self.bytes = memoryview(self._map)
        self.path = f"/proc/{os.getpid()}/fd/{self.fd}"
        self._slots: collections.deque[_Slot] = collections.deque()
        self._head = 0

    @classmethod
    def create(cls, size: int) -> Optional["_SharedRing"]:
        if size <= 0 or not hasattr(os, "memfd_create"):
            return None
        try:
            return cls(size)
        except (OSError, ImportError, AttributeError) as e:
            log.info("gradtel: no shared memory region (%s); payloads go inline", e)
            return None

    def alloc(self, n: int) -> Optional[_Slot]:
        """A slot of ``n`` bytes (n > 0), or None when the ring has no room for it now."""
        self._reclaim()
        if not self._slots:
            self._head = 0
            start = 0 if n <= self.size else None
        else:
            tail = self._slots[0].start
            if self._head > tail:  # live bytes [tail, head): room before tail, then after head
                # Back to the front early once it holds twice the bytes in flight and
                # _RING_CYCLE_BYTES (or an eighth of a smaller region): the ring then cycles
                # through a small part of the region, whose pages stay resident and cached,
                # instead of touching every page of it (a page fault each on the first lap: it
                # doubled the cost of a small push), and hands out few distinct offsets, whose
                # chunk descriptors a bucket's plan keeps (_SpanPlan.encode). Room before the
                # tail is reused only when the end has none otherwise.
                floor = min(self.size // 8, _RING_CYCLE_BYTES)
                early = n <= tail and tail >= max(2 * (self._head - tail), floor)
                start = (0 if early
                         else self._head if self._head + n <= self.size
                         else 0 if n <= tail else None)
            else:  # wrapped: live bytes [tail, size) and [0, head)
                start = self._head if self._head + n <= tail else None
        if start is None:
            return None
        slot = _Slot(start, start + n)
        # The next slot starts aligned (or at the end, from where the next one wraps).
        self._head = min(self.size, -(-(start + n) // _SHARED_ALIGN) * _SHARED_ALIGN)
        self._slots.append(slot)
        return slot

    def _reclaim(self) -> None:
        while self._slots and self._slots[0].free:
            self._slots.popleft()

    def live_bytes(self) -> int:
        self._reclaim()
        return sum(s.end - s.start for s in self._slots if not s.free)

    def close(self) -> None:
        self.view = None
        self.bytes.release()
        try:
            self._map.close()
        except BufferError:
            # A caller still holds a view of it; the mapping goes when that does.
            pass
        os.close(self.fd)


def _encode_end(step: int, loss, lr, batch_size) -> bytes:
    """A serialised PushRequest{end_step}, encoded by hand (step = 1; loss = 2 and learning_rate
    = 3 as 64-bit doubles; batch_size = 4) in field order, byte for byte what protobuf writes
    (tests/test_client.py checks it): building the messages cost more Python per step."""
    # proto3 leaves a zero step out.
    inner = [b"\x08", _varint(step)] if step else []
    if loss is not None:
        inner += (b"\x11", _DOUBLE.pack(float(loss)))
    if lr is not None:
        inner += (b"\x19", _DOUBLE.pack(float(lr)))
    if batch_size is not None:
        inner += (b"\x20", _varint(int(batch_size)))
    body = b"".join(inner)
    return b"".join((b"\x12", _varint(len(body)), body))


_DOUBLE = struct.Struct("<d")


class _Item:
    __slots__ = ("step", "end", "wire", "nbytes", "chunks", "fragment", "slots", "payload", "big")

    def __init__(
        self, step: int, end: bool, wire: bytes, nbytes: int = 0, chunks: int = 1,
        fragment: bool = False, slots: tuple = (), payload: Optional[int] = None,
    ):
        self.step = step
        self.end = end
        # A serialised PushRequest, or with `fragment` (push_many) part of the body of a
        # MessageBatch: its elements (field 1), one per chunk.
        self.wire = wire
        self.fragment = fragment
        # Bytes reserved against queue_bytes (0 for an end marker): the wire bytes.
        self.nbytes = nbytes
        self.chunks = 0 if end else chunks
        # The shared region's slots holding this item's payload, if it went there.
        self.slots = slots
        self.payload = nbytes if payload is None else payload
        # Large payloads are sent at once rather than with the step's end, so the agent
        # summarises them while the step goes on.
        self.big = self.payload >= _BATCH_ITEM_BYTES


_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.FAILED_PRECONDITION,
}


class Client:
    """Streams one rank's gradients to its local agent.

    ``socket`` is the agent's Unix socket path (``gradtel-agent --socket``; default
    ``$GRADTEL_AGENT_SOCKET`` or ``gradtel-agent.sock``); ``target`` may name any gRPC target
    instead (e.g. ``127.0.0.1:4318`` for the agent's ``--tcp``). ``queue_bytes`` bounds the memory
    the client holds for unsent gradients. Ended steps wait up to ``send_interval_s`` so that
    several short steps travel as one message with one answer (each gRPC message costs the
    training process CPU time in grpcio's threads); a full ``chunk_bytes`` goes at once.
    ``shared_memory_bytes`` sizes the region shared with the agent for payloads (default:
    ``queue_bytes``; 0 sends everything inline); it bounds the payloads in flight through it.
    """

    def __init__(
        self,
        run_id: str,
        *,
        rank: int = 0,
        world_size: int = 1,
        shard: int = 0,
        shard_count: int = 1,
        socket: Optional[str] = None,
        target: Optional[str] = None,
        queue_bytes: int = 512 << 20,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_backoff_s: float = 2.0,
        send_interval_s: float = 0.05,
        shared_memory_bytes: Optional[int] = None,
    ):
        if not _RUN_ID.fullmatch(run_id) or run_id in (".", ".."):
            raise GradtelError(
                f"run id {run_id!r} must be 1..=128 characters from [A-Za-z0-9._-], "
                "not '.' or '..'"
            )
        if not 0 <= rank < world_size:
            raise GradtelError(f"rank {rank} is not in 0..world_size ({world_size})")
        if not 0 <= shard < shard_count:
            raise GradtelError(f"shard {shard} is not in 0..shard_count ({shard_count})")
        if chunk_bytes <= 0 or chunk_bytes > _MAX_MESSAGE_BYTES - 4096:
            raise GradtelError(f"chunk_bytes must be in 1..{_MAX_MESSAGE_BYTES - 4096}")
        self.run_id = run_id
        self.rank, self.world_size = rank, world_size
        self.shard, self.shard_count = shard, shard_count
        if target is None:
            path = socket or os.environ.get("GRADTEL_AGENT_SOCKET", "gradtel-agent.sock")
            target = "unix:" + os.path.abspath(path)
        self.target = target
        self.queue_bytes = int(queue_bytes)
        self.chunk_bytes = int(chunk_bytes)
        self.max_backoff_s = max_backoff_s
        self.send_interval_s = float(send_interval_s)
        self.stats = Stats()
        # Created at the first register(); used while the agent has mapped it.
        self._shared_bytes = self.queue_bytes if shared_memory_bytes is None else int(
            shared_memory_bytes)
        self._ring: Optional[_SharedRing] = None
        self._ring_mapped: Optional[bool] = None  # unknown until the agent answers
        # Slots of chunks sent on the current stream, by step, freed by the step's ack.
        self._sent_slots: dict[int, list[_Slot]] = {}
        self._close_callbacks: list = []

        self._channel = grpc.insecure_channel(
            target,
            options=[
                # gRPC's default :authority for a unix: target is the socket path, which the
                # agent's HTTP/2 server (hyper) refuses as malformed.
                ("grpc.default_authority", "localhost"),
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                # A restarted agent should be found within a fraction of a second, not after
                # gRPC's default backoff of up to two minutes.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", int(max_backoff_s * 1000)),
            ],
        )
        # Through the channel itself rather than grpcio-tools' stub, whose code refuses any
        # grpcio older than the grpcio-tools that wrote it (see gradtel.v1._messages).
        self._register_rpc = self._channel.unary_unary(
            "/gradtel.v1.Ingest/Register",
            request_serializer=ingest_pb2.RegisterRequest.SerializeToString,
            response_deserializer=ingest_pb2.RegisterResponse.FromString,
        )
        # Messages are serialised by hand (see _encode_chunk), so the stream takes bytes as is.
        self._push_steps = self._channel.stream_stream(
            "/gradtel.v1.Ingest/PushSteps",
            request_serializer=lambda wire: wire,
            response_deserializer=ingest_pb2.StepAck.FromString,
        )
        self._layout: Optional[ingest_pb2.RegisterRequest] = None
        self._tensors: dict[str, Tensor] = {}
        # stage_many's span plans, by id of their parts sequence (see _SpanPlan).
        self._plans: dict[int, _SpanPlan] = {}
        self._registered = False
        self._cv = threading.Condition()
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_bytes = 0
        # Queued step ends and large chunks. Small chunks wait for their step's end, so a step
        # of small tensors goes out as one message and the sender thread wakes once per message
        # instead of once per push.
        self._ends = 0
        self._big = 0
        self._flushing = 0
        self._last_send = 0.0
        # The request generator is in a wait that ends by itself at the next send time, so a
        # step's end needs not wake it: every wake-up is a GIL hand-over in the training
        # process.
        self._sender_timed = False
        self._agent_minor = _MIN_AGENT_MINOR
        # Steps dropped whole, until their end_step: step → the Stats counter it is charged to.
        self._dropped: dict[int, str] = {}
        # Whether each open step's pushes are local: the agent refuses a step that mixes them,
        # and its refusal ends the stream with every step in flight.
        self._step_local: dict[int, bool] = {}
        self._warned_too_big = False
        self._closing = False
        # Steps whose end went out on the current stream and await the agent's ack, in order.
        self._unacked: collections.deque[int] = collections.deque()
        self._partial: Optional[int] = None  # step whose chunks are going out, end not yet sent
        # Bumped when a stream ends: a request generator of an earlier stream, which gRPC may
        # leave blocked in the queue wait, must not take messages meant for the next one.
        self._stream_id = 0
        self._sender = threading.Thread(target=self._run, name="gradtel-sender", daemon=True)
        self._sender.start()

    # ---------------------------------------------------------------- caller side

    def register(self, tensors: Iterable[Tensor], wait_s: float = 2.0) -> bool:
        """Declare the tensors this rank will push (in model order). Raises :class:`GradtelError`
        when the layout is invalid or the agent refuses it. Returns False when the agent did not
        answer within ``wait_s``: the client keeps trying in the background, and steps pushed
        meanwhile queue up (and are dropped, counted, once the queue is full)."""
        tensors = list(tensors)
        names = set()
        for t in tensors:
            if t.dtype not in DTYPES:
                raise GradtelError(f"tensor {t.name!r}: unknown dtype {t.dtype!r}")
            if t.name in names:
                raise GradtelError(f"tensor {t.name!r} is declared twice")
            names.add(t.name)
        req = ingest_pb2.RegisterRequest(
            protocol_minor=PROTOCOL_MINOR,
            run_id=self.run_id,
            rank=self.rank,
            world_size=self.world_size,
            shard=self.shard,
            shard_count=self.shard_count,
        )
        for t in tensors:
            tl = req.tensors.add(
                name=t.name, shape=[int(d) for d in t.shape], dtype=DTYPES[t.dtype][0]
            )
            if t.owned is not None:
                tl.owned_start, tl.owned_end = int(t.owned[0]), int(t.owned[1])
            if t.track_count is not None:
                tl.track_count = int(t.track_count)
        with self._cv:
            if self._ring is None and self._shared_bytes > 0:
                self._ring = _SharedRing.create(self._shared_bytes)
            if self._ring is not None:
                req.shared_memory.path = self._ring.path
                req.shared_memory.bytes = self._ring.size
            self._layout = req
            self._tensors = {t.name: t for t in tensors}
            self._registered = False
        try:
            resp = self._register_rpc(req, timeout=wait_s, wait_for_ready=True)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
                raise GradtelError(f"the agent refused the layout: {e.details()}") from None
            log.warning(
                "gradtel: agent at %s not reachable (%s); will keep trying", self.target, e.code()
            )
            return False
        if resp.protocol_minor < _MIN_AGENT_MINOR:
            raise GradtelError(
                f"the agent speaks gradtel.v1 minor {resp.protocol_minor}; this client needs "
                f"{_MIN_AGENT_MINOR} or later: upgrade gradtel-agent"
            )
        with self._cv:
            self._registered = self._layout is req
            self._agent_minor = resp.protocol_minor
            self._note_shared_locked(req, resp)
            self._cv.notify_all()
        return True

    def _note_shared_locked(self, req, resp) -> None:
        """Use the shared region from now on if the agent mapped it."""
        mapped = req.HasField("shared_memory") and resp.shared_memory
        if req.HasField("shared_memory") and not mapped and self._ring_mapped is not False:
            log.info("gradtel: the agent did not map the shared region (%s); payloads go inline",
                     resp.shared_memory_error or f"agent minor {resp.protocol_minor}")
        self._ring_mapped = bool(mapped)

    def push(
        self,
        step: int,
        name: str,
        array,
        *,
        local: bool = False,
        offset: int = 0,
        dtype: Optional[str] = None,
    ) -> bool:
        """Queue ``array`` (any shape; flattened in C order) as the gradient values of tensor
        ``name`` at ``step``, starting at flattened coordinate ``offset``. ``local=True`` marks the
        rank's own gradient before the data-parallel all-reduce (the input of live SGN). Returns
        after one copy; False when the step has been dropped (see :class:`Stats`)."""
        arr, kind = self._check(name, array, offset, dtype)
        self._check_local(step, local)
        nbytes = arr.size * arr.dtype.itemsize
        if nbytes >= SHARED_MIN_BYTES and self._ring_mapped:
            shared = self._push_shared(step, [(name, arr, DTYPES[kind][0], offset)], local)
            if shared is not None:
                return shared
        with self._cv:
            if not self._admit_locked(step, nbytes):
                return False
        items = self._encode(step, name, offset, DTYPES[kind][0], local, arr)
        return self._enqueue(step, items, nbytes)

    def _push_shared(self, step: int, parts: list, local: bool) -> Optional[bool]:
        """Copy ``parts`` — ``(name, array, wire dtype, offset)`` — into one slot of the shared
        region and queue their chunks (each at most ``chunk_bytes``) as fragments of one message.
        None when the region is not in use after all (the caller sends inline)."""
        flats = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for _, a, _, _ in parts]
        total = sum(f.nbytes for f in flats)
        with self._cv:
            if not self.shared_memory_active:
                return None
            slot = self._alloc_locked(step, total)
            if slot is None:
                return False
            view, raw = self._ring.view, self._ring.bytes
        # The one copy of the payload, outside the lock; numpy releases the GIL for a large one.
        at = slot.start
        placed = []
        for (name, arr, dtype, offset), flat in zip(parts, flats):
            _copy_into(view, raw, at, flat)
            placed.append((name, dtype, arr.dtype.itemsize, offset, at, flat.nbytes))
            at += flat.nbytes
        return self._enqueue_shared(step, placed, local, (slot,), total)

    def _enqueue_shared(
        self, step: int, placed: list, local: bool, slots: tuple, total: int
    ) -> bool:
        """Queue chunks (each at most ``chunk_bytes``) of payloads already in the shared region,
        ``placed`` as ``(name, wire dtype, element size, offset, region offset, bytes)``, as
        fragments of one message holding ``slots`` — or free the slots when the step is
        dropped. Encoded by hand as in :func:`_encode_chunk` (a DDP bucket's push runs in the
        training thread): each element is MessageBatch.requests{PushRequest.chunk{GradientChunk
        with `shared`}}."""
        wire, chunks = self._encode_shared(step, placed, local)
        return self._queue_fragment(step, wire, chunks, slots, total)

    def _encode_shared(self, step: int, placed: list, local: bool) -> tuple[bytes, int]:
        """The MessageBatch fragment of :meth:`_enqueue_shared`, and its number of chunks."""
        pieces, chunks = [], 0
        # The step goes last in each chunk (protobuf takes fields in any order): the bytes
        # before it then depend on the region offset only, which _SpanPlan.encode reuses.
        tail = b"\x08" + _varint(step)
        one = _ONE_BYTE_VARINTS
        for name, dtype, size, offset, at, nbytes in placed:
            fields = _chunk_fields(name, dtype, local)
            per = max(size, self.chunk_bytes - self.chunk_bytes % size)
            done = 0
            while True:
                n = min(per, nbytes - done)
                shared = b"".join((b"\x08", _varint(at + done), b"\x10", _varint(n)))
                wire = b"".join((fields, b"\x18", _varint(offset + done // size), b"\x3a",
                                 one[len(shared)], shared, tail))
                pieces += (_chunk_request_head(len(wire)), wire)
                chunks += 1
                done += n
                if done >= nbytes:
                    break
        return b"".join(pieces), chunks

    def _queue_fragment(
        self, step: int, wire: bytes, chunks: int, slots: tuple, total: int
    ) -> bool:
        """Queue an encoded fragment whose payload lies in ``slots`` (freed if the step is
        dropped): one acquisition of the lock admits and queues."""
        item = _Item(step, False, wire, len(wire), chunks=chunks, fragment=True, slots=slots,
                     payload=total)
        with self._cv:
            if not self._admit_locked(step, len(wire)):
                for slot in slots:
                    slot.free = True
                return False
            self._append_locked([item])
        return True

    # ------------------------------------------- payloads the caller writes (GPU DMA target)

    @property
    def shared_memory_active(self) -> bool:
        """Whether payloads go through the shared region (the agent mapped it)."""
        return bool(self._ring_mapped) and self._ring is not None

    def shared_region(self) -> Optional[tuple[int, int]]:
        """``(address, bytes)`` of the shared region in this process, while it exists: a GPU
        client registers it with CUDA (``cudaHostRegister``) so that device-to-host copies land
        in it directly. Call :meth:`on_close` to undo that before the region is unmapped."""
        ring = self._ring
        if ring is None or ring.view is None:
            return None
        return ring.view.__array_interface__["data"][0], ring.size

    def on_close(self, fn) -> None:
        """Call ``fn()`` in :meth:`close` before the shared region is unmapped."""
        with self._cv:
            self._close_callbacks.append(fn)

    def reserve(self, step: int, nbytes: int) -> Optional[tuple[_Slot, np.ndarray]]:
        """Room for ``nbytes`` of ``step``'s payload in the shared region, for the caller to fill
        (e.g. by an asynchronous device-to-host copy) and then hand to :meth:`push_reserved`:
        ``(slot, uint8 view)``. None when the step is dropped, or is dropped now because the
        region is full — counted as a full queue, like :meth:`push`. Requires
        :attr:`shared_memory_active`."""
        with self._cv:
            if not self.shared_memory_active:
                raise GradtelError("no shared memory region in use")
            slot = self._alloc_locked(step, max(1, int(nbytes)))
            if slot is None:
                return None
            return slot, self._ring.view[slot.start : slot.end]

    def _alloc_locked(self, step: int, nbytes: int) -> Optional[_Slot]:
        """A slot of the shared region for ``step``; None (the push counted as discarded) when
        the step is dropped, or is dropped now because the region is full."""
        if self._closing:
            raise GradtelError("push after close()")
        if step in self._dropped:
            self.stats.pushes_discarded += 1
            return None
        slot = self._ring.alloc(nbytes)
        if slot is None:
            self._drop_step_locked(step, nbytes)
        return slot

    def push_reserved(self, step: int, parts: Iterable[tuple], *, local: bool = False) -> bool:
        """Queue payloads the caller wrote into reserved slots: ``parts`` holds ``(name, slot,
        offset, dtype)`` per tensor (``offset`` the first flattened coordinate, ``dtype`` the
        wire dtype name; the slot's size gives the count). Every slot is released by this call:
        queued, or freed when the step is dropped."""
        parts = list(parts)
        slots = tuple(slot for _, slot, _, _ in parts)
        try:
            placed = []
            for name, slot, offset, dtype in parts:
                t = self._tensors.get(name)
                if t is None:
                    raise GradtelError(f"tensor {name!r} is not in the registered layout")
                if dtype != t.dtype:
                    raise GradtelError(f"tensor {name!r} is registered as {t.dtype}, got {dtype}")
                wire_dtype, size = DTYPES[dtype]
                nbytes = slot.end - slot.start
                start, end = t.owned_range()
                if nbytes % size or offset < start or offset + nbytes // size > end:
                    raise GradtelError(
                        f"tensor {name!r}: {nbytes} bytes at coordinate {offset} do not fit the "
                        f"owned range [{start}, {end}) of {dtype} values")
                placed.append((name, wire_dtype, size, offset, slot.start, nbytes))
            self._check_local(step, local)
        except GradtelError:
            with self._cv:
                for slot in slots:
                    slot.free = True
            raise
        return self._enqueue_shared(step, placed, local, slots, sum(p[-1] for p in placed))

    def stage_many(
        self, step: int, array, parts: list[tuple[str, int, int]], *, local: bool = False
    ) -> Optional["Staged"]:
        """The first half of :meth:`push_many` for tensors laid out in one flat array (a DDP
        bucket's buffer): copy the span that ``parts`` — ``(name, first element in array,
        count)``, each a whole tensor from coordinate 0 — cover into the shared region now, and
        return a :class:`Staged` whose ``push()`` checks and queues them later. A DDP hook
        calls ``push()`` after launching the all-reduce that overwrites ``array``, so that
        only the copy lies on the step's critical path and the rest overlaps the all-reduce.
        None when the span would go inline (no shared region, or under ``SHARED_MIN_BYTES``):
        use :meth:`push_many` then.

        The span and the checks of ``parts`` are worked out once per ``parts`` object (and
        dtype, and registered layout) and reused while the same object comes back, as a DDP
        hook's bucket layout does every step: pass a tuple, or a list never changed after."""
        self._check_local(step, local)
        plan = self._plans.get(id(parts))
        if plan is not None and plan.flat is not None and plan.flat() is array:
            # The array checked last time (a DDP hook keeps its bucket's view).
            flat = array
        else:
            flat = np.asarray(array).reshape(-1)
            if (plan is None or plan.parts is not parts or plan.dtype != flat.dtype
                    or len(plan.rel) != len(parts)):
                if len(self._plans) >= 64:
                    self._plans.clear()
                plan = self._plans[id(parts)] = _SpanPlan(parts, flat.dtype)
            if plan.lo < 0 or plan.hi > flat.size:
                raise GradtelError(
                    f"parts cover elements [{plan.lo}, {plan.hi}) of an array of {flat.size}")
            # Remembered only for a 1-D ndarray, whose size and dtype cannot change under it;
            # weakly, so that a plan outliving its array (DDP's bucket rebuild) does not keep
            # the memory.
            plan.flat = (weakref.ref(array) if type(array) is np.ndarray and array.ndim == 1
                         else None)
        # (A DDP bucket's parts usually cover all of it: one numpy call fewer.)
        span = (flat if plan.lo == 0 and plan.hi == flat.size
                else flat[plan.lo : plan.hi]).view(np.uint8)
        if not self._ring_mapped or span.nbytes < SHARED_MIN_BYTES:
            return None
        with self._cv:
            if not self.shared_memory_active:
                return None
            slot = self._alloc_locked(step, span.nbytes)
            view, raw = self._ring.view, self._ring.bytes
        if slot is not None:
            _copy_into(view, raw, slot.start, span)
        return Staged(self, step, flat, slot, plan, local)

    def push_many(
        self,
        step: int,
        parts: Iterable[tuple[str, object, int]],
        *,
        local: bool = False,
    ) -> bool:
        """Queue several tensors' values of ``step`` at once: ``parts`` holds ``(name, array,
        offset)`` as for :meth:`push`. The small ones are copied straight into one message (one
        allocation, one copy each), which costs much less Python time per tensor than a push
        each; a model of many small tensors (a DDP bucket) should use it. Returns False when the
        step has been dropped."""
        checked = [(name, *self._check(name, a, offset, None), offset) for name, a, offset in parts]
        self._check_local(step, local)
        if self._ring_mapped and sum(arr.nbytes for _, arr, _, _ in checked) >= SHARED_MIN_BYTES:
            shared = self._push_shared(
                step, [(name, arr, DTYPES[kind][0], offset) for name, arr, kind, offset in checked],
                local)
            if shared is not None:
                return shared
        small, ok = [], True
        for name, arr, kind, offset in checked:
            if self._agent_minor < _GROUP_MINOR or arr.nbytes >= _BATCH_ITEM_BYTES:
                ok &= self.push(step, name, arr, local=local, offset=offset, dtype=kind)
            else:
                small.append((name, arr, DTYPES[kind][0], offset))
        while small and ok:
            # One MessageBatch body of at most chunk_bytes per item.
            take, size = 0, 0
            while take < len(small) and (take == 0 or size + small[take][1].nbytes
                                         <= self.chunk_bytes):
                size += small[take][1].nbytes
                take += 1
            group, small = small[:take], small[take:]
            with self._cv:
                if not self._admit_locked(step, size):
                    return False
            pieces = []
            for name, arr, dtype, offset in group:
                raw = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
                head = _chunk_head(step, name, offset, dtype, local, raw.nbytes)
                pieces += (_TAG_REQUEST, _varint(len(head) + raw.nbytes), head, memoryview(raw))
            item = _Item(step, False, b"".join(pieces), size, chunks=len(group), fragment=True)
            ok = self._enqueue(step, [item], size)
        return ok

    def _check(self, name: str, array, offset: int, dtype: Optional[str]):
        arr = np.asarray(array)
        t = self._tensors.get(name)
        if t is None:
            raise GradtelError(f"tensor {name!r} is not in the registered layout")
        kind = dtype_of(arr, dtype)
        if kind != t.dtype:
            raise GradtelError(f"tensor {name!r} is registered as {t.dtype}, got {kind}")
        start, end = t.owned_range()
        if offset < start or offset + arr.size > end:
            raise GradtelError(
                f"tensor {name!r}: values [{offset}, {offset + arr.size}) are outside the "
                f"owned range [{start}, {end})"
            )
        return arr, kind

    def _check_local(self, step: int, local: bool) -> None:
        if len(self._step_local) > 4096:  # steps pushed and never ended
            self._step_local.clear()
        # setdefault is one atomic dict operation: pushes from two threads cannot both win.
        if self._step_local.setdefault(step, local) != local:
            raise GradtelError(
                f"step {step} mixes local (pre-all-reduce) and reduced gradients: every push of "
                "a step must pass the same local="
            )

    def _admit_locked(self, step: int, nbytes: int) -> bool:
        """Reserve ``nbytes`` of the queue for ``step`` before copying; False (and the push
        counted as discarded) when the step is dropped or the queue is full."""
        if self._closing:
            raise GradtelError("push after close()")
        if step in self._dropped:
            self.stats.pushes_discarded += 1
            return False
        if self._queued_bytes + nbytes > self.queue_bytes:
            self._drop_step_locked(step, nbytes)
            return False
        # Reserved before the copy so concurrent pushes cannot overshoot the bound.
        self._queued_bytes += nbytes
        return True

    def _enqueue(self, step: int, items: list, nbytes: int) -> bool:
        with self._cv:
            if step in self._dropped:
                # Dropped while we were copying: the withdrawal could not see these items.
                self._queued_bytes -= nbytes
                self.stats.pushes_discarded += 1
                return False
            self._append_locked(items)
        return True

    def _append_locked(self, items: list) -> None:
        """Queue admitted items, and wake the sender when they should go now."""
        self._queue.extend(items)
        big = sum(1 for i in items if i.big)
        self._big += big
        if big or self._queued_bytes >= self.chunk_bytes:
            self._cv.notify_all()

    def end_step(
        self,
        step: int,
        *,
        loss: Optional[float] = None,
        lr: Optional[float] = None,
        batch_size: Optional[int] = None,
    ) -> bool:
        """Close ``step``: the agent summarises it and ships one report. Returns False when the step
        was dropped."""
        wire = _encode_end(step, loss, lr, batch_size)
        self._step_local.pop(step, None)
        with self._cv:
            if self._closing:
                raise GradtelError("end_step after close()")
            self.stats.steps_ended += 1
            reason = self._dropped.pop(step, None)
            if reason is not None:
                setattr(self.stats, reason, getattr(self.stats, reason) + 1)
                return False
            # The end marker is tiny and always admitted, so a step whose data fitted completes.
            self._queue.append(_Item(step, True, wire))
            self._ends += 1
            # A sender already waiting out send_interval_s needs no wake-up (each one costs a
            # GIL hand-over in the training process).
            if not self._sender_timed or self._agent_minor < _GROUP_MINOR:
                self._cv.notify_all()
        return True

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued has been handed to the agent. False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            self._flushing += 1
            self._cv.notify_all()
            try:
                while self._queue or self._unacked:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cv.wait(left)
            finally:
                self._flushing -= 1
        return True

    def close(self, timeout: float = 10.0) -> Stats:
        """Send what is queued (for at most ``timeout`` seconds), stop the sender and return the
        final :class:`Stats`; steps still queued then are counted as unsent."""
        self.flush(timeout)
        with self._cv:
            self._closing = True
            ends = sum(1 for i in self._queue if i.end)
            self.stats.steps_unsent_at_close += ends
            self._queue.clear()
            self._queued_bytes = 0
            self._ends = self._big = 0
            self._cv.notify_all()
        self._sender.join(timeout=max(1.0, timeout))
        self._channel.close()
        with self._cv:
            ring, self._ring, self._ring_mapped = self._ring, None, False
            callbacks, self._close_callbacks = self._close_callbacks, []
        for fn in callbacks:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 — a failing callback must not stop close
                log.warning("gradtel: close callback failed: %s", e)
        if ring is not None:
            ring.close()
        if self.stats.steps_dropped:
            log.warning("gradtel: %s", self.stats.summary())
        return self.stats

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _encode(self, step, name, offset, dtype, local, arr) -> list[_Item]:
        flat = np.ascontiguousarray(arr).reshape(-1)
        # Raw bytes of the buffer without a copy; the copy happens once, in _encode_chunk.
        raw = flat.view(np.uint8)
        size = arr.dtype.itemsize
        per = max(size, self.chunk_bytes - self.chunk_bytes % size)
        items = []
        at = 0
        while True:
            piece = raw[at : at + per]
            wire = _encode_chunk(step, name, offset + at // size, dtype, local, piece)
            items.append(_Item(step, False, wire, piece.nbytes))
            at += per
            if at >= raw.nbytes:
                break
        return items

    def _drop_step_locked(self, step: int, nbytes: int) -> None:
        if not self._warned_too_big and nbytes > self.queue_bytes:
            log.warning(
                "gradtel: one push of %d bytes exceeds queue_bytes=%d; raise queue_bytes or "
                "watch fewer parameters",
                nbytes,
                self.queue_bytes,
            )
            self._warned_too_big = True
        self.stats.pushes_discarded += 1
        self._withdraw_locked(step, "steps_dropped_queue_full")
        log.debug("gradtel: queue full, step %d dropped", step)

    # ---------------------------------------------------------------- sender side

    def _run(self) -> None:
        backoff = 0.05
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if self._closing and not self._queue:
                    return
            if not self._ensure_registered():
                self._sleep(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)
                continue
            backoff = 0.05
            self._stream()

    def _sleep(self, seconds: float) -> None:
        with self._cv:
            if not self._closing:
                self._cv.wait(seconds)

    def _ensure_registered(self) -> bool:
        with self._cv:
            if self._registered:
                return True
            req = self._layout
        if req is None:
            return False
        try:
            resp = self._register_rpc(req, timeout=1.0, wait_for_ready=True)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
                log.error("gradtel: the agent refused the layout: %s", e.details())
                self.stats.refusals += 1
            return False
        with self._cv:
            self._registered = self._layout is req
            self._agent_minor = resp.protocol_minor
            self._note_shared_locked(req, resp)
        return True

    def _wait_locked(self) -> Optional[float]:
        """0 when the queue should go out now, else how long to wait (None: until notified)."""
        if not self._queue:
            # Sent within the interval: wait until it is over, as a training loop ends its next
            # step before then and so needs not wake the sender (see end_step).
            if self._agent_minor >= _GROUP_MINOR and not self._closing:
                left = self._last_send + self.send_interval_s - time.monotonic()
                if left > 0:
                    return left
            return None
        if (self._flushing or self._closing or self._big
                or self._queued_bytes >= self.chunk_bytes):
            return 0.0
        if not self._ends:
            return None
        if self._agent_minor < _GROUP_MINOR:
            return 0.0
        return max(0.0, self._last_send + self.send_interval_s - time.monotonic())

    def _messages(self, stream_id: int) -> Iterator[bytes]:
        """The request side of the stream: queued messages until close. With a minor-3 agent
        everything queued (up to ``chunk_bytes``) goes as one MessageBatch; with minor 2 small
        chunks of one step are packed into ChunkBatches."""
        while True:
            with self._cv:
                while not self._closing and stream_id == self._stream_id:
                    wait = self._wait_locked()
                    if wait == 0.0:
                        break
                    self._sender_timed = wait is not None
                    self._cv.wait(wait)
                    self._sender_timed = False
                if stream_id != self._stream_id:
                    # Superseded while it waited: a step ended meanwhile did not wake the
                    # sender thread (see end_step), which now runs the next stream.
                    if self._queue:
                        self._cv.notify_all()
                    return
                if not self._queue:
                    return
                grouped = self._agent_minor >= _GROUP_MINOR
                first = self._queue.popleft()
                out = [first]
                if first.nbytes < _BATCH_ITEM_BYTES:
                    size = first.nbytes
                    while self._queue:
                        nxt = self._queue[0]
                        if nxt.nbytes >= _BATCH_ITEM_BYTES or size + nxt.nbytes > self.chunk_bytes:
                            break
                        if not grouped and (first.end or nxt.end or nxt.step != first.step):
                            break
                        out.append(self._queue.popleft())
                        size += nxt.nbytes
                for item in out:
                    self._queued_bytes -= item.nbytes
                    self._big -= item.big
                    self.stats.bytes_sent += item.payload
                    if item.slots:
                        self.stats.bytes_shared += item.payload
                        self._sent_slots.setdefault(item.step, []).extend(item.slots)
                    if item.end:
                        self._ends -= 1
                        self._unacked.append(item.step)
                        if self._partial == item.step:
                            self._partial = None
                    else:
                        self.stats.chunks_sent += item.chunks
                        self._partial = item.step
                self._last_send = time.monotonic()
                self.stats.messages_sent += 1
                if self._flushing or self._closing:
                    self._cv.notify_all()
            if len(out) == 1 and not first.fragment:
                yield first.wire
            elif grouped:
                body = b"".join(
                    item.wire if item.fragment
                    else b"".join((_TAG_REQUEST, _varint(len(item.wire)), item.wire))
                    for item in out
                )
                yield b"".join((_TAG_MESSAGES, _varint(len(body)), body))
            else:
                body = b"".join(item.wire for item in out)
                yield b"".join((_TAG_BATCH, _varint(len(body)), body))

    def _stream(self) -> None:
        """One PushSteps stream, open until close() or a failure; acks settle each step."""
        with self._cv:
            stream_id = self._stream_id
        call = self._push_steps(self._messages(stream_id), wait_for_ready=False)
        try:
            for first in call:
                with self._cv:
                    for ack in (first, *first.more):
                        if self._unacked and self._unacked[0] == ack.step:
                            self._unacked.popleft()
                        # The agent has read every chunk of an acknowledged step.
                        self._free_sent_locked(ack.step)
                        if ack.dropped:
                            self.stats.steps_dropped_agent += 1
                        else:
                            self.stats.steps_delivered += 1
                    # Only flush() waits on acks; the sender does not (a wake-up of it per ack
                    # was a GIL hand-over per step in the training process).
                    if self._flushing or self._closing:
                        self._cv.notify_all()
        except grpc.RpcError as e:
            code = e.code()
            with self._cv:
                self._stream_id += 1
                self._free_sent_locked(None)
                lost = len(self._unacked)
                self._unacked.clear()
                self.stats.steps_lost_transport += lost
                partial, self._partial = self._partial, None
                if partial is not None:
                    # The rest of that step can no longer make a whole report.
                    self._withdraw_locked(partial, "steps_lost_transport")
                if code in _TRANSIENT:
                    self._registered = False
                    self.stats.reconnects += 1
                else:
                    self.stats.refusals += 1
                self._cv.notify_all()
            log.warning(
                "gradtel: stream to the agent failed (%s: %s); %d step(s) lost",
                code, e.details(), lost + (partial is not None),
            )
            return
        with self._cv:
            # The stream ends only at close(): whatever was not acked is unknown.
            self._stream_id += 1
            self._free_sent_locked(None)
            self.stats.steps_lost_transport += len(self._unacked)
            self._unacked.clear()
            self._partial = None
            self._cv.notify_all()

    def _free_sent_locked(self, step: Optional[int]) -> None:
        """Give back the shared slots of ``step``'s sent chunks (of every step: None). After a
        failed stream nothing more of them will be read for a report: the agent stops reading
        a refused stream, and a step whose end was not acked is never reported."""
        done = list(self._sent_slots) if step is None else [step]
        for s in done:
            for slot in self._sent_slots.pop(s, ()):
                slot.free = True

    def _withdraw_locked(self, step: int, reason: str) -> None:
        """Discard ``step``'s queued chunks and charge the step to the Stats counter ``reason``:
        now if its end is already queued, else when end_step comes (later pushes are refused)."""
        ended = False
        kept = collections.deque()
        for item in self._queue:
            if item.step != step:
                kept.append(item)
            elif item.end:
                ended = True
                self._ends -= 1
            else:
                self._queued_bytes -= item.nbytes
                self._big -= item.big
                for slot in item.slots:
                    slot.free = True
        self._queue = kept
        if ended:
            setattr(self.stats, reason, getattr(self.stats, reason) + 1)
        else:
            self._dropped[step] = reason
