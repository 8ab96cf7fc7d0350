import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from pingvas.rules.v1 import rules_pb2 as _rules_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GENERATION_STATE_UNSPECIFIED: _ClassVar[GenerationState]
    GENERATION_STATE_QUEUED: _ClassVar[GenerationState]
    GENERATION_STATE_RUNNING: _ClassVar[GenerationState]
    GENERATION_STATE_SUCCEEDED: _ClassVar[GenerationState]
    GENERATION_STATE_FAILED: _ClassVar[GenerationState]
    GENERATION_STATE_CANCELLED: _ClassVar[GenerationState]

class GenerationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GENERATION_MODE_UNSPECIFIED: _ClassVar[GenerationMode]
    GENERATION_MODE_TEXT_TO_IMAGE: _ClassVar[GenerationMode]
    GENERATION_MODE_IMAGE_TO_IMAGE: _ClassVar[GenerationMode]
    GENERATION_MODE_INPAINTING: _ClassVar[GenerationMode]
GENERATION_STATE_UNSPECIFIED: GenerationState
GENERATION_STATE_QUEUED: GenerationState
GENERATION_STATE_RUNNING: GenerationState
GENERATION_STATE_SUCCEEDED: GenerationState
GENERATION_STATE_FAILED: GenerationState
GENERATION_STATE_CANCELLED: GenerationState
GENERATION_MODE_UNSPECIFIED: GenerationMode
GENERATION_MODE_TEXT_TO_IMAGE: GenerationMode
GENERATION_MODE_IMAGE_TO_IMAGE: GenerationMode
GENERATION_MODE_INPAINTING: GenerationMode

class LoraWeight(_message.Message):
    __slots__ = ("name", "weight")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: float
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class Generation(_message.Message):
    __slots__ = ("name", "id", "state", "prompt", "negative_prompt", "model", "width", "height", "steps", "seed", "guidance", "create_time", "start_time", "end_time", "image_url", "gpu_seconds", "credits_held", "credits_charged", "failure_reason", "attempt", "failure_code", "incident_id", "thumbnail_url", "image", "sampler", "strength", "init_image_id", "mask_image_id", "loras", "mode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_HELD_FIELD_NUMBER: _ClassVar[int]
    CREDITS_CHARGED_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_CODE_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_URL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    INIT_IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MASK_IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    state: GenerationState
    prompt: str
    negative_prompt: str
    model: str
    width: int
    height: int
    steps: int
    seed: int
    guidance: float
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    image_url: str
    gpu_seconds: float
    credits_held: int
    credits_charged: int
    failure_reason: str
    attempt: int
    failure_code: str
    incident_id: str
    thumbnail_url: str
    image: str
    sampler: str
    strength: float
    init_image_id: str
    mask_image_id: str
    loras: _containers.RepeatedCompositeFieldContainer[LoraWeight]
    mode: GenerationMode
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., state: _Optional[_Union[GenerationState, str]] = ..., prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., model: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., steps: _Optional[int] = ..., seed: _Optional[int] = ..., guidance: _Optional[float] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., image_url: _Optional[str] = ..., gpu_seconds: _Optional[float] = ..., credits_held: _Optional[int] = ..., credits_charged: _Optional[int] = ..., failure_reason: _Optional[str] = ..., attempt: _Optional[int] = ..., failure_code: _Optional[str] = ..., incident_id: _Optional[str] = ..., thumbnail_url: _Optional[str] = ..., image: _Optional[str] = ..., sampler: _Optional[str] = ..., strength: _Optional[float] = ..., init_image_id: _Optional[str] = ..., mask_image_id: _Optional[str] = ..., loras: _Optional[_Iterable[_Union[LoraWeight, _Mapping]]] = ..., mode: _Optional[_Union[GenerationMode, str]] = ...) -> None: ...

class GenerationQueued(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class GenerationStarted(_message.Message):
    __slots__ = ("attempt",)
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    def __init__(self, attempt: _Optional[int] = ...) -> None: ...

class GenerationProgress(_message.Message):
    __slots__ = ("step", "total_steps", "preview", "preview_mime_type")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    preview: bytes
    preview_mime_type: str
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., preview: _Optional[bytes] = ..., preview_mime_type: _Optional[str] = ...) -> None: ...

class GenerationSucceeded(_message.Message):
    __slots__ = ("image_url", "seed", "gpu_seconds", "credits_charged", "thumbnail_url")
    IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_CHARGED_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_URL_FIELD_NUMBER: _ClassVar[int]
    image_url: str
    seed: int
    gpu_seconds: float
    credits_charged: int
    thumbnail_url: str
    def __init__(self, image_url: _Optional[str] = ..., seed: _Optional[int] = ..., gpu_seconds: _Optional[float] = ..., credits_charged: _Optional[int] = ..., thumbnail_url: _Optional[str] = ...) -> None: ...

class GenerationFailed(_message.Message):
    __slots__ = ("reason", "code", "incident_id")
    REASON_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    reason: str
    code: str
    incident_id: str
    def __init__(self, reason: _Optional[str] = ..., code: _Optional[str] = ..., incident_id: _Optional[str] = ...) -> None: ...

class GenerationCancelled(_message.Message):
    __slots__ = ("was_running",)
    WAS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    was_running: bool
    def __init__(self, was_running: _Optional[bool] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "id", "native_size", "min_size", "max_size", "default", "family", "samplers", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NATIVE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    SAMPLERS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    native_size: int
    min_size: int
    max_size: int
    default: bool
    family: str
    samplers: _containers.RepeatedScalarFieldContainer[str]
    kind: str
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., native_size: _Optional[int] = ..., min_size: _Optional[int] = ..., max_size: _Optional[int] = ..., default: _Optional[bool] = ..., family: _Optional[str] = ..., samplers: _Optional[_Iterable[str]] = ..., kind: _Optional[str] = ...) -> None: ...

class Upload(_message.Message):
    __slots__ = ("name", "id", "upload_url", "content_type", "size_bytes", "upload_expire_time", "expire_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_URL_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    upload_url: str
    content_type: str
    size_bytes: int
    upload_expire_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., upload_url: _Optional[str] = ..., content_type: _Optional[str] = ..., size_bytes: _Optional[int] = ..., upload_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
