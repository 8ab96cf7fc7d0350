"""A generation's lifecycle in one vocabulary: the states its row moves through in PostgreSQL and
the kinds of event that announce each move on its watch stream.

Both are spelled here once; the migrations' CHECK constraint and the contract's `event` oneof use
the same words.
"""

from __future__ import annotations

from enum import StrEnum


class GenerationState(StrEnum):
    """The `generations.state` column. QUEUED and RUNNING are live; the rest are terminal."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


LIVE_STATES = frozenset({GenerationState.QUEUED, GenerationState.RUNNING})
TERMINAL_STATES = frozenset({GenerationState.SUCCEEDED, GenerationState.FAILED, GenerationState.CANCELLED})


class EventKind(StrEnum):
    """Which event a WatchGenerationResponse carries: the name of its `event` oneof field."""

    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_EVENTS


TERMINAL_EVENTS = frozenset({EventKind.SUCCEEDED, EventKind.FAILED, EventKind.CANCELLED})
