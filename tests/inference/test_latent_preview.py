from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from gpu_inference.preview import PreviewFrame


def test_preview_is_a_nearest_upscaled_jpeg_of_the_first_latent() -> None:
    latents = torch.zeros(2, 4, 8, 12)
    latents[1] = 5.0  # The second batch item must not leak into the preview.

    jpeg, width, height = PreviewFrame(latents, "sd15").jpeg()

    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG"
    assert (width, height) == image.size == (96, 64)
    # Zero latents with SD1.5's zero bias project to mid grey.
    red, green, blue = _rgb_at(jpeg, 48, 32)
    assert all(abs(channel - 128) <= 3 for channel in (red, green, blue))


def test_projection_follows_the_family_factors() -> None:
    # SD1.5's fourth latent channel weighs strongly negative on blue, so a negative value reads blue.
    latents = torch.zeros(1, 4, 8, 8)
    latents[0, 3] = -1.5

    jpeg, _, _ = PreviewFrame(latents, "sd15").jpeg(min_side=8)

    red, _, blue = _rgb_at(jpeg, 4, 4)
    assert blue > 230
    assert red < blue


def test_sdxl_previews_include_its_colour_bias() -> None:
    jpeg, width, height = PreviewFrame(torch.zeros(1, 4, 16, 16), "sdxl").jpeg(min_side=16)

    red, _, _ = _rgb_at(jpeg, 8, 8)
    assert (width, height) == (16, 16)
    assert red > 135  # 0.1084 red bias lifts grey toward red.


def test_flux_previews_project_its_16_channels() -> None:
    latents = torch.zeros(1, 16, 8, 8)
    # Flux's 10th channel weighs most on red, least on blue.
    latents[0, 9] = 3.0

    jpeg, width, height = PreviewFrame(latents, "flux").jpeg(min_side=8)

    red, green, blue = _rgb_at(jpeg, 4, 4)
    assert (width, height) == (8, 8)
    assert red > green > blue


def test_rejects_unknown_families_and_channel_counts() -> None:
    with pytest.raises(ValueError, match="family"):
        PreviewFrame(torch.zeros(1, 16, 8, 8), "sd3")
    with pytest.raises(ValueError, match="channels"):
        PreviewFrame(torch.zeros(1, 16, 8, 8), "sd15")
    with pytest.raises(ValueError, match="flux previews need 16 latent channels"):
        PreviewFrame(torch.zeros(1, 4, 8, 8), "flux")


def _rgb_at(jpeg: bytes, x: int, y: int) -> tuple[int, int, int]:
    pixel = Image.open(io.BytesIO(jpeg)).convert("RGB").getpixel((x, y))
    assert isinstance(pixel, tuple)
    red, green, blue = (int(channel) for channel in pixel)
    return red, green, blue
