"""Plans and their scheduling bands. The plan decides the band a user's jobs queue in."""

from __future__ import annotations

# Strict priority, highest first: the scheduler serves a band only when every band above it is
# empty.
PLANS_BY_PRIORITY = ("enterprise", "studio", "pro", "starter", "free")
PLANS = frozenset(PLANS_BY_PRIORITY)


def parse_plan(value: str) -> str:
    plan = value.strip().lower()
    if plan not in PLANS:
        raise ValueError(f"unknown plan {value!r}; expected one of {', '.join(reversed(PLANS_BY_PRIORITY))}")
    return plan
