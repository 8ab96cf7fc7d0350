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


# The coroutine redis-py's `send_packed_command` hands to `wait_for`.
REDIS_SEND = "AbstractConnection._send_packed_command"


@contextmanager
def cancel_as_its_next_redis_send_finishes(target: asyncio.Task[Any]) -> Iterator[Landing]:
    """Cancel `target` as the next Redis command it sends has been sent, inside the window where
    `wait_for` swallows the cancellation, and record the tasks `target` starts after that."""
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
            if armed and coro.__qualname__ == REDIS_SEND:
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
