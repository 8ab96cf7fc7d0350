"""GenerationService over gRPC: proto in, domain call, proto out. Nothing else lives here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pingvas.generation.v1 import generation_resources_pb2 as resources
from pingvas.generation.v1 import generation_service_pb2 as pb
from pingvas.generation.v1 import generation_service_pb2_grpc as pb_grpc

from services.common.auth import Principal, TokenVerifier
from services.common.rate_limits import PrincipalRateLimiter
from services.common.rpc import Endpoint, server_stream, unary
from services.common.storage import ImageUrls
from services.generation.acceptance import Acceptance, GenerationSpec
from services.generation.generations import Generations, parse_generation_id
from services.generation.repository import GenerationRecord
from services.generation.stream_slots import StreamSlots
from services.generation.watching import Watching

ERROR_DOMAIN = "generation.pingvas.studio"

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def _timestamp(value: Any) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def generation_to_proto(record: GenerationRecord, urls: ImageUrls | None) -> resources.Generation:
    failure = record.failure
    return resources.Generation(
        name=f"users/{record.user_id}/generations/{record.id}",
        id=str(record.id),
        state=resources.GenerationState.Value(f"GENERATION_STATE_{record.state}"),
        prompt=record.prompt,
        negative_prompt=record.negative_prompt,
        model=record.model,
        width=record.width,
        height=record.height,
        steps=record.steps,
        seed=record.seed,
        guidance=record.guidance,
        create_time=_timestamp(record.created_at),
        start_time=_timestamp(record.started_at),
        end_time=_timestamp(record.finished_at),
        image_url=urls.image if urls else "",
        thumbnail_url=urls.thumbnail if urls else "",
        image=f"users/{record.user_id}/images/{record.id}" if urls else "",
        gpu_seconds=record.gpu_seconds,
        credits_held=record.credits_held,
        credits_charged=record.credits_charged,
        failure_reason=failure.sentence if failure else "",
        failure_code=failure.code if failure else "",
        incident_id=failure.incident_id if failure else "",
        attempt=record.attempt,
    )


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
    )


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
            caller.user_id, spec_from_proto(request.generation), request.request_id
        )
        return await self._proto(record)

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
        models, next_token = self.acceptance.catalog_page(
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
