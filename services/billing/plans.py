"""Plans: their prices, monthly credits and Lemon Squeezy variants, in one place. A user's plan
also decides the scheduling band their jobs queue in."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import LemonSqueezySettings, PlanSettings

# Strict priority, highest first: the scheduler serves a band only when every band above it is
# empty.
PLANS_BY_PRIORITY = ("enterprise", "studio", "pro", "starter", "free")
PLANS = frozenset(PLANS_BY_PRIORITY)
PAID_PLANS = ("starter", "pro", "studio", "enterprise")
_PRICES_USD = {"free": 0, "starter": 25, "pro": 75, "studio": 150, "enterprise": 0}  # 0: not sold / custom


def parse_plan(value: str) -> str:
    plan = value.strip().lower()
    if plan not in PLANS:
        raise ValueError(f"unknown plan {value!r}; expected one of {', '.join(reversed(PLANS_BY_PRIORITY))}")
    return plan


def rank(plan: str) -> int:
    """Higher is better: free 0 ... enterprise 4."""
    return len(PLANS_BY_PRIORITY) - 1 - PLANS_BY_PRIORITY.index(plan)


@dataclass(frozen=True)
class PlanOffer:
    plan: str
    price_usd: int
    monthly_credits: int
    variant_id: str | None  # None: not sold through checkout (free)


class PlanCatalog:
    def __init__(self, plans: PlanSettings, lemonsqueezy: LemonSqueezySettings) -> None:
        credits = {
            "free": plans.free_grant_credits,
            "starter": plans.starter_monthly_credits,
            "pro": plans.pro_monthly_credits,
            "studio": plans.studio_monthly_credits,
            "enterprise": plans.enterprise_monthly_credits,
        }
        variants = {
            "starter": lemonsqueezy.variant_starter,
            "pro": lemonsqueezy.variant_pro,
            "studio": lemonsqueezy.variant_studio,
            "enterprise": lemonsqueezy.variant_enterprise,
        }
        self._offers = {
            plan: PlanOffer(plan, _PRICES_USD[plan], credits[plan], variants.get(plan))
            for plan in reversed(PLANS_BY_PRIORITY)
        }

    def offers(self) -> list[PlanOffer]:
        """Every plan, cheapest first."""
        return list(self._offers.values())

    def get(self, plan: str) -> PlanOffer:
        return self._offers[plan]

    def by_variant(self, variant_id: str | int | None) -> PlanOffer | None:
        wanted = str(variant_id)
        return next((offer for offer in self._offers.values() if offer.variant_id == wanted), None)
