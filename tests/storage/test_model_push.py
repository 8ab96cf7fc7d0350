"""A push moves a model's files several at a time (services/generation/model_store.py); one that
fails must not leave the others running behind the error. tests/e2e/test_model_store.py pushes
real models through the mesh's SeaweedFS."""

from __future__ import annotations

import asyncio

import pytest

from services.generation.model_store import all_or_none


async def test_the_first_failure_cancels_the_others_waits_for_them_and_is_raised_as_it_is() -> None:
    waiting = asyncio.Event()
    ended: list[str] = []

    async def slow_upload() -> bool:
        waiting.set()
        try:
            await asyncio.Event().wait()  # never set: only a cancellation ends it
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # an abort has its own round trip to make
            ended.append("cancelled, then cleaned up")
            raise
        return True

    async def failed_upload() -> bool:
        await waiting.wait()
        raise ConnectionResetError("the store hung up")

    with pytest.raises(ConnectionResetError, match="hung up"):
        await all_or_none([slow_upload(), failed_upload()])
    assert ended == ["cancelled, then cleaned up"]


async def test_results_come_in_the_order_given() -> None:
    async def answer(value: int, after: asyncio.Event, then: asyncio.Event) -> int:
        await after.wait()
        then.set()
        return value

    first, second, never_waited = asyncio.Event(), asyncio.Event(), asyncio.Event()
    never_waited.set()
    # The second finishes first; the results still follow the order of the coroutines.
    assert await all_or_none([answer(1, second, first), answer(2, never_waited, second)]) == [1, 2]
