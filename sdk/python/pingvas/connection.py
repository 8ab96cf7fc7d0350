"""What both clients share: where the API is, how a call authenticates, its deadlines and retry
policy, the requests they build from keyword arguments, how a watch resumes, fetching an image's
bytes and putting an upload's."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc

from pingvas.errors import (
    DeadlineExceeded,
    FieldViolation,
    GenerationCancelled,
    GenerationFailed,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PingvasError,
    ResourceExhausted,
    Unavailable,
)
from pingvas.events import Cancelled, Event, Failed, Succeeded, event_from_response
from pingvas.gallery.v1 import gallery_service_pb2
from pingvas.generation.v1 import generation_resources_pb2, generation_service_pb2
from pingvas.retries import RetryPolicy

# The gateway of `pingvas up` on this machine; it serves native gRPC on its one port.
DEFAULT_TARGET = "127.0.0.1:8080"
# A unary call's deadline. The gateway caps a longer one at its own (30 s by default).
DEFAULT_TIMEOUT_SECONDS = 30.0
# One watch stream's deadline; when it passes, the watch resumes on a new stream, so a long
# wait in the queue costs reconnects, never events.
DEFAULT_WATCH_TIMEOUT_SECONDS = 300.0

Resource = TypeVar("Resource")


@dataclass(frozen=True)
class Connection:
    """A client's settings, fixed when it is made."""

    target: str
    bearer: str | None
    secure: bool
    timeout: float
    watch_timeout: float
    retry: RetryPolicy

    @classmethod
    def of(
        cls,
        target: str,
        *,
        api_key: str | None,
        access_token: str | None,
        secure: bool,
        timeout: float,
        watch_timeout: float,
        retry: RetryPolicy | None,
    ) -> Connection:
        if api_key and access_token:
            raise ValueError("pass an api_key or an access_token, not both")
        if timeout <= 0 or watch_timeout <= 0:
            raise ValueError("timeout and watch_timeout must be positive (every call has a deadline)")
        return cls(
            target=target,
            bearer=api_key or access_token,
            secure=secure,
            timeout=timeout,
            watch_timeout=watch_timeout,
            retry=retry or RetryPolicy(),
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """An API key and an access token are both sent as a bearer; the server tells them apart."""
        return (("authorization", f"Bearer {self.bearer}"),) if self.bearer else ()

    def channel(self) -> grpc.Channel:
        if self.secure:
            return grpc.secure_channel(self.target, grpc.ssl_channel_credentials())
        return grpc.insecure_channel(self.target)

    def aio_channel(self) -> grpc.aio.Channel:
        if self.secure:
            return grpc.aio.secure_channel(self.target, grpc.ssl_channel_credentials())
        return grpc.aio.insecure_channel(self.target)

    def image_bytes(self, url: str) -> bytes:
        """The bytes behind an image URL. Presigned URLs authorize themselves, so no bearer is
        sent; a URL relative to the gateway (its signed image route) is resolved against it."""
        if "://" not in url:
            url = f"{'https' if self.secure else 'http'}://{self.target}/{url.lstrip('/')}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                content: bytes = response.read()
                return content
        except urllib.error.HTTPError as error:
            # An image deleted since its URL was made is gone from the bucket at once; an expired
            # presigned URL is refused (403).
            kind = {404: NotFound, 403: PermissionDenied}.get(error.code, Unavailable)
            raise kind(
                f"could not fetch the image: HTTP {error.code}", metadata={"http_status": str(error.code)}
            ) from error
        except (urllib.error.URLError, TimeoutError) as error:
            raise Unavailable(f"could not fetch the image: {error}") from error

    def put_upload(self, url: str, data: bytes, content_type: str) -> None:
        """PUT an upload's bytes to its presigned URL, with the declared content type (the URL's
        signature binds it and the length). Like a fetch, it sends no bearer."""
        request = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout):
                return
        except urllib.error.HTTPError as error:
            # S3 answers 403 to an expired URL or to bytes that are not what was declared.
            kind = PermissionDenied if error.code == 403 else Unavailable
            raise kind(
                f"could not upload the image: HTTP {error.code}", metadata={"http_status": str(error.code)}
            ) from error
        except (urllib.error.URLError, TimeoutError) as error:
            raise Unavailable(f"could not upload the image: {error}") from error


@dataclass(frozen=True)
class Page(Generic[Resource]):
    """One page of a list: its items, and the token of the next page (empty on the last)."""

    items: list[Resource]
    next_page_token: str


@dataclass(frozen=True)
class GenerationResult:
    """What `generate` returns: the finished generation and its image as PNG bytes."""

    generation: generation_resources_pb2.Generation
    image: bytes = field(repr=False)


def list_images_request(
    page_token: str,
    *,
    page_size: int | None,
    model: str | None,
    board: str | None,
    starred_only: bool,
    prompt_query: str | None,
) -> gallery_service_pb2.ListImagesRequest:
    """One page's ListImagesRequest; unset filters match every image."""
    return gallery_service_pb2.ListImagesRequest(
        page_size=page_size or 0,
        page_token=page_token,
        model=model or "",
        board=board or "",
        starred_only=starred_only,
        prompt_query=prompt_query or "",
    )


def generation_request(
    prompt: str,
    *,
    model: str | None = None,
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    seed: int | None = None,
    negative_prompt: str | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
    strength: float | None = None,
    init_image_id: str | None = None,
    mask_image_id: str | None = None,
    loras: Sequence[tuple[str, float]] = (),
    from_image_id: str | None = None,
) -> generation_service_pb2.CreateGenerationRequest:
    """A CreateGenerationRequest without an idempotency key, as an item of
    `generations.batch_create`; the options are those of `generations.create`. Unset options are
    left to the server's documented defaults; `loras` are (name, weight) pairs; `from_image_id`
    starts from a gallery image's parameters. A value a field cannot hold (a negative width)
    raises InvalidArgument naming it, the way the server refuses one out of its range."""
    generation = generation_resources_pb2.Generation(
        prompt=prompt,
        model=model or "",
        negative_prompt=negative_prompt or "",
        sampler=sampler or "",
        init_image_id=init_image_id or "",
        mask_image_id=mask_image_id or "",
        loras=[generation_resources_pb2.LoraWeight(name=name, weight=weight) for name, weight in loras],
    )
    options = {
        "width": width,
        "height": height,
        "steps": steps,
        "seed": seed,
        "guidance": guidance,
        "strength": strength,
    }
    violations = []
    for name, value in options.items():
        if value is None:
            continue
        try:
            setattr(generation, name, value)
        except (TypeError, ValueError) as error:
            # A value the field's type cannot hold (a negative width) never reaches the server:
            # refused here the way the server refuses one out of its range.
            violations.append(FieldViolation(f"generation.{name}", str(error)))
    if violations:
        invalid = InvalidArgument("invalid request", reason="INVALID_ARGUMENT")
        invalid.field_violations = violations
        raise invalid
    return generation_service_pb2.CreateGenerationRequest(
        generation=generation, from_image_id=from_image_id or ""
    )


def create_request(
    prompt: str, *, request_id: str | None, **options: Any
) -> generation_service_pb2.CreateGenerationRequest:
    """`generation_request`'s request with an idempotency key: a new one unless the caller
    brings its own."""
    request = generation_request(prompt, **options)
    request.request_id = request_id or str(uuid.uuid4())
    return request


def batch_request(
    requests: generation_service_pb2.CreateGenerationRequest
    | Sequence[generation_service_pb2.CreateGenerationRequest],
    count: int | None,
) -> generation_service_pb2.BatchCreateGenerationsRequest:
    """A BatchCreateGenerationsRequest of the given requests, or of `count` copies of one. Only
    the first copy keeps the seed: the server gives each item without one the first item's seed
    plus its index, so the copies get consecutive seeds. Sizes out of 1 to 4 are left to the
    server to refuse, naming the field."""
    if isinstance(requests, generation_service_pb2.CreateGenerationRequest):
        template = requests
        copy = generation_service_pb2.CreateGenerationRequest()
        copy.CopyFrom(template)
        copy.generation.ClearField("seed")
        copies = 1 if count is None else count
        items = [template, *[copy] * (copies - 1)] if copies > 0 else []
    else:
        if count is not None:
            raise ValueError("count applies to one template request, not to a list of requests")
        items = list(requests)
    return generation_service_pb2.BatchCreateGenerationsRequest(requests=items)


def upload_bytes(source: bytes | str | os.PathLike[str]) -> bytes:
    """The bytes of an upload given as bytes or as a file's path."""
    if isinstance(source, bytes):
        return source
    with open(source, "rb") as file:
        return file.read()


class WatchResumption:
    """What a watch keeps across the streams it opens for one generation: the last sequence it
    has seen, so that a reopened stream starts right after it (nothing repeated, nothing lost),
    and how many streams in a row have failed without an event, so that it gives up under the
    retry policy instead of reopening forever."""

    # Why a stream may end early and be reopened: the connection dropped or the service restarts
    # (UNAVAILABLE), its deadline passed, or the user's open streams are at their cap for a
    # moment (RESOURCE_EXHAUSTED).
    RESUMABLE = (Unavailable, DeadlineExceeded, ResourceExhausted)

    def __init__(self, generation_id: str, after_sequence: int, policy: RetryPolicy) -> None:
        self.generation_id = generation_id
        self.last_sequence = after_sequence
        self._policy = policy
        self._failures = 0

    def request(self) -> generation_service_pb2.WatchGenerationRequest:
        """The request of the next stream: everything after the last event seen."""
        return generation_service_pb2.WatchGenerationRequest(
            generation_id=self.generation_id, after_sequence=self.last_sequence
        )

    def seen(self, response: generation_service_pb2.WatchGenerationResponse) -> Event:
        self._failures = 0
        self.last_sequence = max(self.last_sequence, response.sequence)
        return event_from_response(response)

    def ended_early(self) -> PingvasError:
        """The error of a stream that closed before the generation's terminal event."""
        return Unavailable("the event stream ended before the generation did")

    def resumable(self, error: PingvasError) -> PingvasError:
        """`error` if reopening the stream may help; raises it otherwise (NOT_FOUND, ...)."""
        if not isinstance(error, self.RESUMABLE):
            raise error
        return error

    def wait_before_reopening(self, error: PingvasError) -> float:
        """Seconds to wait before the next stream, under the retry policy (a passed deadline
        counts as UNAVAILABLE); raises `error` when the policy gives up."""
        self._failures += 1
        retried_as = Unavailable(error.message) if isinstance(error, DeadlineExceeded) else error
        wait = self._policy.delay(retried_as, self._failures)
        if wait is None:
            raise error
        return wait


def raise_unless_succeeded(generation_id: str, terminal: Event | None) -> None:
    """What `generate` raises when its generation's last event is not `Succeeded`."""
    if isinstance(terminal, Failed):
        raise GenerationFailed(
            f"generation {generation_id} failed: {terminal.reason}",
            generation_id=generation_id,
            failure_code=terminal.code,
            incident_id=terminal.incident_id,
        )
    if isinstance(terminal, Cancelled):
        raise GenerationCancelled(f"generation {generation_id} was cancelled", generation_id=generation_id)
    if not isinstance(terminal, Succeeded):
        raise Unavailable(f"the events of generation {generation_id} ended without a result")
