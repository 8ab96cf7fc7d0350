"""The Pingvas Python SDK: generations (text-to-image, img2img and inpainting from uploaded
images, batches), their live progress and the gallery, over gRPC.

    import pingvas

    with pingvas.Client("127.0.0.1:8080", api_key="pv_...") as client:
        result = client.generate("a red fox in snow", width=64, height=64, steps=4)

`pingvas.Client` and `pingvas.AsyncClient` are the typed API. The contract's generated messages
and stubs are its subpackages (`pingvas.generation.v1`, `pingvas.gallery.v1`, ...), made by
`pingvas proto generate`; the modules at this level are written by hand.
"""

from pingvas.aio import AsyncClient, AsyncPager
from pingvas.client import Client, Pager
from pingvas.connection import GenerationResult, Page, generation_request
from pingvas.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    GenerationCancelled,
    GenerationFailed,
    InsufficientCredits,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PingvasError,
    RateLimited,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from pingvas.events import Cancelled, Event, Failed, Progress, Queued, Started, Succeeded
from pingvas.retries import RetryPolicy

__all__ = [
    "AsyncClient",
    "AsyncPager",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "Event",
    "Failed",
    "FailedPrecondition",
    "FieldViolation",
    "GenerationCancelled",
    "GenerationFailed",
    "GenerationResult",
    "InsufficientCredits",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "Page",
    "Pager",
    "PermissionDenied",
    "PingvasError",
    "Progress",
    "Queued",
    "RateLimited",
    "ResourceExhausted",
    "RetryPolicy",
    "Started",
    "Succeeded",
    "Unauthenticated",
    "Unavailable",
    "generation_request",
]
