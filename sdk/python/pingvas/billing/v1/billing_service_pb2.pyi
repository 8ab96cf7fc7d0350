from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import httpbody_pb2 as _httpbody_pb2
from pingvas.access.v1 import access_pb2 as _access_pb2
from pingvas.billing.v1 import billing_resources_pb2 as _billing_resources_pb2
from pingvas.rules.v1 import rules_pb2 as _rules_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListPlansRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPlansResponse(_message.Message):
    __slots__ = ("plans",)
    PLANS_FIELD_NUMBER: _ClassVar[int]
    plans: _containers.RepeatedCompositeFieldContainer[_billing_resources_pb2.PlanOffer]
    def __init__(self, plans: _Optional[_Iterable[_Union[_billing_resources_pb2.PlanOffer, _Mapping]]] = ...) -> None: ...

class CreateCheckoutRequest(_message.Message):
    __slots__ = ("plan",)
    PLAN_FIELD_NUMBER: _ClassVar[int]
    plan: _billing_resources_pb2.Plan
    def __init__(self, plan: _Optional[_Union[_billing_resources_pb2.Plan, str]] = ...) -> None: ...

class CreateCheckoutResponse(_message.Message):
    __slots__ = ("checkout_url",)
    CHECKOUT_URL_FIELD_NUMBER: _ClassVar[int]
    checkout_url: str
    def __init__(self, checkout_url: _Optional[str] = ...) -> None: ...

class GetSubscriptionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSubscriptionResponse(_message.Message):
    __slots__ = ("subscription",)
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    subscription: _billing_resources_pb2.Subscription
    def __init__(self, subscription: _Optional[_Union[_billing_resources_pb2.Subscription, _Mapping]] = ...) -> None: ...

class UpgradeSubscriptionRequest(_message.Message):
    __slots__ = ("plan", "validate_only")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    plan: _billing_resources_pb2.Plan
    validate_only: bool
    def __init__(self, plan: _Optional[_Union[_billing_resources_pb2.Plan, str]] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class UpgradeSubscriptionResponse(_message.Message):
    __slots__ = ("days_left_in_period", "new_plan_credits", "credits_reset_now", "subscription")
    DAYS_LEFT_IN_PERIOD_FIELD_NUMBER: _ClassVar[int]
    NEW_PLAN_CREDITS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_RESET_NOW_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    days_left_in_period: int
    new_plan_credits: int
    credits_reset_now: bool
    subscription: _billing_resources_pb2.Subscription
    def __init__(self, days_left_in_period: _Optional[int] = ..., new_plan_credits: _Optional[int] = ..., credits_reset_now: _Optional[bool] = ..., subscription: _Optional[_Union[_billing_resources_pb2.Subscription, _Mapping]] = ...) -> None: ...

class HandleLemonSqueezyWebhookRequest(_message.Message):
    __slots__ = ("body",)
    BODY_FIELD_NUMBER: _ClassVar[int]
    body: _httpbody_pb2.HttpBody
    def __init__(self, body: _Optional[_Union[_httpbody_pb2.HttpBody, _Mapping]] = ...) -> None: ...

class HandleLemonSqueezyWebhookResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCreditBalanceRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCreditBalanceResponse(_message.Message):
    __slots__ = ("balance",)
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    balance: _billing_resources_pb2.CreditBalance
    def __init__(self, balance: _Optional[_Union[_billing_resources_pb2.CreditBalance, _Mapping]] = ...) -> None: ...

class ListCreditEntriesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCreditEntriesResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[_billing_resources_pb2.CreditEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[_billing_resources_pb2.CreditEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
