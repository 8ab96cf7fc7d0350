"""`pingvas.Client`: the Pingvas API over gRPC, synchronous.

    with pingvas.Client("127.0.0.1:8080", api_key=os.environ["PINGVAS_API_KEY"]) as client:
        result = client.generate("a red fox in snow", width=64, height=64, steps=4)
        Path("fox.png").write_bytes(result.image)

Every call has a deadline (`timeout`), is retried under the client's `RetryPolicy` and raises a
typed `pingvas.PingvasError` on failure. The generated stubs stay reachable for anything the
typed methods do not cover: `pingvas.generation.v1`, `pingvas.gallery.v1`, ...
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
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
from pingvas.retries import RetryPolicy, call_with_retries

Resource = TypeVar("Resource")
Response = TypeVar("Response")


class Pager(Generic[Resource]):
    """A list call's results: iterate it for every item across pages, fetched as needed, or
    call `pages()` for one `Page` at a time."""

    def __init__(self, fetch: Callable[[str], Page[Resource]], page_token: str = "") -> None:
        self._fetch = fetch
        self._page_token = page_token

    def pages(self) -> Iterator[Page[Resource]]:
        token = self._page_token
        while True:
            page = self._fetch(token)
            yield page
            if not page.next_page_token:
                return
            token = page.next_page_token

    def __iter__(self) -> Iterator[Resource]:
        for page in self.pages():
            yield from page.items


class Generations:
    """`client.generations`: create, read, list, cancel and watch the caller's generations."""

    def __init__(self, connection: Connection, channel: grpc.Channel) -> None:
        self._connection = connection
        self._stub = generation_service_pb2_grpc.GenerationServiceStub(channel)

    def create(
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
        """Queue a generation and return it (QUEUED). `request_id` is the idempotency key; the
        SDK makes one when it is not given, so a retried create never makes a second one."""
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
        generation: generation_resources_pb2.Generation = _unary(
            self._connection, self._stub.CreateGeneration, request
        )
        return generation

    def batch_create(
        self,
        requests: generation_service_pb2.CreateGenerationRequest
        | Sequence[generation_service_pb2.CreateGenerationRequest],
        *,
        count: int | None = None,
    ) -> list[generation_resources_pb2.Generation]:
        """Queue 1 to 4 generations at once, all or none, and return them in order: a list of
        requests (`pingvas.generation_request(...)` each), or one request and a `count` of copies
        of it with consecutive seeds (the template's seed, or the server's choice, then +1, ...).

        Raises InsufficientCredits when the credits do not cover them all (nothing is held). A
        batch has no idempotency key, so a call whose reply is lost (UNAVAILABLE) is not retried:
        it may have been made, and `generations.list()` shows whether it was."""
        request = batch_request(requests, count)
        response = _unary(self._connection, self._stub.BatchCreateGenerations, request, repeatable=False)
        return list(response.generations)

    def get(self, generation_id: str) -> generation_resources_pb2.Generation:
        request = generation_service_pb2.GetGenerationRequest(generation_id=generation_id)
        generation: generation_resources_pb2.Generation = _unary(
            self._connection, self._stub.GetGeneration, request
        )
        return generation

    def list(
        self, *, page_size: int | None = None, page_token: str = ""
    ) -> Pager[generation_resources_pb2.Generation]:
        """The caller's generations, newest first."""

        def fetch(token: str) -> Page[generation_resources_pb2.Generation]:
            request = generation_service_pb2.ListGenerationsRequest(
                page_size=page_size or 0, page_token=token
            )
            response = _unary(self._connection, self._stub.ListGenerations, request)
            return Page(list(response.generations), response.next_page_token)

        return Pager(fetch, page_token)

    def cancel(self, generation_id: str) -> generation_resources_pb2.Generation:
        request = generation_service_pb2.CancelGenerationRequest(generation_id=generation_id)
        generation: generation_resources_pb2.Generation = _unary(
            self._connection, self._stub.CancelGeneration, request
        )
        return generation

    def watch(self, generation_id: str, *, after_sequence: int = 0) -> Iterator[Event]:
        """The generation's events after `after_sequence` (0: from its first), through its
        terminal event.

        A stream that drops, passes its deadline or ends early is reopened by itself with
        `after_sequence` set to the last event seen, so no event is repeated or lost; the wait
        before each reopening follows the retry policy, and after `max_attempts` reopenings in a
        row without an event the last error is raised.
        """
        watch = WatchResumption(generation_id, after_sequence, self._connection.retry)
        while True:
            call = self._stub.WatchGeneration(
                watch.request(), metadata=self._connection.metadata, timeout=self._connection.watch_timeout
            )
            try:
                for response in call:
                    event = watch.seen(response)
                    yield event
                    if event.is_terminal:
                        return
                error = watch.ended_early()
            except grpc.RpcError as raw:
                error = watch.resumable(from_rpc_error(raw))
            finally:
                call.cancel()  # a no-op on an ended call; frees the stream if the caller stops early
            time.sleep(watch.wait_before_reopening(error))


class Uploads:
    """`client.uploads`: input images for img2img and inpainting, uploaded for a generation to
    name as its `init_image_id` or `mask_image_id`."""

    def __init__(self, connection: Connection, channel: grpc.Channel) -> None:
        self._connection = connection
        self._stub = generation_service_pb2_grpc.GenerationServiceStub(channel)

    def create(self, source: bytes | str | os.PathLike[str], content_type: str) -> str:
        """Upload an image (its bytes, or a file's path) of `content_type` (`image/png`,
        `image/jpeg` or `image/webp`, at most 10 MB) and return its upload id: CreateUpload,
        then a PUT of the bytes to the presigned URL it hands out. A type or size the API does
        not take raises InvalidArgument naming `content_type` or `size_bytes`; the bytes
        themselves are checked when a generation names the upload."""
        data = upload_bytes(source)
        request = generation_service_pb2.CreateUploadRequest(content_type=content_type, size_bytes=len(data))
        upload: generation_resources_pb2.Upload = _unary(self._connection, self._stub.CreateUpload, request)
        self._connection.put_upload(upload.upload_url, data, content_type)
        return upload.id


class Images:
    """`client.images`: list, read and delete the caller's stored images."""

    def __init__(self, connection: Connection, channel: grpc.Channel) -> None:
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
    ) -> Pager[gallery_resources_pb2.Image]:
        """The caller's images, newest first, optionally filtered."""

        def fetch(token: str) -> Page[gallery_resources_pb2.Image]:
            request = list_images_request(
                token,
                page_size=page_size,
                model=model,
                board=board,
                starred_only=starred_only,
                prompt_query=prompt_query,
            )
            response = _unary(self._connection, self._stub.ListImages, request)
            return Page(list(response.images), response.next_page_token)

        return Pager(fetch, page_token)

    def get(self, image_id: str) -> gallery_resources_pb2.Image:
        request = gallery_service_pb2.GetImageRequest(image_id=image_id)
        image: gallery_resources_pb2.Image = _unary(self._connection, self._stub.GetImage, request)
        return image

    def delete(self, image_id: str) -> None:
        """Delete the image and its stored objects; deleting it again succeeds."""
        _unary(
            self._connection,
            self._stub.DeleteImage,
            gallery_service_pb2.DeleteImageRequest(image_id=image_id),
        )

    def content(self, image: gallery_resources_pb2.Image) -> bytes:
        """The image's PNG bytes, fetched from its presigned URL."""
        return self._connection.image_bytes(image.url)


class Client:
    """The Pingvas API over one gRPC channel. Authenticate with an API key (`pv_...`, from the
    console or `pingvas admin apikeys create`) or an access token; `target` is the gateway's
    `host:port`, with TLS when `secure`."""

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
        self._channel = self._connection.channel()
        self.generations = Generations(self._connection, self._channel)
        self.uploads = Uploads(self._connection, self._channel)
        self.images = Images(self._connection, self._channel)

    def generate(
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
        """Create a generation, follow it to its end (calling `progress` with every event) and
        return it with its PNG. Raises GenerationFailed or GenerationCancelled when it ends
        without an image."""
        generation = self.generations.create(
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
        for event in self.generations.watch(generation.id):
            if progress is not None:
                progress(event)
            terminal = event
        raise_unless_succeeded(generation.id, terminal)
        finished = self.generations.get(generation.id)
        return GenerationResult(generation=finished, image=self._connection.image_bytes(finished.image_url))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _unary(
    connection: Connection, method: Callable[..., Response], request: object, *, repeatable: bool = True
) -> Response:
    return call_with_retries(
        connection.retry,
        lambda: method(request, metadata=connection.metadata, timeout=connection.timeout),
        repeatable=repeatable,
    )
