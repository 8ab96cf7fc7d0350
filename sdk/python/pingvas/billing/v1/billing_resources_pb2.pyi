import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Plan(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLAN_UNSPECIFIED: _ClassVar[Plan]
    PLAN_FREE: _ClassVar[Plan]
    PLAN_STARTER: _ClassVar[Plan]
    PLAN_PRO: _ClassVar[Plan]
    PLAN_STUDIO: _ClassVar[Plan]
    PLAN_ENTERPRISE: _ClassVar[Plan]

class CreditEntryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CREDIT_ENTRY_KIND_UNSPECIFIED: _ClassVar[CreditEntryKind]
    CREDIT_ENTRY_KIND_GRANT: _ClassVar[CreditEntryKind]
    CREDIT_ENTRY_KIND_RESET: _ClassVar[CreditEntryKind]
    CREDIT_ENTRY_KIND_HOLD: _ClassVar[CreditEntryKind]
    CREDIT_ENTRY_KIND_CAPTURE: _ClassVar[CreditEntryKind]
    CREDIT_ENTRY_KIND_RELEASE: _ClassVar[CreditEntryKind]
    CREDIT_ENTRY_KIND_REVOKE: _ClassVar[CreditEntryKind]
    CREDIT_ENTRY_KIND_REFUND: _ClassVar[CreditEntryKind]
    CREDIT_ENTRY_KIND_ADJUSTMENT: _ClassVar[CreditEntryKind]

class SubscriptionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUBSCRIPTION_STATUS_UNSPECIFIED: _ClassVar[SubscriptionStatus]
    SUBSCRIPTION_STATUS_ACTIVE: _ClassVar[SubscriptionStatus]
    SUBSCRIPTION_STATUS_PAYMENT_FAILED: _ClassVar[SubscriptionStatus]
    SUBSCRIPTION_STATUS_CANCELLED: _ClassVar[SubscriptionStatus]
    SUBSCRIPTION_STATUS_EXPIRED: _ClassVar[SubscriptionStatus]
PLAN_UNSPECIFIED: Plan
PLAN_FREE: Plan
PLAN_STARTER: Plan
PLAN_PRO: Plan
PLAN_STUDIO: Plan
PLAN_ENTERPRISE: Plan
CREDIT_ENTRY_KIND_UNSPECIFIED: CreditEntryKind
CREDIT_ENTRY_KIND_GRANT: CreditEntryKind
CREDIT_ENTRY_KIND_RESET: CreditEntryKind
CREDIT_ENTRY_KIND_HOLD: CreditEntryKind
CREDIT_ENTRY_KIND_CAPTURE: CreditEntryKind
CREDIT_ENTRY_KIND_RELEASE: CreditEntryKind
CREDIT_ENTRY_KIND_REVOKE: CreditEntryKind
CREDIT_ENTRY_KIND_REFUND: CreditEntryKind
CREDIT_ENTRY_KIND_ADJUSTMENT: CreditEntryKind
SUBSCRIPTION_STATUS_UNSPECIFIED: SubscriptionStatus
SUBSCRIPTION_STATUS_ACTIVE: SubscriptionStatus
SUBSCRIPTION_STATUS_PAYMENT_FAILED: SubscriptionStatus
SUBSCRIPTION_STATUS_CANCELLED: SubscriptionStatus
SUBSCRIPTION_STATUS_EXPIRED: SubscriptionStatus

class CreditBalance(_message.Message):
    __slots__ = ("balance", "held", "available")
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    balance: int
    held: int
    available: int
    def __init__(self, balance: _Optional[int] = ..., held: _Optional[int] = ..., available: _Optional[int] = ...) -> None: ...

class CreditEntry(_message.Message):
    __slots__ = ("id", "kind", "amount", "held_change", "reference", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    HELD_CHANGE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: CreditEntryKind
    amount: int
    held_change: int
    reference: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[CreditEntryKind, str]] = ..., amount: _Optional[int] = ..., held_change: _Optional[int] = ..., reference: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Subscription(_message.Message):
    __slots__ = ("plan", "status", "renew_time", "end_time", "grace_period_end_time")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RENEW_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    GRACE_PERIOD_END_TIME_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    status: SubscriptionStatus
    renew_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    grace_period_end_time: _timestamp_pb2.Timestamp
    def __init__(self, plan: _Optional[_Union[Plan, str]] = ..., status: _Optional[_Union[SubscriptionStatus, str]] = ..., renew_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., grace_period_end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PlanOffer(_message.Message):
    __slots__ = ("plan", "price_usd", "monthly_credits")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    PRICE_USD_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_CREDITS_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    price_usd: int
    monthly_credits: int
    def __init__(self, plan: _Optional[_Union[Plan, str]] = ..., price_usd: _Optional[int] = ..., monthly_credits: _Optional[int] = ...) -> None: ...
