"""The contract's access declarations are the services' only table: a servicer that authenticates
differently from what its RPC declares does not construct, so its process never serves."""

from __future__ import annotations

from typing import Any

import pytest
from pingvas.user.v1 import user_service_pb2 as pb
from pingvas.user.v1 import user_service_pb2_grpc as pb_grpc

from services.common.auth import Principal
from services.common.rpc import Endpoint, public_unary, unary


def _construct(servicer_class: type[Endpoint]) -> Endpoint:
    return servicer_class(
        service=pb.DESCRIPTOR.services_by_name["UserService"],
        tokens=None,  # type: ignore[arg-type]  # never called: construction alone is checked
        error_domain="test",
        rate_limiter=None,  # type: ignore[arg-type]
    )


def test_a_public_rpc_decorated_as_authenticated_fails_to_construct() -> None:
    class TokenForTheJwks(pb_grpc.UserServiceServicer, Endpoint):  # type: ignore[misc]
        @unary
        async def GetJwks(self, request: Any, caller: Principal, context: Any) -> Any:
            raise AssertionError("never called")

    with pytest.raises(TypeError, match=r"GetJwks.*public_unary"):
        _construct(TokenForTheJwks)


def test_an_owner_rpc_decorated_as_public_fails_to_construct() -> None:
    class AnyoneReadsAnyone(pb_grpc.UserServiceServicer, Endpoint):  # type: ignore[misc]
        @public_unary
        async def GetUser(self, request: Any, context: Any) -> Any:
            raise AssertionError("never called")

    with pytest.raises(TypeError, match=r"GetUser.*unary or server_stream"):
        _construct(AnyoneReadsAnyone)


def test_decorators_that_agree_with_the_contract_construct() -> None:
    class Agreeing(pb_grpc.UserServiceServicer, Endpoint):  # type: ignore[misc]
        @public_unary
        async def GetJwks(self, request: Any, context: Any) -> Any:
            raise AssertionError("never called")

        @unary
        async def GetUser(self, request: Any, caller: Principal, context: Any) -> Any:
            raise AssertionError("never called")

    assert _construct(Agreeing).access["GetUser"].api_key_scope == "read"
