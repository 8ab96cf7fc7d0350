"""Landing a cancellation where Python 3.11's `asyncio.wait_for` swallows it (see
services/common/cancellation.py): after the awaited work finished, before wait_for resumed.

redis-py runs each command's send under `wait_for`, which wraps it in a task. A task factory
sees that task created inside the target task, and a done callback added before wait_for's own
cancels the target at exactly that moment: no timing, no luck."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Landing:
    """What the target did: whether the cancellation was landed, and the work it started after."""

    cancelled: bool = False
    started_after: list[str] = field(default_factory=list)
    started_again: asyncio.Event = field(default_factory=asyncio.Event)


@contextmanager
def cancel_as_its_next_wrapped_step_finishes(target: asyncio.Task[Any]) -> Iterator[Landing]:
    """Cancel `target` as the next task it starts (such as the one `wait_for` wraps a Redis
    command's send in) finishes, and record what `target` starts after that."""
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    landing = Landing()
    armed = True

    def cancel_target(_: asyncio.Future[Any]) -> None:
        landing.cancelled = True
        target.cancel()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        task = previous(loop, coro, **kwargs) if previous else asyncio.Task(coro, loop=loop, **kwargs)
        nonlocal armed
        if asyncio.current_task(loop) is target:
            if armed:
                armed = False
                task.add_done_callback(cancel_target)
            elif landing.cancelled:
                landing.started_after.append(coro.__qualname__)
                landing.started_again.set()
        return task

    loop.set_task_factory(factory)
    try:
        yield landing
    finally:
        loop.set_task_factory(previous)
