"""`pingvas generate`: draw images through the gateway's REST API and save them as PNGs.

    pingvas generate "a red fox in snow" --size 64x64 --steps 4 --out fox.png
    pingvas generate "a fox, oil painting" --init fox.png --strength 0.6 --count 4 --out oil.png

It speaks only REST/JSON to the gateway, like any third-party client would: log in (unless
PINGVAS_TOKEN is set), upload the input images (`--init`, `--mask`) through CreateUpload and
its presigned PUT, create the generation (BatchCreateGenerations for `--count` above 1), follow
each one's Server-Sent Events with a progress bar on stderr, download the signed image URL, and
print one summary line per image on stdout. A dropped event stream is resumed from the last
sequence number seen, as the contract allows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urljoin

import httpx

from services.common.defaults import DEFAULT_HTTP_PORT
from services.generation.image_formats import sniff_format
from services.generation.lifecycle import EventKind


class ExitCode(IntEnum):
    """The process exit status, one per kind of outcome a script may want to branch on."""

    OK = 0
    GENERATION_FAILED = 1
    INVALID_INPUT = 2
    GATEWAY_UNREACHABLE = 3
    INSUFFICIENT_CREDITS = 4
    INTERRUPTED = 130


DEFAULT_EMAIL = "dev@pingvas.local"
# How often in a row a watch that ends without a terminal event is reopened before giving up.
# Over HTTP/1.1 a server-side stream error looks exactly like that: Envoy cannot send trailers.
# With the backoff below, about half a minute: long enough for `pingvas up` to restart a crashed
# generation service.
MAX_WATCH_RESUMES = 10
# Answers that mean "the service behind the gateway is not there right now" (UNAVAILABLE while
# it restarts, or Envoy finding no upstream): the watch is resumed, not given up.
_RETRYABLE_STATUSES = frozenset({502, 503, 504})
REQUEST_TIMEOUT = httpx.Timeout(30.0)
# A watch may be silent for long while the job waits in the queue; the gateway's idle timeout,
# not the client's, decides when to reset it (and the client then resumes).
WATCH_TIMEOUT = httpx.Timeout(30.0, read=None)

# A batch holds at most this many generations (BatchCreateGenerations).
MAX_COUNT = 4
_LORA_PATTERN = re.compile(r"(?P<name>[^:\s]+):(?P<weight>[-+]?(\d+(\.\d*)?|\.\d+))", re.ASCII)
_SIZE_PATTERN = re.compile(r"(?P<width>\d+)[xX](?P<height>\d+)", re.ASCII)
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
_ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
_INSUFFICIENT_CREDITS_REASON = "INSUFFICIENT_CREDITS"


class WatchUnavailable(Exception):
    """The gateway could not reach the generation service for a watch; try again later."""


class CommandError(Exception):
    """A failure to report on one line of stderr, with the exit status it maps to."""

    def __init__(self, message: str, exit_code: ExitCode) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare `pingvas generate`'s arguments on its (sub)parser."""
    parser.add_argument("prompt", help="what to draw")
    parser.add_argument("--model", help="model name from the models directory (default: the deployment's)")
    parser.add_argument("--steps", type=_positive_int, help="denoising steps (default: 20)")
    parser.add_argument(
        "--size",
        type=parse_size,
        metavar="WIDTHxHEIGHT",
        help="image size in pixels, e.g. 64x64 (default: the model's)",
    )
    parser.add_argument("--seed", type=_non_negative_int, help="random seed, to reproduce an image")
    parser.add_argument("--negative", metavar="TEXT", help="what not to draw")
    parser.add_argument(
        "--guidance", type=float, metavar="F", help="classifier-free guidance scale (default: 7.5)"
    )
    parser.add_argument(
        "--sampler",
        metavar="NAME",
        help="sampler, as InvokeAI names it, e.g. dpmpp_2m (default: the model's)",
    )
    parser.add_argument(
        "--init",
        type=Path,
        metavar="PATH",
        help="image-to-image: start from this PNG, JPEG or WebP (<= 10 MB)",
    )
    parser.add_argument(
        "--strength",
        type=parse_strength,
        metavar="F",
        help="with --init: how much of it is repainted, 0 to 1 (default: 0.75)",
    )
    parser.add_argument(
        "--mask",
        type=Path,
        metavar="PATH",
        help="with --init: inpaint where this mask, of the init image's size, is white",
    )
    parser.add_argument(
        "--lora",
        type=parse_lora,
        action="append",
        metavar="NAME:WEIGHT",
        help="apply a LoRA of the model's family with a weight, e.g. detail:0.8 (repeatable, at most 5)",
    )
    parser.add_argument(
        "--count",
        type=parse_count,
        default=1,
        metavar="N",
        help=f"images to make, 1 to {MAX_COUNT}, with seeds seed, seed+1, ... (default: 1)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help="where to write the PNG; with --count, NAME-1.png, NAME-2.png, ... (default: <generation id>.png)",
    )
    parser.add_argument(
        "--gateway",
        metavar="URL",
        help="gateway base URL (default: $PINGVAS_GATEWAY_URL, else http://127.0.0.1:$PINGVAS_HTTP_PORT, port 8080)",
    )
    parser.add_argument(
        "--email",
        help=f"account for the dev login when PINGVAS_TOKEN is unset (default: $PINGVAS_EMAIL or {DEFAULT_EMAIL})",
    )


def run(args: argparse.Namespace) -> int:
    """Run `pingvas generate`; return the process exit status."""
    base_url = gateway_url(args.gateway, os.environ)
    size: tuple[int, int] | None = args.size
    generation_id: str | None = None
    progress = ProgressDisplay(sys.stderr)
    try:
        if (args.strength is not None or args.mask is not None) and args.init is None:
            raise CommandError(
                "--strength and --mask need --init, the image they apply to", ExitCode.INVALID_INPUT
            )
        with GatewayClient(base_url, token=os.environ.get("PINGVAS_TOKEN") or None) as gateway:
            if gateway.token is None:
                gateway.dev_login(args.email or os.environ.get("PINGVAS_EMAIL") or DEFAULT_EMAIL)
            started_at = time.monotonic()
            request = GenerationRequest(
                prompt=args.prompt,
                model=args.model,
                width=size[0] if size else None,
                height=size[1] if size else None,
                steps=args.steps,
                seed=args.seed,
                negative_prompt=args.negative,
                guidance=args.guidance,
                sampler=args.sampler,
                strength=args.strength,
                init_image_id=gateway.upload(args.init) if args.init else None,
                mask_image_id=gateway.upload(args.mask) if args.mask else None,
                loras=tuple(args.lora or ()),
            )
            if args.count == 1:
                generations = [gateway.create_generation(request)]
            else:
                generations = gateway.create_generations(request, args.count)
            ids = [str(generation["id"]) for generation in generations]
            for generation_id, output in zip(ids, output_paths(args.out, ids), strict=True):
                outcome = _follow(gateway, generation_id, progress)
                progress.finish()
                if outcome.kind != EventKind.SUCCEEDED:
                    raise CommandError(
                        describe_unsuccessful_end(generation_id, outcome), ExitCode.GENERATION_FAILED
                    )
                _write_image(output, gateway.download(str(outcome.payload["imageUrl"])))
                elapsed = time.monotonic() - started_at
                print(
                    f"{generation_id}: wrote {output} in {elapsed:.1f}s "
                    f"(seed {_as_int(outcome.payload.get('seed'))}, "
                    f"{_as_int(outcome.payload.get('creditsCharged'))} credits charged)"
                )
        return ExitCode.OK
    except CommandError as error:
        progress.finish()
        print(f"pingvas: {error.message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        progress.finish()
        still_running = f"; generation {generation_id} goes on server-side" if generation_id else ""
        print(f"pingvas: interrupted{still_running}", file=sys.stderr)
        return ExitCode.INTERRUPTED


@dataclass(frozen=True)
class GenerationRequest:
    """What the user asked for; unset options are left to the server's documented defaults."""

    prompt: str
    model: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    guidance: float | None = None
    sampler: str | None = None
    strength: float | None = None
    init_image_id: str | None = None
    mask_image_id: str | None = None
    loras: tuple[tuple[str, float], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The `Generation` message as proto3 JSON (camelCase), the create call's body."""
        fields: dict[str, Any] = {
            "prompt": self.prompt,
            "model": self.model,
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
            "seed": self.seed,
            "negativePrompt": self.negative_prompt,
            "guidance": self.guidance,
            "sampler": self.sampler,
            "strength": self.strength,
            "initImageId": self.init_image_id,
            "maskImageId": self.mask_image_id,
            "loras": [{"name": name, "weight": weight} for name, weight in self.loras] or None,
        }
        return {name: value for name, value in fields.items() if value is not None}

    def batch_json(self, count: int) -> dict[str, Any]:
        """A BatchCreateGenerations body of `count` copies: only the first names the seed, so the
        server gives the others seed+1, seed+2, ..."""
        first = self.to_json()
        others = {name: value for name, value in first.items() if name != "seed"}
        return {"requests": [{"generation": first}] + [{"generation": others}] * (count - 1)}


@dataclass(frozen=True)
class WatchEvent:
    """One WatchGenerationResponse: its sequence number, which event it carries, and that event."""

    sequence: int
    kind: EventKind
    payload: Mapping[str, Any]

    @property
    def is_terminal(self) -> bool:
        return EventKind(self.kind).is_terminal


class GatewayClient:
    """The few REST calls `pingvas generate` makes, with HTTP errors turned into `CommandError`."""

    def __init__(self, base_url: str, *, token: str | None) -> None:
        self.base_url = base_url
        self.token = token
        self._http = httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT)

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.close()

    def dev_login(self, email: str) -> None:
        body = self._call("POST", "/api/v1/auth/dev-login", json={"email": email})
        self.token = str(body["accessToken"])

    def create_generation(self, request: GenerationRequest) -> Mapping[str, Any]:
        body = self._call("POST", "/api/v1/generation/create", json=request.to_json())
        return generation_from_response(body)

    def create_generations(self, request: GenerationRequest, count: int) -> list[Mapping[str, Any]]:
        body = self._call("POST", "/api/v1/generation/batch-create", json=request.batch_json(count))
        generations = body.get("generations")
        if not isinstance(generations, list) or len(generations) != count:
            raise CommandError(
                "the gateway's batch response does not hold every generation", ExitCode.GENERATION_FAILED
            )
        return [generation_from_response(generation) for generation in generations]

    def upload(self, path: Path) -> str:
        """Upload a local image (CreateUpload, then the PUT to its presigned URL); its upload id."""
        try:
            data = path.read_bytes()
        except OSError as error:
            raise CommandError(f"cannot read {path}: {error.strerror}", ExitCode.INVALID_INPUT) from error
        content_type = sniff_format(data)
        if content_type is None:
            raise CommandError(f"{path} is not a PNG, JPEG or WebP image", ExitCode.INVALID_INPUT)
        upload = self._call(
            "POST", "/api/v1/uploads", json={"contentType": content_type, "sizeBytes": len(data)}
        )
        url = str(upload.get("uploadUrl", ""))
        with _reporting_unreachable(url):
            response = self._http.put(url, content=data, headers={"content-type": content_type})
        if response.status_code != httpx.codes.OK:
            raise CommandError(
                f"uploading {path} failed: HTTP {response.status_code}", ExitCode.GENERATION_FAILED
            )
        return str(upload["id"])

    def watch_generation(self, generation_id: str, *, after_sequence: int) -> Iterator[WatchEvent]:
        """The generation's events after `after_sequence`, until the server ends the stream."""
        params = {"afterSequence": str(after_sequence)} if after_sequence else None
        with (
            _reporting_unreachable(self.base_url),
            self._http.stream(
                "GET",
                f"/api/v1/generation/{generation_id}/events",
                params=params,
                headers={**self._auth_headers(), "accept": "text/event-stream"},
                timeout=WATCH_TIMEOUT,
            ) as response,
        ):
            if response.status_code in _RETRYABLE_STATUSES:
                raise WatchUnavailable
            if response.status_code != httpx.codes.OK:
                response.read()
                raise error_from_response(response.status_code, response.text)
            for data in iter_sse_data(response.iter_lines()):
                yield parse_watch_event(data)

    def download(self, url: str) -> bytes:
        """Fetch an image URL (presigned S3, or the gateway's signed one); it authorizes itself,
        so no bearer token is sent."""
        absolute_url = urljoin(self.base_url + "/", url)
        with _reporting_unreachable(absolute_url):
            response = self._http.get(absolute_url)
        if response.status_code != httpx.codes.OK:
            raise error_from_response(response.status_code, response.text)
        return response.content

    def _call(self, method: str, path: str, *, json: Mapping[str, Any]) -> Mapping[str, Any]:
        with _reporting_unreachable(self.base_url):
            response = self._http.request(method, path, json=json, headers=self._auth_headers())
        if response.status_code != httpx.codes.OK:
            raise error_from_response(response.status_code, response.text)
        try:
            body = response.json()
        except ValueError as error:
            raise CommandError(
                f"the gateway sent a response that is not JSON: {error}", ExitCode.GENERATION_FAILED
            ) from error
        if not isinstance(body, dict):
            raise CommandError("the gateway sent an unexpected JSON response", ExitCode.GENERATION_FAILED)
        return body

    def _auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}


@contextmanager
def _reporting_unreachable(url: str) -> Iterator[None]:
    """Turn "nothing listens there" into the one message that tells the user what to do."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout) as error:
        raise CommandError(
            f"cannot reach the gateway at {url} — is `pingvas up` running?", ExitCode.GATEWAY_UNREACHABLE
        ) from error


class ProgressDisplay:
    """A one-line progress bar on a terminal, redrawn in place; plain lines when not a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._interactive = stream.isatty()
        self._drawn_width = 0
        self._last_line = ""

    def show(self, event: WatchEvent) -> None:
        line = render_progress(event)
        if line == self._last_line:
            return
        self._last_line = line
        if self._interactive:
            padding = " " * max(0, self._drawn_width - len(line))
            self._stream.write(f"\r{line}{padding}")
            self._drawn_width = len(line)
        elif event.kind != EventKind.PROGRESS or _as_int(event.payload.get("step")) == _as_int(
            event.payload.get("totalSteps")
        ):
            # Logs get the phase changes and the last step, not a line per step.
            self._stream.write(f"{line}\n")
        self._stream.flush()

    def finish(self) -> None:
        """End the redrawn line, so that what follows starts on a fresh one."""
        if self._interactive and self._drawn_width:
            self._stream.write("\n")
            self._stream.flush()
        self._drawn_width = 0


def gateway_url(option: str | None, environ: Mapping[str, str]) -> str:
    """The gateway's base URL: --gateway, else $PINGVAS_GATEWAY_URL, else the local `pingvas up` port."""
    url = option or environ.get("PINGVAS_GATEWAY_URL")
    if not url:
        url = f"http://127.0.0.1:{environ.get('PINGVAS_HTTP_PORT') or DEFAULT_HTTP_PORT}"
    return url.rstrip("/")


def parse_size(text: str) -> tuple[int, int]:
    """`WIDTHxHEIGHT` (e.g. `512x768`) as a pair of positive integers."""
    match = _SIZE_PATTERN.fullmatch(text.strip())
    if match is None or int(match["width"]) == 0 or int(match["height"]) == 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: expected WIDTHxHEIGHT, e.g. 64x64")
    return int(match["width"]), int(match["height"])


def parse_strength(text: str) -> float:
    """A strength between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"invalid strength {text!r}: expected a number from 0 to 1")
    return value


def parse_lora(text: str) -> tuple[str, float]:
    """`NAME:WEIGHT` (e.g. `detail:0.8`) as a LoRA's name and weight."""
    match = _LORA_PATTERN.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"invalid LoRA {text!r}: expected NAME:WEIGHT, e.g. detail:0.8")
    return match["name"], float(match["weight"])


def parse_count(text: str) -> int:
    """How many images, 1 to MAX_COUNT."""
    value = _positive_int(text)
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: at most {MAX_COUNT} images per call")
    return value


def output_paths(out: Path | None, generation_ids: list[str]) -> list[Path]:
    """Where each image goes: `out` for one image, `out`'s stem with -1, -2, ... for several,
    `<generation id>.png` when `out` is unset."""
    if out is None:
        return [Path(f"{generation_id}.png") for generation_id in generation_ids]
    if len(generation_ids) == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{index}{out.suffix}") for index in range(1, len(generation_ids) + 1)]


def iter_sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The data of each Server-Sent Event in `lines` (without line terminators).

    Follows the SSE format: `data:` lines (one optional space after the colon) accumulate until a
    blank line ends the event; comments (`:`) and other fields (`event:`, `id:`) are skipped.
    """
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value.removeprefix(" "))
    if data:
        yield "\n".join(data)


def parse_watch_event(data: str) -> WatchEvent:
    """One SSE data payload of the watch stream (a WatchGenerationResponse as JSON)."""
    try:
        message = json.loads(data)
    except ValueError as error:
        raise CommandError(
            f"unreadable event from the gateway: {error}", ExitCode.GENERATION_FAILED
        ) from error
    if not isinstance(message, dict):
        raise CommandError("unreadable event from the gateway: not a JSON object", ExitCode.GENERATION_FAILED)
    kinds = [kind for kind in EventKind if kind in message]
    if len(kinds) != 1:
        raise CommandError(f"unexpected event from the gateway: {data[:200]}", ExitCode.GENERATION_FAILED)
    payload = message[kinds[0]]
    return WatchEvent(
        sequence=_as_int(message.get("sequence")),
        kind=kinds[0],
        payload=payload if isinstance(payload, dict) else {},
    )


def generation_from_response(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The Generation a create response carries (CreateGeneration returns the resource itself)."""
    generation = body
    if not isinstance(generation, dict) or not generation.get("id"):
        raise CommandError(
            "the gateway's create response carries no generation id", ExitCode.GENERATION_FAILED
        )
    return generation


def error_from_response(status_code: int, body: str) -> CommandError:
    """A `CommandError` for an HTTP error, from the transcoder's google.rpc.Status JSON if any.

    Errors the gateway itself raises (unknown path, malformed JSON) come as plain text instead.
    """
    message, reason, violations = _parse_status_body(body)
    if status_code == httpx.codes.PAYMENT_REQUIRED or reason == _INSUFFICIENT_CREDITS_REASON:
        return CommandError(f"insufficient credits: {message}", ExitCode.INSUFFICIENT_CREDITS)
    if status_code == httpx.codes.BAD_REQUEST:
        if violations:
            details = "; ".join(f"{field}: {description}" for field, description in violations)
            return CommandError(f"invalid request: {details}", ExitCode.INVALID_INPUT)
        return CommandError(f"invalid request: {message}", ExitCode.INVALID_INPUT)
    if status_code == httpx.codes.UNAUTHORIZED:
        return CommandError(
            f"not signed in: {message} (is PINGVAS_TOKEN current?)", ExitCode.GENERATION_FAILED
        )
    if status_code == httpx.codes.FORBIDDEN:
        return CommandError(f"not allowed: {message}", ExitCode.GENERATION_FAILED)
    if status_code == httpx.codes.NOT_FOUND:
        return CommandError(f"not found: {message}", ExitCode.GENERATION_FAILED)
    return CommandError(f"the gateway answered HTTP {status_code}: {message}", ExitCode.GENERATION_FAILED)


def describe_unsuccessful_end(generation_id: str, event: WatchEvent) -> str:
    """The one-line reason a generation ended with `event` rather than an image."""
    if event.kind == EventKind.FAILED:
        return f"generation {generation_id} failed: {event.payload.get('reason') or 'no reason given'}"
    if event.kind == EventKind.CANCELLED:
        return f"generation {generation_id} was cancelled"
    return f"generation {generation_id} ended without a result ({event.kind})"


def render_progress(event: WatchEvent, *, bar_width: int = 30) -> str:
    """The progress line for the latest event."""
    payload = event.payload
    if event.kind == EventKind.QUEUED:
        return f"queued, position {_as_int(payload.get('position'))}"
    if event.kind == EventKind.STARTED:
        attempt = _as_int(payload.get("attempt"))
        return "started" if attempt <= 1 else f"started (attempt {attempt})"
    if event.kind == EventKind.PROGRESS:
        step, total = _as_int(payload.get("step")), _as_int(payload.get("totalSteps"))
        filled = bar_width * min(step, total) // total if total > 0 else 0
        return f"[{'#' * filled}{'.' * (bar_width - filled)}] {step}/{total} steps"
    return event.kind


def _follow(gateway: GatewayClient, generation_id: str, progress: ProgressDisplay) -> WatchEvent:
    """Watch until a terminal event, resuming after the last sequence seen if the stream drops
    or the generation service is unavailable (UNAVAILABLE, HTTP 503, while it restarts)."""
    last_sequence = 0
    resumes = 0
    while True:
        try:
            for event in gateway.watch_generation(generation_id, after_sequence=last_sequence):
                last_sequence = max(last_sequence, event.sequence)
                resumes = 0
                progress.show(event)
                if event.is_terminal:
                    return event
        except (httpx.ReadError, httpx.RemoteProtocolError, WatchUnavailable):
            pass  # the connection dropped mid-stream or the service restarts: resume below
        resumes += 1
        if resumes > MAX_WATCH_RESUMES:
            raise CommandError(
                f"lost the event stream of generation {generation_id}; it may still finish server-side",
                ExitCode.GENERATION_FAILED,
            )
        time.sleep(min(0.25 * 2**resumes, 5.0))


def _parse_status_body(body: str) -> tuple[str, str | None, list[tuple[str, str]]]:
    """(message, ErrorInfo reason, BadRequest field violations) from a google.rpc.Status JSON body."""
    try:
        status = json.loads(body)
    except ValueError:
        status = None
    if not isinstance(status, dict):
        return body.strip() or "no details", None, []
    reason: str | None = None
    violations: list[tuple[str, str]] = []
    for detail in status.get("details") or []:
        if not isinstance(detail, dict):
            continue
        if detail.get("@type") == _ERROR_INFO_TYPE:
            reason = detail.get("reason") or reason
        elif detail.get("@type") == _BAD_REQUEST_TYPE:
            violations.extend(
                (str(violation.get("field", "")), str(violation.get("description", "")))
                for violation in detail.get("fieldViolations") or []
                if isinstance(violation, dict)
            )
    return str(status.get("message") or "no details"), reason, violations


def _write_image(path: Path, image: bytes) -> None:
    try:
        path.write_bytes(image)
    except OSError as error:
        raise CommandError(f"cannot write {path}: {error.strerror}", ExitCode.GENERATION_FAILED) from error


def _as_int(value: object) -> int:
    """An int from proto3 JSON, where 64-bit integers arrive as strings."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | str):
        try:
            return int(value)
        except ValueError:
            return 0
    return 0


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value
