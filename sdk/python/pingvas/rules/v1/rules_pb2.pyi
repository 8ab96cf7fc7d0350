from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor
FIELD_FIELD_NUMBER: _ClassVar[int]
field: _descriptor.FieldDescriptor

class FieldRules(_message.Message):
    __slots__ = ("required", "min_len", "max_len", "int_gte", "int_lte", "multiple_of", "double_gte", "double_lte", "max_items", "waived_by")
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    MIN_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_LEN_FIELD_NUMBER: _ClassVar[int]
    INT_GTE_FIELD_NUMBER: _ClassVar[int]
    INT_LTE_FIELD_NUMBER: _ClassVar[int]
    MULTIPLE_OF_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_GTE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_LTE_FIELD_NUMBER: _ClassVar[int]
    IN_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    WAIVED_BY_FIELD_NUMBER: _ClassVar[int]
    required: bool
    min_len: int
    max_len: int
    int_gte: int
    int_lte: int
    multiple_of: int
    double_gte: float
    double_lte: float
    max_items: int
    waived_by: str
    def __init__(self, required: _Optional[bool] = ..., min_len: _Optional[int] = ..., max_len: _Optional[int] = ..., int_gte: _Optional[int] = ..., int_lte: _Optional[int] = ..., multiple_of: _Optional[int] = ..., double_gte: _Optional[float] = ..., double_lte: _Optional[float] = ..., max_items: _Optional[int] = ..., waived_by: _Optional[str] = ..., **kwargs) -> None: ...
