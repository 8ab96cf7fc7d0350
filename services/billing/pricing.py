"""What a generation costs: GPU seconds at a configurable rate, never less than one credit."""

from __future__ import annotations

import math
from dataclasses import dataclass

_REFERENCE_PIXELS = 512 * 512


@dataclass(frozen=True)
class Pricing:
    credits_per_gpu_second: float
    hold_seconds_per_step: float

    def hold_for(self, *, steps: int, width: int, height: int) -> int:
        """The credits reserved when a generation is accepted. Denoising cost grows with steps
        and pixels; the estimate is deliberately generous because the hold caps the charge."""
        seconds = steps * self.hold_seconds_per_step * (width * height) / _REFERENCE_PIXELS
        return max(1, math.ceil(seconds * self.credits_per_gpu_second))

    def charge_for(self, gpu_seconds: float) -> int:
        """The seed's `duration_seconds x 1`, at the configured rate, with a one-credit minimum."""
        return max(1, math.ceil(gpu_seconds * self.credits_per_gpu_second))
