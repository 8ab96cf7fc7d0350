from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from PIL import Image

from gpu_inference.inference import (
    BatchStep,
    StepUpdate,
    TextToImageRequest,
    TextToImageResult,
    run_text_to_image_batch,
)
from gpu_inference.registry import LoadedModel


def run_text_to_image(
    model: LoadedModel, request: TextToImageRequest, on_step: Callable[[StepUpdate], None]
) -> TextToImageResult:
    """One job alone, as a batch of one: its step updates as its progress relay gets them."""
    (result,) = run_text_to_image_batch(
        model, [request], lambda batch_step: on_step(batch_step.update_for(0))
    )
    return result


def _request(*, seed: int = 7, steps: int = 4, width: int = 64, height: int = 64) -> TextToImageRequest:
    return TextToImageRequest(
        prompt="a lighthouse at dusk, oil painting",
        negative_prompt="blurry",
        width=width,
        height=height,
        steps=steps,
        seed=seed,
        guidance=7.5,
    )


def test_run_produces_a_png_and_one_preview_per_step(tiny_model: LoadedModel) -> None:
    updates: list[StepUpdate] = []

    result = run_text_to_image(tiny_model, _request(steps=6), updates.append)

    image = Image.open(io.BytesIO(result.png))
    assert image.format == "PNG"
    assert image.size == (64, 64)
    assert result.seed == 7
    assert result.gpu_seconds > 0
    assert [update.step for update in updates] == [1, 2, 3, 4, 5, 6]
    assert {update.total_steps for update in updates} == {6}
    for update in updates:
        preview = Image.open(io.BytesIO(update.preview_jpeg))
        assert preview.format == "JPEG"
        assert preview.size == (64, 64)  # 8x8 latents, upscaled x8 to the 64-pixel minimum side


def test_non_square_sizes_keep_their_aspect(tiny_model: LoadedModel) -> None:
    updates: list[StepUpdate] = []

    result = run_text_to_image(tiny_model, _request(width=96, height=64, steps=2), updates.append)

    assert Image.open(io.BytesIO(result.png)).size == (96, 64)
    assert Image.open(io.BytesIO(updates[-1].preview_jpeg)).size == (96, 64)


def test_same_seed_gives_identical_png_and_another_seed_does_not(tiny_model: LoadedModel) -> None:
    first = run_text_to_image(tiny_model, _request(seed=1234), lambda _: None)
    again = run_text_to_image(tiny_model, _request(seed=1234), lambda _: None)
    other = run_text_to_image(tiny_model, _request(seed=1235), lambda _: None)

    assert first.png == again.png
    assert first.png != other.png


class _Cancelled(Exception):
    pass


def test_an_exception_from_on_step_stops_the_run_and_propagates(tiny_model: LoadedModel) -> None:
    seen: list[int] = []

    def cancel_at_step_three(update: StepUpdate) -> None:
        seen.append(update.step)
        if update.step == 3:
            raise _Cancelled

    with pytest.raises(_Cancelled):
        run_text_to_image(tiny_model, _request(steps=20), cancel_at_step_three)

    assert seen == [1, 2, 3]
    # The pipeline is left usable for the next job.
    assert not tiny_model.run_lock.locked()
    assert run_text_to_image(tiny_model, _request(steps=2), lambda _: None).png


def _pixels(png: bytes) -> list[int]:
    return list(Image.open(io.BytesIO(png)).convert("RGB").tobytes())


def test_a_batch_gives_each_member_the_image_its_seed_gives_alone(tiny_model: LoadedModel) -> None:
    requests = [
        _request(seed=11),
        TextToImageRequest(
            prompt="a red fox", negative_prompt="", width=64, height=64, steps=4, seed=22, guidance=7.5
        ),
        _request(seed=33),
    ]
    steps: list[int] = []

    batch = run_text_to_image_batch(tiny_model, requests, lambda batch_step: steps.append(batch_step.step))
    alone = [run_text_to_image(tiny_model, request, lambda _: None) for request in requests]

    assert steps == [1, 2, 3, 4]
    assert [result.seed for result in batch] == [11, 22, 33]
    for together, single in zip(batch, alone, strict=True):
        # Matrix kernels may sum in another order at another batch size: allow one level of rounding.
        differences = [abs(a - b) for a, b in zip(_pixels(together.png), _pixels(single.png), strict=True)]
        assert max(differences) <= 1
    # ...and the members really are different images.
    assert _pixels(batch[0].png) != _pixels(batch[2].png)
    # Each member is billed its share of the one call.
    assert len({result.gpu_seconds for result in batch}) == 1


def test_a_batch_makes_previews_per_member(tiny_model: LoadedModel) -> None:
    previews: dict[int, list[bytes]] = {0: [], 1: []}

    def on_step(batch_step: BatchStep) -> None:
        for index in previews:
            previews[index].append(batch_step.update_for(index).preview_jpeg)

    run_text_to_image_batch(tiny_model, [_request(seed=1), _request(seed=2)], on_step)

    assert len(previews[0]) == len(previews[1]) == 4
    assert previews[0][-1] != previews[1][-1]
    assert Image.open(io.BytesIO(previews[1][-1])).size == (64, 64)


def test_a_batch_refuses_members_that_cannot_share_a_call(tiny_model: LoadedModel) -> None:
    with pytest.raises(ValueError, match="share size, steps and guidance"):
        run_text_to_image_batch(tiny_model, [_request(steps=4), _request(steps=5)], lambda _: None)
    with pytest.raises(ValueError, match="at least one"):
        run_text_to_image_batch(tiny_model, [], lambda _: None)


@pytest.mark.parametrize(
    ("size", "thumbnail_size"), [((512, 320), (256, 160)), ((300, 900), (85, 256)), ((128, 96), (128, 96))]
)
def test_the_thumbnail_is_webp_with_its_longest_side_at_most_256(
    size: tuple[int, int], thumbnail_size: tuple[int, int]
) -> None:
    result = TextToImageResult(image=Image.new("RGB", size, "teal"), seed=1, gpu_seconds=0.1)
    thumbnail = Image.open(io.BytesIO(result.thumbnail_webp))
    assert (thumbnail.format, thumbnail.size) == ("WEBP", thumbnail_size)
