"""Whether the running task was asked to stop, for loops that run until they are cancelled.

On Python 3.11, `asyncio.wait_for` swallows a cancellation that arrives after its inner future
finished but before it resumed: it returns the result as if the task had never been cancelled
(python/cpython#86296 and #107547; 3.12 rewrote wait_for). redis-py sends every command through
`wait_for`, so a loop that makes Redis calls until it is cancelled can lose its cancellation and
run on forever, and whatever awaits the task (a server's shutdown) waits with it. The task still
counts the request, so such a loop asks `cancellation_requested()` on every round."""

from __future__ import annotations

import asyncio


def cancellation_requested() -> bool:
    """Whether the running task has a cancellation request, delivered or swallowed."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
