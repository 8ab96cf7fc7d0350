"""GalleryService over gRPC: thin conversions around the image library."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, TypeAlias

import grpc
from google.api import httpbody_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from pingvas.gallery.v1 import gallery_resources_pb2 as resources
from pingvas.gallery.v1 import gallery_service_pb2 as pb
from pingvas.gallery.v1 import gallery_service_pb2_grpc as pb_grpc

from services.common.auth import Principal, TokenVerifier
from services.common.errors import FieldViolation, InvalidInput
from services.common.rate_limits import PrincipalRateLimiter
from services.common.rpc import Endpoint, public_unary, unary
from services.gallery.images import GalleryImage, ImageLibrary, image_change, parse_image_id
from services.gallery.recipe import image_recipe
from services.gallery.repository import ImageFilter
from services.generation.modes import LoraWeight

ERROR_DOMAIN = "gallery.pingvas.studio"

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def image_to_proto(image: GalleryImage) -> resources.Image:
    record = image.record
    created = Timestamp()
    created.FromDatetime(record.created_at)
    image_proto = resources.Image(
        name=f"users/{record.user_id}/images/{record.id}",
        id=str(record.id),
        url=image.urls.image,
        thumbnail_url=image.urls.thumbnail,
        size_bytes=record.size_bytes,
        create_time=created,
        starred=record.starred,
        board=record.board,
    )
    # The recipe as the worker embedded it in the PNG.
    image_proto.MergeFrom(image_recipe(record, [LoraWeight.from_json(lora) for lora in record.loras]))
    return image_proto


def _time(request: pb.ListImagesRequest, field: str) -> datetime | None:
    if not request.HasField(field):
        return None
    try:
        value: datetime = getattr(request, field).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidInput([FieldViolation(field, "is not a valid timestamp")]) from None
    return value


def image_filter(request: pb.ListImagesRequest) -> ImageFilter:
    return ImageFilter(
        model=request.model,
        board=request.board,
        starred_only=request.starred_only,
        prompt_query=request.prompt_query,
        created_after=_time(request, "create_time_after"),
        created_before=_time(request, "create_time_before"),
    )


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

    @unary
    async def ListImages(
        self, request: pb.ListImagesRequest, caller: Principal, context: Context
    ) -> pb.ListImagesResponse:
        images, next_token = await self.library.page(
            caller.user_id,
            image_filter(request),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListImagesResponse(
            images=[image_to_proto(image) for image in images], next_page_token=next_token
        )

    @unary
    async def GetImage(
        self, request: pb.GetImageRequest, caller: Principal, context: Context
    ) -> resources.Image:
        return image_to_proto(await self.library.get(caller.user_id, parse_image_id(request.image_id)))

    @unary
    async def UpdateImage(
        self, request: pb.UpdateImageRequest, caller: Principal, context: Context
    ) -> resources.Image:
        image_id = parse_image_id(request.image_id)
        change = image_change(
            request.update_mask.paths, starred=request.image.starred, board=request.image.board
        )
        return image_to_proto(await self.library.update(caller.user_id, image_id, change))

    @unary
    async def DeleteImage(
        self, request: pb.DeleteImageRequest, caller: Principal, context: Context
    ) -> pb.DeleteImageResponse:
        await self.library.delete(caller.user_id, parse_image_id(request.image_id))
        return pb.DeleteImageResponse()

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
