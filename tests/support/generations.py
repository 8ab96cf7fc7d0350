"""What a generation left behind in the mesh's stores: its row, credit entries, events and image."""

from __future__ import annotations

import time
from typing import Any

import httpx
from google.protobuf import json_format
from pingvas.generation.v1 import generation_service_pb2 as pb


def wait_for(condition: Any, within: float = 60, message: str = "") -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def as_events(events: list[dict[str, Any]]) -> list[pb.WatchGenerationResponse]:
    """Events as REST and SSE give them (JSON), as the contract's messages."""
    return [json_format.ParseDict(event, pb.WatchGenerationResponse()) for event in events]


def reached_step(events: list[pb.WatchGenerationResponse], step: int) -> bool:
    """Whether the latest event is the progress of `step` (a job parked after it)."""
    return bool(events) and events[-1].WhichOneof("event") == "progress" and events[-1].progress.step == step


def assert_watch_order(events: list[pb.WatchGenerationResponse], steps: int, replayed: int = 2) -> None:
    """The contract's order for a run of one attempt: queued, started, progress, succeeded.
    The first `replayed` events are the stored log's, one by one; after them a watcher slower
    than the steps may get only the newest of the progress it missed, never without the last
    step. Sequences only increase, and the terminal event's is the log's last (3 + steps)."""
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[:2] == ["queued", "started"] and kinds[-1] == "succeeded", kinds
    assert set(kinds[2:-1]) == {"progress"}, kinds
    assert [e.sequence for e in events[:replayed]] == list(range(1, replayed + 1)), "replayed one by one"
    assert events[-2].progress.step == steps, "the last step's progress is never skipped"
    assert all(e.sequence == 2 + e.progress.step for e in events[2:-1]), "each progress is its step's"
    sequences = [e.sequence for e in events]
    assert sequences == sorted(set(sequences)), "nothing repeated, never out of order"
    assert sequences[-1] == 3 + steps, "the terminal event is the log's last"


def row(mesh: Any, generation_id: str) -> dict[str, Any]:
    return dict(mesh.sql("SELECT * FROM generations WHERE id = %s", generation_id)[0])


def progressed(mesh: Any, generation_id: str, steps: int = 5) -> bool:
    return mesh.redis().xlen(f"events:{generation_id}") >= 2 + steps


def resolutions(mesh: Any, generation_id: str) -> list[str]:
    rows = mesh.sql(
        "SELECT kind FROM credit_entries WHERE reference = %s ORDER BY id", f"generation:{generation_id}"
    )
    return [r["kind"] for r in rows]


def terminal_events(mesh: Any, generation_id: str) -> int:
    return sum(kind in ("succeeded", "failed", "cancelled") for _, kind in event_kinds(mesh, generation_id))


def event_kinds(mesh: Any, generation_id: str) -> list[tuple[str, str]]:
    """(stream entry id, event kind) of each event stored for the generation, oldest first."""
    entries = mesh.redis().xrange(f"events:{generation_id}")
    return [
        (entry_id.decode(), pb.WatchGenerationResponse.FromString(fields[b"e"]).WhichOneof("event"))
        for entry_id, fields in entries
    ]


def images_of(mesh: Any, generation_id: str) -> list[str]:
    """The keys of the generation's PNG in the images bucket (every attempt stores it under the
    same key), for each `images` row that names it: a row never exists without its object."""
    (job,) = mesh.sql("SELECT user_id FROM generations WHERE id = %s", generation_id)
    listed = mesh.s3().list_objects_v2(Bucket="pingvas-studio-images", Prefix=f"{job['user_id']}/")
    stored = {item["Key"] for item in listed.get("Contents", [])}
    rows = mesh.sql("SELECT object_key FROM images WHERE id = %s", generation_id)
    assert all(row["object_key"] in stored for row in rows), "a row names a missing object"
    return [row["object_key"] for row in rows]


def assert_ended_once(mesh: Any, generation_id: str, *, succeeded: bool) -> None:
    """Effectively once: one terminal event, one resolution of the credit hold (a capture on
    success, a release otherwise), and one stored image on success, none otherwise."""
    assert resolutions(mesh, generation_id) == ["hold", "capture" if succeeded else "release"]
    assert terminal_events(mesh, generation_id) == 1
    assert len(images_of(mesh, generation_id)) == (1 if succeeded else 0)


def running_on(mesh: Any, generation_id: str, workers: Any) -> Any:
    """Which of `workers` (anything with a `name`) holds the generation now."""
    worker_id = row(mesh, generation_id)["worker_id"]
    return next(worker for worker in workers if worker.name == worker_id)


def upload(rest: httpx.Client, account: Any, data: bytes, content_type: str = "image/png") -> str:
    """CreateUpload, then the PUT of `data` to its presigned URL; the upload's id."""
    created = rest.post(
        "/api/v1/uploads",
        json={"contentType": content_type, "sizeBytes": len(data)},
        headers=account.headers,
    )
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["name"] == f"users/{account.user_id}/uploads/{body['id']}"
    put = httpx.put(body["uploadUrl"], content=data, headers={"content-type": content_type}, timeout=30)
    assert put.status_code == 200, put.text
    return str(body["id"])
