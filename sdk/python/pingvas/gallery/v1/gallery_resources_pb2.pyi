import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from pingvas.generation.v1 import generation_resources_pb2 as _generation_resources_pb2
from pingvas.rules.v1 import rules_pb2 as _rules_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Image(_message.Message):
    __slots__ = ("name", "id", "url", "prompt", "model", "width", "height", "seed", "create_time", "thumbnail_url", "negative_prompt", "steps", "guidance", "size_bytes", "starred", "board", "sampler", "mode", "strength", "loras", "init_image_id", "mask_image_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_URL_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STARRED_FIELD_NUMBER: _ClassVar[int]
    BOARD_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    INIT_IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MASK_IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    url: str
    prompt: str
    model: str
    width: int
    height: int
    seed: int
    create_time: _timestamp_pb2.Timestamp
    thumbnail_url: str
    negative_prompt: str
    steps: int
    guidance: float
    size_bytes: int
    starred: bool
    board: str
    sampler: str
    mode: _generation_resources_pb2.GenerationMode
    strength: float
    loras: _containers.RepeatedCompositeFieldContainer[_generation_resources_pb2.LoraWeight]
    init_image_id: str
    mask_image_id: str
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., url: _Optional[str] = ..., prompt: _Optional[str] = ..., model: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., seed: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., thumbnail_url: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., steps: _Optional[int] = ..., guidance: _Optional[float] = ..., size_bytes: _Optional[int] = ..., starred: _Optional[bool] = ..., board: _Optional[str] = ..., sampler: _Optional[str] = ..., mode: _Optional[_Union[_generation_resources_pb2.GenerationMode, str]] = ..., strength: _Optional[float] = ..., loras: _Optional[_Iterable[_Union[_generation_resources_pb2.LoraWeight, _Mapping]]] = ..., init_image_id: _Optional[str] = ..., mask_image_id: _Optional[str] = ...) -> None: ...
