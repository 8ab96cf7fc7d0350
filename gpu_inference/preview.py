"""Cheap per-step previews: a linear projection of the latents to RGB, never a VAE decode.

A Stable Diffusion latent pixel stands for an 8x8 image patch and its four channels correlate
strongly with the patch's average colour, so a 4x3 matrix (plus a bias) fitted by least squares
against VAE-decoded images gives a recognisable thumbnail for the cost of one small matmul. Flux's
VAE has 16 channels, so a 16x3 matrix. A VAE decode per step would cost about as much as a
denoising step.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass

import torch
from PIL import Image


@dataclass(frozen=True)
class _LatentProjection:
    factors: tuple[tuple[float, float, float], ...]  # One (R, G, B) row per latent channel.
    bias: tuple[float, float, float]


# Community least-squares fits of (VAE-decoded RGB in [-1, 1]) on (scaled latents), as used by the
# well-known UIs' "latent2rgb" previews. SD1.5 and SD2 share the SD1.5 VAE; SDXL retrained its VAE,
# hence different factors and a colour bias. Flux's fit is of its 16-channel latents as the
# transformer sees them (shifted and scaled, `(z - shift) * scale`), as diffusers' loop holds them.
_PROJECTIONS: dict[str, _LatentProjection] = {
    "sd15": _LatentProjection(
        factors=(
            (0.3444, 0.1385, 0.0670),
            (0.1247, 0.4027, 0.1494),
            (-0.3192, 0.2513, 0.2103),
            (-0.1307, -0.1874, -0.7445),
        ),
        bias=(0.0, 0.0, 0.0),
    ),
    "sdxl": _LatentProjection(
        factors=(
            (0.3651, 0.4232, 0.4341),
            (-0.2533, -0.0042, 0.1068),
            (0.1076, 0.1111, -0.0362),
            (-0.3165, -0.2492, -0.2188),
        ),
        bias=(0.1084, -0.0175, -0.0011),
    ),
    "flux": _LatentProjection(
        factors=(
            (-0.0346, 0.0244, 0.0681),
            (0.0034, 0.0210, 0.0687),
            (0.0275, -0.0668, -0.0433),
            (-0.0174, 0.0160, 0.0617),
            (0.0859, 0.0721, 0.0329),
            (0.0004, 0.0383, 0.0115),
            (0.0405, 0.0861, 0.0915),
            (-0.0236, -0.0185, -0.0259),
            (-0.0245, 0.0250, 0.1180),
            (0.1008, 0.0755, -0.0421),
            (-0.0515, 0.0201, 0.0011),
            (0.0428, -0.0012, -0.0036),
            (0.0817, 0.0765, 0.0749),
            (-0.1264, -0.0522, -0.1103),
            (-0.0280, -0.0881, -0.0499),
            (-0.1262, -0.0982, -0.0778),
        ),
        bias=(-0.0329, -0.0718, -0.0851),
    ),
}

FLUX_VAE_SCALE_FACTOR = 8  # Image pixels per latent pixel, each way, in FLUX.1's VAE.


def unpack_flux_latents(latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Flux's packed latents `(batch, tokens, channels * 4)`, one token per 2x2 patch of latent
    pixels, as `(batch, channels, height / 8, width / 8)`: a view, no copy (as diffusers'
    `FluxPipeline._unpack_latents`, which decodes them the same way)."""
    batch, tokens, packed = latents.shape
    rows, columns = height // (FLUX_VAE_SCALE_FACTOR * 2), width // (FLUX_VAE_SCALE_FACTOR * 2)
    if rows * columns != tokens or packed % 4:
        raise ValueError(f"packed latents {tuple(latents.shape)} do not fit a {width}x{height} image")
    patches = latents.view(batch, rows, columns, packed // 4, 2, 2)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(batch, packed // 4, rows * 2, columns * 2)


class PreviewFrame:
    """One latent's preview on its way to the host, without stalling the denoising loop.

    The projection runs on the latents' device, and on CUDA the few uint8 pixels are copied into
    pinned host memory asynchronously, behind a recorded event. `jpeg()` waits for that event and
    encodes: called from another thread, the GPU never waits for a preview (a synchronous copy
    per step would drain the launch queue every step, and with CUDA graphs that is a large share
    of a step).
    """

    def __init__(self, latents: torch.Tensor, family: str) -> None:
        pixels = _project(latents, family)
        self._ready: torch.cuda.Event | None = None
        if pixels.is_cuda:
            self._pixels = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
            self._pixels.copy_(pixels, non_blocking=True)
            self._ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self._ready.record()
        else:
            self._pixels = pixels

    def jpeg(self, *, min_side: int = 64, quality: int = 70) -> tuple[bytes, int, int]:
        """`(jpeg_bytes, width, height)`, upscaled by an integer factor with nearest-neighbour
        (sharp, honest latent pixels; no smoothing cost) until the smaller side is at least
        `min_side`."""
        if self._ready is not None:
            self._ready.synchronize()
        image = Image.fromarray(self._pixels.numpy())  # uint8 (height, width, 3) is RGB.
        scale = max(1, math.ceil(min_side / min(image.width, image.height)))
        if scale > 1:
            image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue(), image.width, image.height


@functools.cache
def _projection_tensors(family: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The projection's factors and bias on `device`, made once: a host-to-device copy per step
    would cost a synchronisation per step."""
    projection = _PROJECTIONS[family]
    factors = torch.tensor(projection.factors, dtype=torch.float32, device=device)
    bias = torch.tensor(projection.bias, dtype=torch.float32, device=device)
    return factors, bias


def _project(latents: torch.Tensor, family: str) -> torch.Tensor:
    """The first latent of the batch as uint8 RGB pixels `(height, width, 3)`, on its device."""
    projection = _PROJECTIONS.get(family)
    if projection is None:
        raise ValueError(f"no latent preview projection for model family {family!r}")
    if latents.ndim != 4:
        raise ValueError(
            f"expected latents shaped (batch, channels, height, width), got {tuple(latents.shape)}"
        )
    channels = latents.shape[1]
    if channels != len(projection.factors):
        raise ValueError(f"{family} previews need {len(projection.factors)} latent channels, got {channels}")
    # In float32 on the latents' own device (fp16 latents are fine, the matmul is tiny), so only
    # 3 small uint8 channels cross to the host.
    factors, bias = _projection_tensors(family, latents.device)
    rgb = torch.einsum("chw,cr->hwr", latents[0].detach().float(), factors) + bias
    return ((rgb + 1.0) * 127.5).clamp(0.0, 255.0).round().to(torch.uint8)
