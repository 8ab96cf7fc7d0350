"""Each generation's event log: a capped Redis Stream that late and reconnecting watchers replay,
and one feed of every generation's events that live watching follows.

    events:{generation_id}        STREAM of events, field `e` = a serialized WatchGenerationResponse,
                                  `s` = its sequence number
    events:{generation_id}:seq    the last sequence number handed out
    event-feed                    STREAM of every event appended to any log, newest EVENT_FEED_LENGTH
                                  or so: the generation `g`, the log entry's id `i`, `s` and `e`

Plain pub/sub cannot replay, and a disconnected subscriber would lose messages. Appending is one
script, so sequence numbers are gap-free and ordered like the stream, and the feed holds the same
entries in the same order. The feed is one key however many generations are watched: a blocking
read over thousands of logs would cost Redis milliseconds each time it is re-armed, which is after
every event. After the terminal event a log's keys expire; terminal states also live in
PostgreSQL, from which a watcher rebuilds the terminal event when the log is gone.
"""

from __future__ import annotations

import uuid
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from pingvas.generation.v1 import generation_service_pb2 as pb
from redis.asyncio import Redis

from services.generation.lifecycle import TERMINAL_EVENTS, EventKind

# The feed keeps about this many of the newest events of all generations: minutes of traffic for
# an event hub to read through, while a hub that fell further behind notices the gap in a
# generation's sequence numbers and has its watchers read that generation's log instead.
EVENT_FEED_KEY = "event-feed"
EVENT_FEED_LENGTH = 10_000

# Events one read of a generation's log returns; a longer log takes more reads.
LOG_READ_COUNT = 500

# KEYS: the log, its sequence counter, the feed. ARGV: the event, the log's length, the TTL after a
# terminal event (0 for none), the generation id, the feed's length, '1' to append only to a log
# that holds no event yet, and an event to append first when it holds none ('' for none).
_APPEND = """
local function append(event, ttl)
  local seq = redis.call('INCR', KEYS[2])
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 's', seq, 'e', event)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'g', ARGV[4], 'i', id, 's', seq, 'e', event)
  if ttl > 0 then
    redis.call('EXPIRE', KEYS[1], ttl)
    redis.call('EXPIRE', KEYS[2], ttl)
  end
  return seq
end
local empty = redis.call('EXISTS', KEYS[2]) == 0
if ARGV[6] == '1' and not empty then return 0 end
if ARGV[7] ~= '' and empty then append(ARGV[7], 0) end
return append(ARGV[1], tonumber(ARGV[3]))
"""


@dataclass(frozen=True)
class StoredEvent:
    stream_id: str  # the entry's id in its generation's log
    event: pb.WatchGenerationResponse


@dataclass(frozen=True)
class FeedEntry:
    feed_id: str  # the entry's id in the feed
    generation_id: uuid.UUID
    stored: StoredEvent


def new_event(generation_id: uuid.UUID, **event: object) -> pb.WatchGenerationResponse:
    """An event stamped now; its sequence number is handed out when it is appended."""
    now = Timestamp()
    now.GetCurrentTime()
    return pb.WatchGenerationResponse(generation_id=str(generation_id), time=now, **event)


def event_kind(event: pb.WatchGenerationResponse) -> EventKind | None:
    kind = event.WhichOneof("event")
    return None if kind is None else EventKind(kind)


def is_terminal(event: pb.WatchGenerationResponse) -> bool:
    return event.WhichOneof("event") in TERMINAL_EVENTS


class EventLog:
    def __init__(
        self,
        redis: Redis,
        *,
        max_events: int = 2000,
        ttl_after_terminal_seconds: int = 24 * 3600,
        feed_key: str = EVENT_FEED_KEY,
    ) -> None:
        self.redis = redis
        self.max_events = max_events
        self.ttl_after_terminal_seconds = ttl_after_terminal_seconds
        self.feed_key = feed_key
        self._append = redis.register_script(_APPEND)

    @staticmethod
    def key(generation_id: uuid.UUID) -> str:
        return f"events:{generation_id}"

    @staticmethod
    def decode_entries(entries: Any) -> list[StoredEvent]:
        """A log's entries as XREAD or XRANGE return them."""
        return [StoredEvent(stream_id.decode(), _decode(fields)) for stream_id, fields in entries]

    @staticmethod
    def decode_feed(entries: Any, wanted: Container[uuid.UUID]) -> list[FeedEntry]:
        """The feed's entries as XREAD returns them, those of the `wanted` generations only (the
        others' events are not decoded at all)."""
        decoded = []
        for feed_id, fields in entries:
            generation_id = uuid.UUID(fields[b"g"].decode())
            if generation_id in wanted:
                stored = StoredEvent(fields[b"i"].decode(), _decode(fields))
                decoded.append(FeedEntry(feed_id.decode(), generation_id, stored))
        return decoded

    async def append(
        self,
        generation_id: uuid.UUID,
        event: pb.WatchGenerationResponse,
        *,
        only_first: bool = False,
        after_first: pb.WatchGenerationResponse | None = None,
    ) -> int:
        """Store an event in its log and the feed, and return its sequence number.

        A job's first `queued` and its `started` race: a worker may claim the job between its
        enqueue and the `queued` append. So the first `queued` is appended `only_first` (0 is
        returned when the log already holds an event), and `started` brings an `after_first`
        event (`queued`) that goes first when the log holds none: either way `queued` is first.
        """
        key = self.key(generation_id)
        ttl = self.ttl_after_terminal_seconds if is_terminal(event) else 0
        payload = event.SerializeToString()
        prelude = after_first.SerializeToString() if after_first is not None else b""
        return int(
            await self._append(
                keys=[key, f"{key}:seq", self.feed_key],
                args=[
                    payload,
                    self.max_events,
                    ttl,
                    str(generation_id),
                    EVENT_FEED_LENGTH,
                    "1" if only_first else "0",
                    prelude,
                ],
            )
        )

    async def feed_end(self) -> str:
        """The id of the feed's newest entry, or "0-0" when it has none: where a reader that
        wants only what comes next starts."""
        entries: Any = await self.redis.xrevrange(self.feed_key, count=1)
        return entries[0][0].decode() if entries else "0-0"

    async def read(
        self, generation_id: uuid.UUID, after_stream_id: str, *, block_ms: int | None
    ) -> list[StoredEvent]:
        """Events after `after_stream_id` ("0" for all), waiting up to `block_ms` for the next
        (None returns at once; note that Redis reads BLOCK 0 as "forever")."""
        key = self.key(generation_id)
        response: Any = await self.redis.xread({key: after_stream_id}, block=block_ms, count=LOG_READ_COUNT)
        return [stored for _stream, entries in response or () for stored in self.decode_entries(entries)]

    async def read_all(self, generation_id: uuid.UUID, after_stream_id: str) -> list[StoredEvent]:
        """Every stored event after `after_stream_id`, without waiting."""
        stored: list[StoredEvent] = []
        while True:
            batch = await self.read(generation_id, after_stream_id, block_ms=None)
            stored.extend(batch)
            if len(batch) < LOG_READ_COUNT:  # a short read reached the end: no round trip to see so
                return stored
            after_stream_id = batch[-1].stream_id

    async def last_stream_id(self, generation_id: uuid.UUID) -> str:
        """The id of the log's newest entry, or "0-0" when it has none."""
        entries: Any = await self.redis.xrevrange(self.key(generation_id), count=1)
        return entries[0][0].decode() if entries else "0-0"

    async def last(self, generation_id: uuid.UUID) -> pb.WatchGenerationResponse | None:
        entries: Any = await self.redis.xrevrange(self.key(generation_id), count=1)
        if not entries:
            return None
        _stream_id, fields = entries[0]
        return _decode(fields)


def _decode(fields: Mapping[bytes, bytes]) -> pb.WatchGenerationResponse:
    event = pb.WatchGenerationResponse.FromString(fields[b"e"])
    event.sequence = int(fields[b"s"])
    return event
