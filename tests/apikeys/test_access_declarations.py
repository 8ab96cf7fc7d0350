"""The contract's access declarations are the services' only table: a servicer that authenticates
differently from what its RPC declares does not construct, so its process never serves."""

from __future__ import annotations

from typing import Any

import pytest
from pingvas.user.v1 import user_service_pb2 as pb
from pingvas.user.v1 import user_service_pb2_grpc as pb_grpc

from services.common.auth import Principal
from services.common.rpc import Endpoint, public_unary, unary
from services.user.servicer import UserServicer


def _construct(servicer_class: type[Endpoint]) -> Endpoint:
    """The Endpoint part of the servicer alone: what it checks needs no database."""
    servicer = object.__new__(servicer_class)
    Endpoint.__init__(
        servicer,
        service=pb.DESCRIPTOR.services_by_name["UserService"],
        tokens=None,  # type: ignore[arg-type]  # never called: construction alone is checked
        error_domain="test",
        rate_limiter=None,  # type: ignore[arg-type]
    )
    return servicer


def test_a_public_rpc_decorated_as_authenticated_fails_to_construct() -> None:
    class TokenForTheJwks(UserServicer):
        @unary
        async def GetJwks(self, request: Any, caller: Principal, context: Any) -> Any:
            raise AssertionError("never called")

    with pytest.raises(TypeError, match=r"GetJwks.*public_unary"):
        _construct(TokenForTheJwks)


def test_an_owner_rpc_decorated_as_public_fails_to_construct() -> None:
    class AnyoneReadsAnyone(UserServicer):
        @public_unary
        async def GetUser(self, request: Any, context: Any) -> Any:
            raise AssertionError("never called")

    with pytest.raises(TypeError, match=r"GetUser.*unary or server_stream"):
        _construct(AnyoneReadsAnyone)


def test_an_rpc_the_servicer_leaves_to_the_generated_base_fails_to_construct() -> None:
    class Forgetful(pb_grpc.UserServiceServicer, Endpoint):  # type: ignore[misc]
        @public_unary
        async def GetJwks(self, request: Any, context: Any) -> Any:
            raise AssertionError("never called")

    with pytest.raises(TypeError, match="is not implemented"):
        _construct(Forgetful)


def test_the_servicers_of_every_service_agree_with_the_contract() -> None:
    from pingvas.billing.v1 import billing_service_pb2
    from pingvas.gallery.v1 import gallery_service_pb2
    from pingvas.generation.v1 import generation_service_pb2
    from pingvas.user.v1 import api_key_service_pb2

    from services.billing.servicer import BillingServicer
    from services.gallery.servicer import GalleryServicer
    from services.generation.servicer import GenerationServicer
    from services.user.api_key_servicer import ApiKeyServicer

    for servicer_class, service in (
        (UserServicer, pb.DESCRIPTOR.services_by_name["UserService"]),
        (ApiKeyServicer, api_key_service_pb2.DESCRIPTOR.services_by_name["ApiKeyService"]),
        (BillingServicer, billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"]),
        (GenerationServicer, generation_service_pb2.DESCRIPTOR.services_by_name["GenerationService"]),
        (GalleryServicer, gallery_service_pb2.DESCRIPTOR.services_by_name["GalleryService"]),
    ):
        servicer = object.__new__(servicer_class)
        Endpoint.__init__(servicer, service=service, tokens=None, error_domain="test", rate_limiter=None)  # type: ignore[arg-type]
        assert set(servicer.access) == {method.name for method in service.methods}
