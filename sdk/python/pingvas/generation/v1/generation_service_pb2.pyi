import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from pingvas.access.v1 import access_pb2 as _access_pb2
from pingvas.generation.v1 import generation_resources_pb2 as _generation_resources_pb2
from pingvas.rules.v1 import rules_pb2 as _rules_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateGenerationRequest(_message.Message):
    __slots__ = ("generation", "request_id", "webhook", "from_image_id")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    FROM_IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    generation: _generation_resources_pb2.Generation
    request_id: str
    webhook: Webhook
    from_image_id: str
    def __init__(self, generation: _Optional[_Union[_generation_resources_pb2.Generation, _Mapping]] = ..., request_id: _Optional[str] = ..., webhook: _Optional[_Union[Webhook, _Mapping]] = ..., from_image_id: _Optional[str] = ...) -> None: ...

class BatchCreateGenerationsRequest(_message.Message):
    __slots__ = ("parent", "requests")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    parent: str
    requests: _containers.RepeatedCompositeFieldContainer[CreateGenerationRequest]
    def __init__(self, parent: _Optional[str] = ..., requests: _Optional[_Iterable[_Union[CreateGenerationRequest, _Mapping]]] = ...) -> None: ...

class BatchCreateGenerationsResponse(_message.Message):
    __slots__ = ("generations",)
    GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    generations: _containers.RepeatedCompositeFieldContainer[_generation_resources_pb2.Generation]
    def __init__(self, generations: _Optional[_Iterable[_Union[_generation_resources_pb2.Generation, _Mapping]]] = ...) -> None: ...

class CreateUploadRequest(_message.Message):
    __slots__ = ("content_type", "size_bytes")
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    content_type: str
    size_bytes: int
    def __init__(self, content_type: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class Webhook(_message.Message):
    __slots__ = ("url", "events_filter")
    URL_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FILTER_FIELD_NUMBER: _ClassVar[int]
    url: str
    events_filter: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, url: _Optional[str] = ..., events_filter: _Optional[_Iterable[str]] = ...) -> None: ...

class GetGenerationRequest(_message.Message):
    __slots__ = ("generation_id",)
    GENERATION_ID_FIELD_NUMBER: _ClassVar[int]
    generation_id: str
    def __init__(self, generation_id: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_generation_resources_pb2.Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[_generation_resources_pb2.Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListGenerationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListGenerationsResponse(_message.Message):
    __slots__ = ("generations", "next_page_token")
    GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    generations: _containers.RepeatedCompositeFieldContainer[_generation_resources_pb2.Generation]
    next_page_token: str
    def __init__(self, generations: _Optional[_Iterable[_Union[_generation_resources_pb2.Generation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelGenerationRequest(_message.Message):
    __slots__ = ("generation_id",)
    GENERATION_ID_FIELD_NUMBER: _ClassVar[int]
    generation_id: str
    def __init__(self, generation_id: _Optional[str] = ...) -> None: ...

class WatchGenerationRequest(_message.Message):
    __slots__ = ("generation_id", "after_sequence")
    GENERATION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    generation_id: str
    after_sequence: int
    def __init__(self, generation_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class WatchGenerationResponse(_message.Message):
    __slots__ = ("sequence", "generation_id", "time", "queued", "started", "progress", "succeeded", "failed", "cancelled")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    generation_id: str
    time: _timestamp_pb2.Timestamp
    queued: _generation_resources_pb2.GenerationQueued
    started: _generation_resources_pb2.GenerationStarted
    progress: _generation_resources_pb2.GenerationProgress
    succeeded: _generation_resources_pb2.GenerationSucceeded
    failed: _generation_resources_pb2.GenerationFailed
    cancelled: _generation_resources_pb2.GenerationCancelled
    def __init__(self, sequence: _Optional[int] = ..., generation_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., queued: _Optional[_Union[_generation_resources_pb2.GenerationQueued, _Mapping]] = ..., started: _Optional[_Union[_generation_resources_pb2.GenerationStarted, _Mapping]] = ..., progress: _Optional[_Union[_generation_resources_pb2.GenerationProgress, _Mapping]] = ..., succeeded: _Optional[_Union[_generation_resources_pb2.GenerationSucceeded, _Mapping]] = ..., failed: _Optional[_Union[_generation_resources_pb2.GenerationFailed, _Mapping]] = ..., cancelled: _Optional[_Union[_generation_resources_pb2.GenerationCancelled, _Mapping]] = ...) -> None: ...
