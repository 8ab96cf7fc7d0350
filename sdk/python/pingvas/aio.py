"""`pingvas.AsyncClient`: the same API as `pingvas.Client`, over `grpc.aio`, for asyncio code:
`async with pingvas.AsyncClient(api_key=key) as client`, then `await` its methods, and
`async for` over a watch or a list.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import grpc

from pingvas.connection import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT_SECONDS,
    DEFAULT_WATCH_TIMEOUT_SECONDS,
    Connection,
    GenerationResult,
    Page,
    WatchResumption,
    batch_request,
    create_request,
    list_images_request,
    raise_unless_succeeded,
    upload_bytes,
)
from pingvas.errors import from_rpc_error
from pingvas.events import Event
from pingvas.gallery.v1 import gallery_resources_pb2, gallery_service_pb2, gallery_service_pb2_grpc
from pingvas.generation.v1 import (
    generation_resources_pb2,
    generation_service_pb2,
    generation_service_pb2_grpc,
)
from pingvas.retries import RetryPolicy, call_with_retries_async

Resource = TypeVar("Resource")
Response = TypeVar("Response")


class AsyncPager(Generic[Resource]):
    """A list call's results: `async for` over every item across pages, fetched as needed, or
    `pages()` for one `Page` at a time."""

    def __init__(self, fetch: Callable[[str], Awaitable[Page[Resource]]], page_token: str = "") -> None:
        self._fetch = fetch
        self._page_token = page_token

    async def pages(self) -> AsyncIterator[Page[Resource]]:
        token = self._page_token
        while True:
            page = await self._fetch(token)
            yield page
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def _items(self) -> AsyncIterator[Resource]:
        async for page in self.pages():
            for item in page.items:
                yield item

    def __aiter__(self) -> AsyncIterator[Resource]:
        return self._items()


class AsyncGenerations:
    """`client.generations` of an AsyncClient; see `pingvas.client.Generations`."""

    def __init__(self, connection: Connection, channel: grpc.aio.Channel) -> None:
        self._connection = connection
        self._stub = generation_service_pb2_grpc.GenerationServiceStub(channel)

    async def create(
        self,
        prompt: str,
        *,
        model: str | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        seed: int | None = None,
        negative_prompt: str | None = None,
        guidance: float | None = None,
        request_id: str | None = None,
        sampler: str | None = None,
        strength: float | None = None,
        init_image_id: str | None = None,
        mask_image_id: str | None = None,
        loras: Sequence[tuple[str, float]] = (),
        from_image_id: str | None = None,
    ) -> generation_resources_pb2.Generation:
        request = create_request(
            prompt,
            model=model,
            width=width,
            height=height,
            steps=steps,
            seed=seed,
            negative_prompt=negative_prompt,
            guidance=guidance,
            request_id=request_id,
            sampler=sampler,
            strength=strength,
            init_image_id=init_image_id,
            mask_image_id=mask_image_id,
            loras=loras,
            from_image_id=from_image_id,
        )
        return await _unary(self._connection, self._stub.CreateGeneration, request)

    async def batch_create(
        self,
        requests: generation_service_pb2.CreateGenerationRequest
        | Sequence[generation_service_pb2.CreateGenerationRequest],
        *,
        count: int | None = None,
    ) -> list[generation_resources_pb2.Generation]:
        """See `pingvas.client.Generations.batch_create` (not retried after UNAVAILABLE)."""
        request = batch_request(requests, count)
        response = await _unary(
            self._connection, self._stub.BatchCreateGenerations, request, repeatable=False
        )
        return list(response.generations)

    async def get(self, generation_id: str) -> generation_resources_pb2.Generation:
        request = generation_service_pb2.GetGenerationRequest(generation_id=generation_id)
        return await _unary(self._connection, self._stub.GetGeneration, request)

    def list(
        self, *, page_size: int | None = None, page_token: str = ""
    ) -> AsyncPager[generation_resources_pb2.Generation]:
        async def fetch(token: str) -> Page[generation_resources_pb2.Generation]:
            request = generation_service_pb2.ListGenerationsRequest(
                page_size=page_size or 0, page_token=token
            )
            response = await _unary(self._connection, self._stub.ListGenerations, request)
            return Page(list(response.generations), response.next_page_token)

        return AsyncPager(fetch, page_token)

    async def cancel(self, generation_id: str) -> generation_resources_pb2.Generation:
        request = generation_service_pb2.CancelGenerationRequest(generation_id=generation_id)
        return await _unary(self._connection, self._stub.CancelGeneration, request)

    async def watch(self, generation_id: str, *, after_sequence: int = 0) -> AsyncIterator[Event]:
        """The generation's events through its terminal one, resumed by itself after a dropped
        stream; see `pingvas.client.Generations.watch`."""
        watch = WatchResumption(generation_id, after_sequence, self._connection.retry)
        while True:
            call = self._stub.WatchGeneration(
                watch.request(), metadata=self._connection.metadata, timeout=self._connection.watch_timeout
            )
            try:
                async for response in call:
                    event = watch.seen(response)
                    yield event
                    if event.is_terminal:
                        return
                error = watch.ended_early()
            except grpc.RpcError as raw:
                error = watch.resumable(from_rpc_error(raw))
            finally:
                call.cancel()  # a no-op on an ended call; frees the stream if the caller stops early
            await asyncio.sleep(watch.wait_before_reopening(error))


class AsyncUploads:
    """`client.uploads` of an AsyncClient; see `pingvas.client.Uploads`."""

    def __init__(self, connection: Connection, channel: grpc.aio.Channel) -> None:
        self._connection = connection
        self._stub = generation_service_pb2_grpc.GenerationServiceStub(channel)

    async def create(self, source: bytes | str | os.PathLike[str], content_type: str) -> str:
        """Upload an image and return its upload id; see `pingvas.client.Uploads.create`."""
        data = await asyncio.to_thread(upload_bytes, source)
        request = generation_service_pb2.CreateUploadRequest(content_type=content_type, size_bytes=len(data))
        upload: generation_resources_pb2.Upload = await _unary(
            self._connection, self._stub.CreateUpload, request
        )
        await asyncio.to_thread(self._connection.put_upload, upload.upload_url, data, content_type)
        return upload.id


class AsyncImages:
    """`client.images` of an AsyncClient; see `pingvas.client.Images`."""

    def __init__(self, connection: Connection, channel: grpc.aio.Channel) -> None:
        self._connection = connection
        self._stub = gallery_service_pb2_grpc.GalleryServiceStub(channel)

    def list(
        self,
        *,
        page_size: int | None = None,
        page_token: str = "",
        model: str | None = None,
        board: str | None = None,
        starred_only: bool = False,
        prompt_query: str | None = None,
    ) -> AsyncPager[gallery_resources_pb2.Image]:
        async def fetch(token: str) -> Page[gallery_resources_pb2.Image]:
            request = list_images_request(
                token,
                page_size=page_size,
                model=model,
                board=board,
                starred_only=starred_only,
                prompt_query=prompt_query,
            )
            response = await _unary(self._connection, self._stub.ListImages, request)
            return Page(list(response.images), response.next_page_token)

        return AsyncPager(fetch, page_token)

    async def get(self, image_id: str) -> gallery_resources_pb2.Image:
        request = gallery_service_pb2.GetImageRequest(image_id=image_id)
        return await _unary(self._connection, self._stub.GetImage, request)

    async def delete(self, image_id: str) -> None:
        request = gallery_service_pb2.DeleteImageRequest(image_id=image_id)
        await _unary(self._connection, self._stub.DeleteImage, request)

    async def content(self, image: gallery_resources_pb2.Image) -> bytes:
        return await asyncio.to_thread(self._connection.image_bytes, image.url)


class AsyncClient:
    """The Pingvas API over one `grpc.aio` channel; the same arguments as `pingvas.Client`.
    Make it inside the event loop that uses it."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        api_key: str | None = None,
        access_token: str | None = None,
        secure: bool = False,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        watch_timeout: float = DEFAULT_WATCH_TIMEOUT_SECONDS,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._connection = Connection.of(
            target,
            api_key=api_key,
            access_token=access_token,
            secure=secure,
            timeout=timeout,
            watch_timeout=watch_timeout,
            retry=retry,
        )
        self._channel = self._connection.aio_channel()
        self.generations = AsyncGenerations(self._connection, self._channel)
        self.uploads = AsyncUploads(self._connection, self._channel)
        self.images = AsyncImages(self._connection, self._channel)

    async def generate(
        self,
        prompt: str,
        *,
        model: str | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        seed: int | None = None,
        negative_prompt: str | None = None,
        guidance: float | None = None,
        progress: Callable[[Event], object] | None = None,
    ) -> GenerationResult:
        """See `pingvas.Client.generate`. `progress` may be a plain function or a coroutine
        function; a coroutine it returns is awaited before the next event."""
        generation = await self.generations.create(
            prompt,
            model=model,
            width=width,
            height=height,
            steps=steps,
            seed=seed,
            negative_prompt=negative_prompt,
            guidance=guidance,
        )
        terminal: Event | None = None
        async for event in self.generations.watch(generation.id):
            if progress is not None:
                outcome = progress(event)
                if asyncio.iscoroutine(outcome):
                    await outcome
            terminal = event
        raise_unless_succeeded(generation.id, terminal)
        finished = await self.generations.get(generation.id)
        image = await asyncio.to_thread(self._connection.image_bytes, finished.image_url)
        return GenerationResult(generation=finished, image=image)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _unary(
    connection: Connection,
    method: Callable[..., Awaitable[Response]],
    request: object,
    *,
    repeatable: bool = True,
) -> Response:
    return await call_with_retries_async(
        connection.retry,
        lambda: method(request, metadata=connection.metadata, timeout=connection.timeout),
        repeatable=repeatable,
    )
