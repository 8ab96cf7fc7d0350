"""The pure parts of `pingvas generate`: arguments, the SSE watch stream, and error bodies.

The response bodies and stream text below were captured from Envoy 1.40's gRPC-JSON transcoder
(configured by gateway/envoy.py) in front of gRPC servicers answering with rich statuses.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from services.cli.generate import (
    CommandError,
    ExitCode,
    GenerationRequest,
    ProgressDisplay,
    WatchEvent,
    add_arguments,
    error_from_response,
    gateway_url,
    generation_from_response,
    iter_sse_data,
    output_paths,
    parse_lora,
    parse_size,
    parse_watch_event,
    render_progress,
)

# GET /api/v1/generation/{id}/events?afterSequence=5, as the transcoder streams it.
CAPTURED_EVENT_STREAM = (
    'data: {"sequence":"6","generationId":"g1","progress":{"step":3,"totalSteps":4,'
    '"preview":"/9hqcGVn","previewMimeType":"image/jpeg"}}\n'
    "\n"
    'data: {"sequence":"7","generationId":"g1","progress":{"step":4,"totalSteps":4,'
    '"preview":"/9hqcGVn","previewMimeType":"image/jpeg"}}\n'
    "\n"
    'data: {"sequence":"8","generationId":"g1","succeeded":{"imageUrl":'
    '"http://127.0.0.1:18080/api/v1/images/g1?expires=1900000000&signature=abc_DEF-123",'
    '"seed":"42","gpuSeconds":1.25,"creditsCharged":"2"}}\n'
    "\n"
)

# INVALID_ARGUMENT with ErrorInfo and BadRequest details -> HTTP 400.
CAPTURED_BAD_REQUEST = (
    '{"code":3,"message":"generation.width: must be a multiple of 8","details":['
    '{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"INVALID_ARGUMENT",'
    '"domain":"generation.pingvas.dev","metadata":{}},'
    '{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":['
    '{"field":"generation.width","description":"must be a multiple of 8","reason":""}]}]}'
)

# FAILED_PRECONDITION with ErrorInfo INSUFFICIENT_CREDITS -> HTTP 402 (via pingvas-http-status).
CAPTURED_INSUFFICIENT_CREDITS = (
    '{"code":9,"message":"not enough credits: 2 needed, 0 left","details":['
    '{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"INSUFFICIENT_CREDITS",'
    '"domain":"generation.pingvas.dev","metadata":{"balance":"0","required":"2"}}]}'
)

CAPTURED_UNAUTHENTICATED = '{"code":16,"message":"missing bearer token","details":[]}'
CAPTURED_NOT_FOUND = '{"code":5,"message":"generation missing not found","details":[]}'
# The transcoder's own rejection (reject_unknown_query_parameters) is plain text, not JSON.
CAPTURED_UNKNOWN_QUERY_PARAMETER = (
    'Could not find field "foo" in the type "pingvas.gallery.v1.GetImageContentRequest".'
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pingvas generate")
    add_arguments(parser)
    return parser


@pytest.mark.parametrize(
    ("text", "size"),
    [("64x64", (64, 64)), ("512X768", (512, 768)), (" 8x16 ", (8, 16))],
)
def test_size_is_width_by_height(text: str, size: tuple[int, int]) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text", ["64", "64x", "x64", "0x64", "64x0", "-8x8", "64x64x3", "64 x 64", "\uff16\uff14x64"]
)
def test_malformed_sizes_are_rejected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="WIDTHxHEIGHT"):
        parse_size(text)


def test_arguments_parse_into_a_generation_request() -> None:
    args = _parser().parse_args(
        ["a red fox in snow", "--size", "64x64", "--steps", "4", "--seed", "7", "--negative", "blur"]
    )

    assert args.size == (64, 64)
    assert (args.steps, args.seed, args.negative, args.guidance, args.out) == (4, 7, "blur", None, None)


def test_image_to_image_lora_sampler_and_count_arguments() -> None:
    args = _parser().parse_args(
        [
            "a fox, oil painting",
            "--init",
            "fox.png",
            "--strength",
            "0.6",
            "--mask",
            "mask.png",
            "--sampler",
            "dpmpp_2m",
            "--lora",
            "detail:0.8",
            "--lora",
            "tiny-lora:-1.5",
            "--count",
            "4",
        ]
    )

    assert (args.init, args.strength, args.mask, args.sampler) == (
        Path("fox.png"),
        0.6,
        Path("mask.png"),
        "dpmpp_2m",
    )
    assert (args.lora, args.count) == ([("detail", 0.8), ("tiny-lora", -1.5)], 4)
    assert _parser().parse_args(["fox"]).count == 1


@pytest.mark.parametrize(("text", "lora"), [("detail:0.8", ("detail", 0.8)), ("a.b-c:1", ("a.b-c", 1.0))])
def test_lora_is_name_colon_weight(text: str, lora: tuple[str, float]) -> None:
    assert parse_lora(text) == lora


@pytest.mark.parametrize("text", ["detail", "detail:", ":0.8", "detail:heavy", "a b:1", "detail:0.8:1"])
def test_malformed_loras_are_rejected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="NAME:WEIGHT"):
        parse_lora(text)


@pytest.mark.parametrize(
    "argv",
    [
        ["fox", "--steps", "0"],
        ["fox", "--seed", "-1"],
        ["fox", "--size", "big"],
        ["fox", "--count", "0"],
        ["fox", "--count", "5"],
        ["fox", "--strength", "1.5"],
        ["fox", "--strength", "much"],
        ["fox", "--lora", "detail"],
    ],
)
def test_invalid_arguments_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(argv)

    assert exited.value.code == ExitCode.INVALID_INPUT
    assert "error:" in capsys.readouterr().err


def test_request_body_is_camel_case_and_leaves_unset_options_to_the_server() -> None:
    request = GenerationRequest(prompt="fox", width=64, height=64, negative_prompt="blur", seed=0)

    assert request.to_json() == {
        "prompt": "fox",
        "width": 64,
        "height": 64,
        "seed": 0,
        "negativePrompt": "blur",
    }


def test_image_to_image_request_body_names_inputs_sampler_and_loras() -> None:
    request = GenerationRequest(
        prompt="fox",
        sampler="dpmpp_2m",
        strength=0.0,
        init_image_id="u1",
        mask_image_id="u2",
        loras=(("detail", 0.8),),
    )

    assert request.to_json() == {
        "prompt": "fox",
        "sampler": "dpmpp_2m",
        "strength": 0.0,
        "initImageId": "u1",
        "maskImageId": "u2",
        "loras": [{"name": "detail", "weight": 0.8}],
    }


def test_a_batch_names_the_seed_once_so_the_server_counts_up_from_it() -> None:
    body = GenerationRequest(prompt="fox", seed=7).batch_json(3)

    assert body == {
        "requests": [
            {"generation": {"prompt": "fox", "seed": 7}},
            {"generation": {"prompt": "fox"}},
            {"generation": {"prompt": "fox"}},
        ]
    }


def test_several_images_are_written_beside_the_out_name() -> None:
    assert output_paths(Path("out/fox.png"), ["a", "b"]) == [Path("out/fox-1.png"), Path("out/fox-2.png")]
    assert output_paths(Path("fox.png"), ["a"]) == [Path("fox.png")]
    assert output_paths(None, ["a", "b"]) == [Path("a.png"), Path("b.png")]


@pytest.mark.parametrize(
    ("option", "environ", "url"),
    [
        ("http://gw:9000/", {"PINGVAS_GATEWAY_URL": "http://other"}, "http://gw:9000"),
        (
            None,
            {"PINGVAS_GATEWAY_URL": "https://api.pingvas.dev/", "PINGVAS_HTTP_PORT": "1"},
            "https://api.pingvas.dev",
        ),
        (None, {"PINGVAS_HTTP_PORT": "18080"}, "http://127.0.0.1:18080"),
        (None, {}, "http://127.0.0.1:8080"),
    ],
)
def test_gateway_url_precedence(option: str | None, environ: dict[str, str], url: str) -> None:
    assert gateway_url(option, environ) == url


def test_captured_stream_yields_one_payload_per_event() -> None:
    payloads = list(iter_sse_data(CAPTURED_EVENT_STREAM.splitlines()))

    assert [parse_watch_event(payload).sequence for payload in payloads] == [6, 7, 8]


def test_sse_multiline_data_comments_and_unterminated_last_event() -> None:
    lines = [": keep-alive", "event: message", "data: {", 'data:  "a": 1}', "", "data: last"]

    assert list(iter_sse_data(lines)) == ['{\n "a": 1}', "last"]


def test_watch_events_decode_proto3_json() -> None:
    progress, _, succeeded = (
        parse_watch_event(payload) for payload in iter_sse_data(CAPTURED_EVENT_STREAM.splitlines())
    )

    assert progress.kind == "progress" and not progress.is_terminal
    assert (progress.payload["step"], progress.payload["totalSteps"]) == (3, 4)
    assert succeeded.kind == "succeeded" and succeeded.is_terminal
    assert succeeded.payload["imageUrl"].endswith("signature=abc_DEF-123")
    assert succeeded.payload["seed"] == "42"  # int64 travels as a JSON string


def test_queued_event_renders_its_position() -> None:
    event = parse_watch_event('{"sequence":"1","generationId":"g1","queued":{"position":"2"}}')

    assert render_progress(event) == "queued, position 2"


def test_progress_bar_fills_with_steps() -> None:
    event = WatchEvent(sequence=5, kind="progress", payload={"step": 2, "totalSteps": 4})

    assert render_progress(event, bar_width=10) == "[#####.....] 2/4 steps"


@pytest.mark.parametrize("data", ["not json", "[1]", '{"sequence":"1"}', '{"queued":{},"started":{}}'])
def test_unreadable_events_are_reported(data: str) -> None:
    with pytest.raises(CommandError) as raised:
        parse_watch_event(data)

    assert raised.value.exit_code == ExitCode.GENERATION_FAILED


def test_progress_off_a_terminal_logs_phases_not_every_step() -> None:
    stream = io.StringIO()
    display = ProgressDisplay(stream)
    for payload in iter_sse_data(CAPTURED_EVENT_STREAM.splitlines()):
        display.show(parse_watch_event(payload))
    display.finish()

    assert stream.getvalue() == f"{'[' + '#' * 30 + ']'} 4/4 steps\nsucceeded\n"


def test_bad_request_lists_field_violations() -> None:
    error = error_from_response(400, CAPTURED_BAD_REQUEST)

    assert error.message == "invalid request: generation.width: must be a multiple of 8"
    assert error.exit_code == ExitCode.INVALID_INPUT


def test_payment_required_reports_insufficient_credits() -> None:
    error = error_from_response(402, CAPTURED_INSUFFICIENT_CREDITS)

    assert error.message == "insufficient credits: not enough credits: 2 needed, 0 left"
    assert error.exit_code == ExitCode.INSUFFICIENT_CREDITS


def test_insufficient_credits_is_recognised_by_reason_without_the_402() -> None:
    error = error_from_response(400, CAPTURED_INSUFFICIENT_CREDITS)

    assert error.exit_code == ExitCode.INSUFFICIENT_CREDITS


def test_unauthenticated_and_not_found_carry_the_server_message() -> None:
    unauthenticated = error_from_response(401, CAPTURED_UNAUTHENTICATED)
    not_found = error_from_response(404, CAPTURED_NOT_FOUND)

    assert "missing bearer token" in unauthenticated.message
    assert not_found.message == "not found: generation missing not found"
    assert {unauthenticated.exit_code, not_found.exit_code} == {ExitCode.GENERATION_FAILED}


def test_plain_text_gateway_errors_are_shown_verbatim() -> None:
    error = error_from_response(400, CAPTURED_UNKNOWN_QUERY_PARAMETER)

    assert error.message == f"invalid request: {CAPTURED_UNKNOWN_QUERY_PARAMETER}"
    assert error.exit_code == ExitCode.INVALID_INPUT


def test_other_statuses_name_the_http_status() -> None:
    error = error_from_response(503, "upstream connect error or disconnect/reset before headers")

    assert error.message.startswith("the gateway answered HTTP 503: upstream connect error")


def test_create_response_is_the_generation_itself() -> None:
    assert generation_from_response({"id": "gen-1", "state": "GENERATION_STATE_QUEUED"})["id"] == "gen-1"


def test_create_response_without_an_id_is_an_error() -> None:
    with pytest.raises(CommandError):
        generation_from_response({"state": "GENERATION_STATE_QUEUED"})
