"""GenerationService over gRPC: proto in, domain call, proto out. Nothing else lives here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from pingvas.generation.v1 import generation_resources_pb2 as resources
from pingvas.generation.v1 import generation_service_pb2 as pb
from pingvas.generation.v1 import generation_service_pb2_grpc as pb_grpc

from services.common.auth import Principal, TokenVerifier
from services.common.rate_limits import PrincipalRateLimiter
from services.common.rpc import Endpoint, server_stream, unary
from services.generation.acceptance import Acceptance, BatchItem, GenerationSpec, WebhookRequest
from services.generation.catalog import ModelKind
from services.generation.generations import Generations, parse_generation_id
from services.generation.modes import LoraWeight
from services.generation.repository import GenerationRecord
from services.generation.representation import generation_to_proto, upload_to_proto
from services.generation.stream_slots import StreamSlots
from services.generation.watching import Watching

ERROR_DOMAIN = "generation.pingvas.studio"

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def spec_from_proto(generation: resources.Generation) -> GenerationSpec:
    def optional(name: str) -> Any:
        return getattr(generation, name) if generation.HasField(name) else None

    return GenerationSpec(
        prompt=generation.prompt,
        negative_prompt=generation.negative_prompt,
        model=generation.model,
        width=optional("width"),
        height=optional("height"),
        steps=optional("steps"),
        seed=optional("seed"),
        guidance=optional("guidance"),
        sampler=generation.sampler,
        strength=optional("strength"),
        init_image_id=generation.init_image_id,
        mask_image_id=generation.mask_image_id,
        loras=tuple(LoraWeight(name=lora.name, weight=lora.weight) for lora in generation.loras),
    )


def webhook_from_proto(request: pb.CreateGenerationRequest) -> WebhookRequest | None:
    if not request.HasField("webhook"):
        return None
    return WebhookRequest(url=request.webhook.url, events=tuple(request.webhook.events_filter))


class GenerationServicer(pb_grpc.GenerationServiceServicer, Endpoint):
    def __init__(
        self,
        *,
        acceptance: Acceptance,
        generations: Generations,
        watching: Watching,
        stream_slots: StreamSlots,
        tokens: TokenVerifier,
        rate_limiter: PrincipalRateLimiter,
    ) -> None:
        Endpoint.__init__(
            self,
            service=pb.DESCRIPTOR.services_by_name["GenerationService"],
            tokens=tokens,
            error_domain=ERROR_DOMAIN,
            rate_limiter=rate_limiter,
        )
        self.acceptance = acceptance
        self.generations = generations
        self.watching = watching
        self.stream_slots = stream_slots

    async def _proto(self, record: GenerationRecord) -> resources.Generation:
        return generation_to_proto(record, await self.generations.image_urls(record))

    @unary
    async def CreateGeneration(
        self, request: pb.CreateGenerationRequest, caller: Principal, context: Context
    ) -> resources.Generation:
        record = await self.acceptance.create(
            caller.user_id,
            spec_from_proto(request.generation),
            request.request_id,
            webhook=webhook_from_proto(request),
            api_key_id=caller.api_key_id,
            from_image_id=request.from_image_id,
        )
        return await self._proto(record)

    @unary
    async def BatchCreateGenerations(
        self, request: pb.BatchCreateGenerationsRequest, caller: Principal, context: Context
    ) -> pb.BatchCreateGenerationsResponse:
        records = await self.acceptance.create_batch(
            caller.user_id,
            [
                BatchItem(
                    spec=spec_from_proto(item.generation),
                    webhook=webhook_from_proto(item),
                    from_image_id=item.from_image_id,
                    request_id=item.request_id,
                )
                for item in request.requests
            ],
            parent=request.parent,
            api_key_id=caller.api_key_id,
        )
        return pb.BatchCreateGenerationsResponse(
            generations=[await self._proto(record) for record in records]
        )

    @unary
    async def CreateUpload(
        self, request: pb.CreateUploadRequest, caller: Principal, context: Context
    ) -> resources.Upload:
        upload = await self.acceptance.inputs.create_upload(
            caller.user_id, content_type=request.content_type, size_bytes=request.size_bytes
        )
        return upload_to_proto(upload)

    @unary
    async def GetGeneration(
        self, request: pb.GetGenerationRequest, caller: Principal, context: Context
    ) -> resources.Generation:
        record = await self.generations.get(caller.user_id, parse_generation_id(request.generation_id))
        return await self._proto(record)

    @unary
    async def ListModels(
        self, request: pb.ListModelsRequest, caller: Principal, context: Context
    ) -> pb.ListModelsResponse:
        models, next_token = self.acceptance.catalog.page(
            page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListModelsResponse(
            models=[
                resources.Model(
                    name=f"models/{model.name}",
                    id=model.name,
                    native_size=model.native_size,
                    min_size=model.min_size,
                    max_size=model.max_size,
                    default=model.name == self.acceptance.default_model,
                    family=model.family,
                    samplers=[str(sampler) for sampler in model.samplers]
                    if model.kind == ModelKind.PIPELINE
                    else [],
                    kind=model.kind,
                )
                for model in models
            ],
            next_page_token=next_token,
        )

    @unary
    async def ListGenerations(
        self, request: pb.ListGenerationsRequest, caller: Principal, context: Context
    ) -> pb.ListGenerationsResponse:
        records, next_token = await self.generations.page(
            caller.user_id, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListGenerationsResponse(
            generations=[await self._proto(record) for record in records], next_page_token=next_token
        )

    @unary
    async def CancelGeneration(
        self, request: pb.CancelGenerationRequest, caller: Principal, context: Context
    ) -> resources.Generation:
        return await self._proto(
            await self.acceptance.cancel(caller.user_id, parse_generation_id(request.generation_id))
        )

    @server_stream
    async def WatchGeneration(
        self, request: pb.WatchGenerationRequest, caller: Principal, context: Context
    ) -> AsyncIterator[pb.WatchGenerationResponse]:
        generation_id = parse_generation_id(request.generation_id)
        async with self.stream_slots.held(caller.user_id):
            async for event in self.watching.watch(
                caller.user_id, generation_id, after_sequence=request.after_sequence
            ):
                yield event
