from gradtel.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("protocol_minor", "run_id", "rank", "world_size", "shard", "shard_count", "tensors", "shared_memory")
    PROTOCOL_MINOR_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    protocol_minor: int
    run_id: str
    rank: int
    world_size: int
    shard: int
    shard_count: int
    tensors: _containers.RepeatedCompositeFieldContainer[TensorLayout]
    shared_memory: SharedMemory
    def __init__(self, protocol_minor: _Optional[int] = ..., run_id: _Optional[str] = ..., rank: _Optional[int] = ..., world_size: _Optional[int] = ..., shard: _Optional[int] = ..., shard_count: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[TensorLayout, _Mapping]]] = ..., shared_memory: _Optional[_Union[SharedMemory, _Mapping]] = ...) -> None: ...

class TensorLayout(_message.Message):
    __slots__ = ("name", "shape", "dtype", "owned_start", "owned_end", "track_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    OWNED_START_FIELD_NUMBER: _ClassVar[int]
    OWNED_END_FIELD_NUMBER: _ClassVar[int]
    TRACK_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: _common_pb2.Dtype
    owned_start: int
    owned_end: int
    track_count: int
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[_common_pb2.Dtype, str]] = ..., owned_start: _Optional[int] = ..., owned_end: _Optional[int] = ..., track_count: _Optional[int] = ...) -> None: ...

class SharedMemory(_message.Message):
    __slots__ = ("path", "bytes")
    PATH_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    path: str
    bytes: int
    def __init__(self, path: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class SharedSlice(_message.Message):
    __slots__ = ("offset", "bytes")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    offset: int
    bytes: int
    def __init__(self, offset: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("protocol_minor", "top_k", "hist_precision_bits", "shared_memory", "shared_memory_error")
    PROTOCOL_MINOR_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    HIST_PRECISION_BITS_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_ERROR_FIELD_NUMBER: _ClassVar[int]
    protocol_minor: int
    top_k: int
    hist_precision_bits: int
    shared_memory: bool
    shared_memory_error: str
    def __init__(self, protocol_minor: _Optional[int] = ..., top_k: _Optional[int] = ..., hist_precision_bits: _Optional[int] = ..., shared_memory: _Optional[bool] = ..., shared_memory_error: _Optional[str] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("chunk", "end_step", "batch", "messages")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_STEP_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    chunk: GradientChunk
    end_step: EndStep
    batch: ChunkBatch
    messages: MessageBatch
    def __init__(self, chunk: _Optional[_Union[GradientChunk, _Mapping]] = ..., end_step: _Optional[_Union[EndStep, _Mapping]] = ..., batch: _Optional[_Union[ChunkBatch, _Mapping]] = ..., messages: _Optional[_Union[MessageBatch, _Mapping]] = ...) -> None: ...

class ChunkBatch(_message.Message):
    __slots__ = ("chunks",)
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[GradientChunk]
    def __init__(self, chunks: _Optional[_Iterable[_Union[GradientChunk, _Mapping]]] = ...) -> None: ...

class MessageBatch(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[PushRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[PushRequest, _Mapping]]] = ...) -> None: ...

class GradientChunk(_message.Message):
    __slots__ = ("step", "tensor", "offset", "dtype", "data", "local", "shared")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    step: int
    tensor: str
    offset: int
    dtype: _common_pb2.Dtype
    data: bytes
    local: bool
    shared: SharedSlice
    def __init__(self, step: _Optional[int] = ..., tensor: _Optional[str] = ..., offset: _Optional[int] = ..., dtype: _Optional[_Union[_common_pb2.Dtype, str]] = ..., data: _Optional[bytes] = ..., local: _Optional[bool] = ..., shared: _Optional[_Union[SharedSlice, _Mapping]] = ...) -> None: ...

class EndStep(_message.Message):
    __slots__ = ("step", "loss", "learning_rate", "batch_size")
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    step: int
    loss: float
    learning_rate: float
    batch_size: int
    def __init__(self, step: _Optional[int] = ..., loss: _Optional[float] = ..., learning_rate: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class StepAck(_message.Message):
    __slots__ = ("step", "dropped", "chunks_accepted", "more")
    STEP_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    step: int
    dropped: bool
    chunks_accepted: int
    more: _containers.RepeatedCompositeFieldContainer[StepAck]
    def __init__(self, step: _Optional[int] = ..., dropped: _Optional[bool] = ..., chunks_accepted: _Optional[int] = ..., more: _Optional[_Iterable[_Union[StepAck, _Mapping]]] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("chunks_accepted", "steps_ended", "steps_dropped")
    CHUNKS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    STEPS_ENDED_FIELD_NUMBER: _ClassVar[int]
    STEPS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    chunks_accepted: int
    steps_ended: int
    steps_dropped: int
    def __init__(self, chunks_accepted: _Optional[int] = ..., steps_ended: _Optional[int] = ..., steps_dropped: _Optional[int] = ...) -> None: ...
