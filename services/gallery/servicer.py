"""GalleryService over gRPC. Listing and deleting land with the gallery issue; until then they
answer UNIMPLEMENTED, never a pretend result."""

from __future__ import annotations

import uuid
from typing import Any, TypeAlias

import grpc
from google.api import httpbody_pb2
from pingvas.gallery.v1 import gallery_service_pb2 as pb
from pingvas.gallery.v1 import gallery_service_pb2_grpc as pb_grpc

from services.common.auth import TokenVerifier
from services.common.errors import FieldViolation, InvalidInput
from services.common.rate_limits import PrincipalRateLimiter
from services.common.rpc import Endpoint, not_implemented_yet, public_unary
from services.gallery.images import ImageLibrary

ERROR_DOMAIN = "gallery.pingvas.studio"

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class GalleryServicer(pb_grpc.GalleryServiceServicer, Endpoint):
    def __init__(
        self, library: ImageLibrary, tokens: TokenVerifier, rate_limiter: PrincipalRateLimiter
    ) -> None:
        Endpoint.__init__(
            self,
            service=pb.DESCRIPTOR.services_by_name["GalleryService"],
            tokens=tokens,
            error_domain=ERROR_DOMAIN,
            rate_limiter=rate_limiter,
        )
        self.library = library

    ListImages = not_implemented_yet("ListImages")

    GetImage = not_implemented_yet("GetImage")

    DeleteImage = not_implemented_yet("DeleteImage")

    @public_unary
    async def GetImageContent(
        self, request: pb.GetImageContentRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        try:
            image_id = uuid.UUID(request.image_id)
        except ValueError:
            raise InvalidInput([FieldViolation("image_id", "must be an image id (a UUID)")]) from None
        png = await self.library.signed_content(image_id, request.expires, request.signature)
        return httpbody_pb2.HttpBody(content_type="image/png", data=png)
