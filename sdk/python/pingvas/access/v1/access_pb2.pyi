from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AccessClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCESS_CLASS_UNSPECIFIED: _ClassVar[AccessClass]
    ACCESS_CLASS_PUBLIC: _ClassVar[AccessClass]
    ACCESS_CLASS_USER: _ClassVar[AccessClass]
    ACCESS_CLASS_OWNER: _ClassVar[AccessClass]
    ACCESS_CLASS_ADMIN: _ClassVar[AccessClass]
    ACCESS_CLASS_WEBHOOK: _ClassVar[AccessClass]

class ApiKeyScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    API_KEY_SCOPE_UNSPECIFIED: _ClassVar[ApiKeyScope]
    API_KEY_SCOPE_READ: _ClassVar[ApiKeyScope]
    API_KEY_SCOPE_GENERATE: _ClassVar[ApiKeyScope]
ACCESS_CLASS_UNSPECIFIED: AccessClass
ACCESS_CLASS_PUBLIC: AccessClass
ACCESS_CLASS_USER: AccessClass
ACCESS_CLASS_OWNER: AccessClass
ACCESS_CLASS_ADMIN: AccessClass
ACCESS_CLASS_WEBHOOK: AccessClass
API_KEY_SCOPE_UNSPECIFIED: ApiKeyScope
API_KEY_SCOPE_READ: ApiKeyScope
API_KEY_SCOPE_GENERATE: ApiKeyScope
METHOD_FIELD_NUMBER: _ClassVar[int]
method: _descriptor.FieldDescriptor

class MethodAccess(_message.Message):
    __slots__ = ("access_class", "api_key_scope")
    ACCESS_CLASS_FIELD_NUMBER: _ClassVar[int]
    API_KEY_SCOPE_FIELD_NUMBER: _ClassVar[int]
    access_class: AccessClass
    api_key_scope: ApiKeyScope
    def __init__(self, access_class: _Optional[_Union[AccessClass, str]] = ..., api_key_scope: _Optional[_Union[ApiKeyScope, str]] = ...) -> None: ...
