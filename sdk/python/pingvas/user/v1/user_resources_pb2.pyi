import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from pingvas.billing.v1 import billing_resources_pb2 as _billing_resources_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OAuthProvider(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    O_AUTH_PROVIDER_UNSPECIFIED: _ClassVar[OAuthProvider]
    O_AUTH_PROVIDER_GOOGLE: _ClassVar[OAuthProvider]
    O_AUTH_PROVIDER_DISCORD: _ClassVar[OAuthProvider]
O_AUTH_PROVIDER_UNSPECIFIED: OAuthProvider
O_AUTH_PROVIDER_GOOGLE: OAuthProvider
O_AUTH_PROVIDER_DISCORD: OAuthProvider

class User(_message.Message):
    __slots__ = ("name", "id", "email", "plan", "credits", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    email: str
    plan: _billing_resources_pb2.Plan
    credits: _billing_resources_pb2.CreditBalance
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., email: _Optional[str] = ..., plan: _Optional[_Union[_billing_resources_pb2.Plan, str]] = ..., credits: _Optional[_Union[_billing_resources_pb2.CreditBalance, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
