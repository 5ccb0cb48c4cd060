from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Dtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[Dtype]
    DTYPE_F32: _ClassVar[Dtype]
    DTYPE_F16: _ClassVar[Dtype]
    DTYPE_BF16: _ClassVar[Dtype]
DTYPE_UNSPECIFIED: Dtype
DTYPE_F32: Dtype
DTYPE_F16: Dtype
DTYPE_BF16: Dtype

class Summary(_message.Message):
    __slots__ = ("count", "mean", "m2", "m3", "m4", "sum_sq", "max_abs", "nan_count", "pos_inf_count", "neg_inf_count", "pos_count", "neg_count", "zero_count", "abs_hist", "top_abs", "top_k_capacity")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    M2_FIELD_NUMBER: _ClassVar[int]
    M3_FIELD_NUMBER: _ClassVar[int]
    M4_FIELD_NUMBER: _ClassVar[int]
    SUM_SQ_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_FIELD_NUMBER: _ClassVar[int]
    NAN_COUNT_FIELD_NUMBER: _ClassVar[int]
    POS_INF_COUNT_FIELD_NUMBER: _ClassVar[int]
    NEG_INF_COUNT_FIELD_NUMBER: _ClassVar[int]
    POS_COUNT_FIELD_NUMBER: _ClassVar[int]
    NEG_COUNT_FIELD_NUMBER: _ClassVar[int]
    ZERO_COUNT_FIELD_NUMBER: _ClassVar[int]
    ABS_HIST_FIELD_NUMBER: _ClassVar[int]
    TOP_ABS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    count: int
    mean: float
    m2: float
    m3: float
    m4: float
    sum_sq: float
    max_abs: float
    nan_count: int
    pos_inf_count: int
    neg_inf_count: int
    pos_count: int
    neg_count: int
    zero_count: int
    abs_hist: LogHistogram
    top_abs: _containers.RepeatedScalarFieldContainer[float]
    top_k_capacity: int
    def __init__(self, count: _Optional[int] = ..., mean: _Optional[float] = ..., m2: _Optional[float] = ..., m3: _Optional[float] = ..., m4: _Optional[float] = ..., sum_sq: _Optional[float] = ..., max_abs: _Optional[float] = ..., nan_count: _Optional[int] = ..., pos_inf_count: _Optional[int] = ..., neg_inf_count: _Optional[int] = ..., pos_count: _Optional[int] = ..., neg_count: _Optional[int] = ..., zero_count: _Optional[int] = ..., abs_hist: _Optional[_Union[LogHistogram, _Mapping]] = ..., top_abs: _Optional[_Iterable[float]] = ..., top_k_capacity: _Optional[int] = ...) -> None: ...

class LogHistogram(_message.Message):
    __slots__ = ("precision_bits", "index", "count", "index_delta")
    PRECISION_BITS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    INDEX_DELTA_FIELD_NUMBER: _ClassVar[int]
    precision_bits: int
    index: _containers.RepeatedScalarFieldContainer[int]
    count: _containers.RepeatedScalarFieldContainer[int]
    index_delta: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, precision_bits: _Optional[int] = ..., index: _Optional[_Iterable[int]] = ..., count: _Optional[_Iterable[int]] = ..., index_delta: _Optional[_Iterable[int]] = ...) -> None: ...
