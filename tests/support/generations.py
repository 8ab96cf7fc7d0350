"""What a generation left behind in the mesh's stores: its row, credit entries, events and image."""

from __future__ import annotations

import time
from typing import Any

from pingvas.generation.v1 import generation_service_pb2 as pb


def wait_for(condition: Any, within: float = 60, message: str = "") -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


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


def images_of(mesh: Any, generation_id: str) -> list[Any]:
    return list((mesh.home / "images").rglob(f"{generation_id}.png"))


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
