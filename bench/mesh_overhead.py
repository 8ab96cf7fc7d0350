"""How much the mesh adds to a generation, measured side by side in one run.

    python bench/mesh_overhead.py [-n 20] [--steps 20] [--size 64] [--gateway URL | --start [--fsync-cost]]
    python bench/mesh_overhead.py --tracing [--calibrate | --traces-sampler NAME] [-n 20] [--rounds 1] [--segments 4]
        [--steps 20] [--size 64]

For N generations of the tiny model (64x64, 20 steps by default) it reports:

- end-to-end wall time through the running mesh (REST create -> SSE stream -> terminal event ->
  PNG downloaded through the gateway) divided by a bare diffusers pipeline call with the same
  model and settings, timed in this process, the two taking turns one call at a time
  (target <= 1.10), and the fixed cost: the median of each generation less the bare call
  beside it (target <= 25 ms);
- latency from submitting the create request to the first stream event, p50 and p99
  (target p99 <= 50 ms);
- with `--start`, the store's cost per image as the worker logs it (encoding the PNG and its
  WebP thumbnail, uploading both to S3, recording the success with its image row), medians. The
  worker stores while its GPU runs the next job, so this is not on the GPU's path;
- where the time goes, hop by hop (medians): the create call; create to `started` (the claim and
  the move to RUNNING); `started` to the first `progress` (pipeline set-up and the first step);
  first to last `progress` (denoising); last `progress` to the terminal event (VAE decode, PNG,
  store, the fenced finish); the terminal event reaching the client; the PNG download. Hops
  that end in a server event use the event's `time`, on the same clock as the client's. Beside
  the three hops that run the pipeline, the bare call's phase that does the same work, timed
  by a step callback that notes when each step ended: call to the first step's end, first to
  last step (so the denoising's cost a step in the mesh over bare is printed too), last step to
  the image. Three runs of -n 20: set-up and first step 22.1, 22.0 and 24.3 ms against bare's
  18.1, 18.3 and 20.6 (25.7 against 19.6 in a run while each run built its pipeline); denoising
  +0.49, +0.46 and +0.76 ms a step (each step's progress event crosses the worker, Redis, the
  generation service, Envoy and the client while the next step runs); last step to terminal
  19.7, 19.7 and 22.5 against 5.6, 5.6 and 6.2 (the PNG, the store, the fenced finish).

Generations run one at a time so that the mesh, not a queue, is measured, and each beside a
bare call so that both see the same machine. With `--start` the benchmark brings up its own
mesh (`pingvas up` in a temporary PINGVAS_HOME) and stops it after.
PostgreSQL runs with fsync on, as `pingvas up` runs it; `--fsync-cost` also runs the same
generations on a second mesh with fsync off (PINGVAS_POSTGRES_FSYNC=off, which production
refuses) and prints what durability costs, create call and end to end.

`--tracing` measures what OpenTelemetry costs instead: CPU seconds per generation summed over
every process of a mesh (psutil, the supervisor's whole process tree: PostgreSQL, Redis,
SeaweedFS, the services, the worker, Envoy), not wall time. Two meshes run side by side, one with
tracing off and one exporting traces and metrics (Envoy's and every process's) to an OTLP/gRPC
receiver in this process, which counts and drops them; they take turns, one generation at a
time, so both see the same machine. Each round (`--rounds`) starts a fresh pair, the two taking
turns to start first, and measures `--segments` times -n generations per mesh, each segment with
fresh workers; the ratio on / off is printed per round and over all rounds (target <= 1.03). Use
an even number of rounds.
The worker's pipeline thread (each worker's busiest) is two thirds of the mesh's CPU and most of
its noise: the same denoising took 300 to 460 ms of CPU from one generation to the next on one
worker as the host's other tenants came and went, and with tracing off in both meshes
(`--calibrate`) two runs' rounds came out 0.983 and 1.021, 0.981 and 1.016. So the bench also
prints the ratio with that thread counted once, tracing off: (all off + (the rest on - the rest
off)) / all off. Tracing does no work on that thread but a list append a step (the denoise span's
step events are added afterwards, on the event loop: `gpu_inference.worker.StepEvents`), yet in
three runs the traced mesh's thread spent 2.9 to 4.4 ms more per generation, in a fourth
10.4 ms less, and in the three runs after the worker's steps became one span each 2.8 to 5.1 ms
less (-1.1 and 0.0 ms calibrating): its noise cannot be told from a cost of its own, so the
target is for the all-threads ratio. Those three runs of 2 rounds of 6 x 16: all threads 1.010,
1.014 and 1.007; pipeline thread once 1.018, 1.018 and 1.015 (34 spans a generation before,
25 since).
`--traces-sampler always_off` gives the traced mesh a standard sampler that records nothing:
what the instrumentations cost on their own (their wrappers, unrecorded spans, attaching and
detaching contexts; Envoy still exports its two spans a generation). In one run of 2 rounds of
6 x 16, everything but the pipeline thread spent 7.2 ms more a generation (pipeline thread once
1.011; all threads 0.997), about half of what full tracing added there then (34 spans).
It is not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from benchmesh import (
    REPO_ROOT,
    BenchMesh,
    add_models_dir_argument,
    cpu_seconds_by_process,
    cpu_seconds_since,
    own_mesh,
    percentile,
    processes_of,
)

# The one account every generation of this bench is made by.
BENCH_EMAIL = "bench@pingvas.local"
# What every generation of this bench asks for, through the mesh and bare alike.
MODEL = "tiny-sd"
PROMPT = "a red fox in snow"

HOPS = (
    "create call",
    "create -> started",
    "started -> first progress",
    "first -> last progress",
    "last progress -> terminal",
    "terminal -> client",
    "PNG download",
)


def event_time(event: dict[str, object]) -> float:
    """An event's server time (RFC 3339, up to nanoseconds) as a Unix timestamp."""
    stamp = str(event["time"]).removesuffix("Z")
    whole, _, fraction = stamp.partition(".")
    return datetime.fromisoformat(f"{whole}.{(fraction or '0')[:6]:0<6}+00:00").timestamp()


@dataclass(frozen=True)
class StoreCost:
    """One image's store, in ms, as gpu_inference/worker.py logs it on success."""

    total: float
    encode: float
    upload: float
    record: float


_STORED = re.compile(r"stored in ([\d.]+) ms \(encode ([\d.]+) ms, upload ([\d.]+) ms, record ([\d.]+) ms\)")


def store_costs(home: Path) -> list[StoreCost]:
    """Every image the mesh's workers stored, in the order they logged it."""
    costs = []
    for log in sorted((home / "logs").glob("worker-*.log")):
        for match in _STORED.finditer(log.read_text(errors="replace")):
            costs.append(StoreCost(*(float(group) for group in match.groups())))
    return costs


# The bare call's phases, each beside the mesh's hop that does the same work (a hop's name to
# its phase): the prompt, the set-up and the first step; the rest of the denoising; the VAE
# decode to an image (the mesh's hop also holds the PNG, the store and the fenced finish).
BARE_PHASES = {
    "started -> first progress": "call -> first step",
    "first -> last progress": "first -> last step",
    "last progress -> terminal": "last step -> image",
}


@dataclass(frozen=True)
class BareCall:
    seconds: float
    phases: dict[str, float]  # seconds per phase (BARE_PHASES' values)


class BarePipeline:
    """The same model and settings, called directly in this process: the floor the mesh is
    compared with."""

    def __init__(self, models_dir: Path, steps: int, size: int) -> None:
        import torch
        from diffusers import AutoPipelineForText2Image

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.pipeline = AutoPipelineForText2Image.from_pretrained(models_dir / MODEL, dtype=dtype).to(
            self.device
        )
        self.pipeline.set_progress_bar_config(disable=True)
        self.steps, self.size = steps, size
        self.made = 0

    def generate(self) -> BareCall:
        """One call, timed, with when each step ended (a callback that notes the time: what the
        mesh's progress events are stamped with, less everything they carry). On CUDA each step's
        end is an event recorded on the stream and read once the call is over: waiting for the
        GPU at every step would slow the floor the mesh is compared with."""
        self.made += 1
        on_cuda = self.device == "cuda"
        marks: list[Any] = []  # each step's end: a CUDA event on the stream, else perf_counter()

        def step_ended(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if on_cuda:
                event = self.torch.cuda.Event(enable_timing=True)
                event.record()
                marks.append(event)
            else:
                marks.append(time.perf_counter())
            return tensors

        if on_cuda:
            self.torch.cuda.synchronize()
            start_event = self.torch.cuda.Event(enable_timing=True)
            start_event.record()
        started = time.perf_counter()
        with self.torch.inference_mode():
            self.pipeline(
                prompt=PROMPT,
                width=self.size,
                height=self.size,
                num_inference_steps=self.steps,
                guidance_scale=7.5,
                generator=self.torch.Generator(device=self.device).manual_seed(self.made),
                callback_on_step_end=step_ended,
            )
        if on_cuda:
            self.torch.cuda.synchronize()
            step_ends = [start_event.elapsed_time(event) / 1000 for event in marks]
        else:
            step_ends = [mark - started for mark in marks]
        seconds = time.perf_counter() - started
        phases = (step_ends[0], step_ends[-1] - step_ends[0], seconds - step_ends[-1])
        return BareCall(seconds, dict(zip(BARE_PHASES.values(), phases, strict=True)))


@dataclass(frozen=True)
class MeshGeneration:
    """One generation through the mesh, timed by its client."""

    wall: float  # submit to PNG downloaded
    first_event: float  # submit to the stream's first event
    hops: dict[str, float]  # seconds per hop (HOPS)


class Generator:
    """One account on one mesh, making one generation at a time as a client does: create, watch
    over SSE to the terminal event, download the PNG."""

    def __init__(self, gateway: str, steps: int, size: int) -> None:
        self.client = httpx.Client(base_url=gateway, timeout=120)
        login = self.client.post("/api/v1/auth/dev-login", json={"email": BENCH_EMAIL})
        login.raise_for_status()
        self.headers = {"authorization": f"Bearer {login.json()['accessToken']}"}
        self.body = {
            "prompt": PROMPT,
            "model": MODEL,
            "width": size,
            "height": size,
            "steps": steps,
        }
        self.made = 0

    def generate(self) -> MeshGeneration:
        self.made += 1
        started = time.perf_counter()
        submitted_at = time.time()
        created = self.client.post(
            "/api/v1/generation/create", json={**self.body, "seed": self.made}, headers=self.headers
        )
        if created.status_code == 402:
            raise SystemExit(f"out of credits: pingvas admin grant-credits {BENCH_EMAIL} 10000")
        created.raise_for_status()
        created_at = time.time()
        first_event: float | None = None
        terminal: dict[str, Any] = {}
        started_event = 0.0
        progress: list[float] = []
        with self.client.stream(
            "GET", f"/api/v1/generation/{created.json()['id']}/events", headers=self.headers
        ) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data: "):
                    continue
                if first_event is None:
                    first_event = time.perf_counter() - started
                event = json.loads(line[6:])
                if "started" in event:
                    started_event = event_time(event)
                elif "progress" in event:
                    progress.append(event_time(event))
                elif {"succeeded", "failed", "cancelled"} & event.keys():
                    terminal = event
                    break
        received_at = time.time()
        if "succeeded" not in terminal:
            raise SystemExit(f"generation did not succeed: {terminal}")
        self.client.get(terminal["succeeded"]["imageUrl"]).raise_for_status()
        wall = time.perf_counter() - started
        terminal_at = event_time(terminal)
        hops = (
            created_at - submitted_at,
            started_event - created_at,
            progress[0] - started_event,
            progress[-1] - progress[0],
            terminal_at - progress[-1],
            received_at - terminal_at,
            time.time() - received_at,
        )
        return MeshGeneration(wall, first_event or wall, dict(zip(HOPS, hops, strict=True)))


@dataclass(frozen=True)
class SideBySide:
    """Generations through the mesh and bare calls, taken in turns."""

    mesh: list[MeshGeneration]
    bare_calls: list[BareCall]

    @property
    def walls(self) -> list[float]:
        return [generation.wall for generation in self.mesh]

    @property
    def bare(self) -> list[float]:
        return [call.seconds for call in self.bare_calls]

    def hop(self, name: str) -> float:
        """A hop's median, in seconds."""
        return statistics.median(generation.hops[name] for generation in self.mesh)

    def bare_phase(self, name: str) -> float:
        """A phase's median over the bare calls, in seconds."""
        return statistics.median(call.phases[name] for call in self.bare_calls)


def side_by_side(generator: Generator, bare: BarePipeline, runs: int) -> SideBySide:
    """`runs` generations through the mesh and as many bare calls, one of each in turn (which goes
    first alternates), so that both see the same machine: on a shared 2-core machine the same
    bare call took 491 ms in one run and 621 ms in the next, more than the overhead measured. The
    mesh idles while the bare call runs. The first of each warms up and is not counted."""
    generator.generate()
    bare.generate()
    mesh: list[MeshGeneration] = []
    bare_calls: list[BareCall] = []
    for index in range(runs):
        if index % 2:
            bare_calls.append(bare.generate())
            mesh.append(generator.generate())
        else:
            mesh.append(generator.generate())
            bare_calls.append(bare.generate())
    return SideBySide(mesh, bare_calls)


def restart_workers(mesh: BenchMesh) -> None:
    """Stop the mesh's GPU workers; its supervisor starts fresh ones, as after any exit."""
    import psutil

    workers = processes_of(mesh.pid, "worker")
    for worker in workers:
        worker.terminate()
    psutil.wait_procs(workers, timeout=60)


def thread_seconds(mesh: BenchMesh, component: str) -> dict[tuple[int, int], float]:
    """CPU seconds (user + system) of each thread of a mesh component's processes, by (pid, tid)."""
    seconds = {}
    for process in processes_of(mesh.pid, component):
        for thread in process.threads():
            seconds[(process.pid, thread.id)] = thread.user_time + thread.system_time
    return seconds


def busiest_thread_seconds(
    before: dict[tuple[int, int], float], after: dict[tuple[int, int], float]
) -> float:
    """Of each process, the CPU its busiest thread spent between two `thread_seconds`, summed: for
    the worker, the thread that runs the pipeline."""
    by_process: dict[int, float] = {}
    for (pid, tid), seconds in after.items():
        spent = seconds - before.get((pid, tid), 0.0)
        by_process[pid] = max(by_process.get(pid, 0.0), spent)
    return sum(by_process.values())


def pipeline_thread_once(total_off: float, total_on: float, pipeline_off: float, pipeline_on: float) -> float:
    """The ratio on / off with the worker's pipeline thread counted once, as tracing off spent it:
    what the rest of the mesh added, over the whole mesh's CPU with tracing off."""
    return (total_off + (total_on - pipeline_on) - (total_off - pipeline_off)) / total_off


def compare_tracing(
    models_dir: Path,
    runs: int,
    steps: int,
    size: int,
    rounds: int,
    segments: int,
    *,
    calibrate: bool,
    traces_sampler: str | None = None,
) -> None:
    """Two meshes up side by side, tracing off and on (with `calibrate`, off in both), taking
    turns one generation at a time (who goes first alternates), so that both see the same
    machine: the other work on it, its clock speed, its caches. Each mesh's CPU is summed over
    its own process tree.

    A process's CPU for the same work differs from one process to the next, by as much as the
    cost measured here, and most of all the worker's: with tracing off in both meshes, the
    mesh started second used 0.4 %, 1.1 % and 3.9 % less CPU than the first in three runs. So
    each round brings up a fresh pair, which of the two starts first alternates from round to
    round, and within a round each of `segments` segments gets fresh workers (the supervisor
    restarts a worker that exits) before it measures -n generations per mesh."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))  # the tests' OTLP receiver, counting only
    from support.otlp import OtlpReceiver

    off: list[dict[str, float]] = []
    on: list[dict[str, float]] = []
    # The worker's pipeline thread, apart: the same denoising costs one fresh worker process up
    # to a tenth more CPU than the next, and that is most of the ratio's spread.
    denoising_off: list[float] = []
    denoising_on: list[float] = []
    traced_generations = 0
    # Restarting workers is exits to the supervisor: no crash loop, however many segments.
    supervision = {"PINGVAS_CRASH_LOOP_RESTARTS": str(2 * segments)}
    # A standard sampler instead of Pingvas's, for what the instrumentations cost on their own:
    # with `always_off` they still wrap every call and make a span that records nothing.
    sampling = {"OTEL_TRACES_SAMPLER": traces_sampler} if traces_sampler else {}
    with OtlpReceiver(keep=False) as sink:
        for round_index in range(rounds):
            environments = {
                "off": supervision,
                "on": supervision
                if calibrate
                else {**supervision, "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, **sampling},
            }
            first, second = ("off", "on") if round_index % 2 == 0 else ("on", "off")
            with (
                own_mesh(models_dir, environments[first]) as first_mesh,
                own_mesh(models_dir, environments[second]) as second_mesh,
            ):
                meshes = {
                    name: (mesh, Generator(mesh.gateway_url, steps, size))
                    for name, mesh in ((first, first_mesh), (second, second_mesh))
                }
                # A fresh account's free credits last a few dozen generations; a round makes
                # more, warm-ups included.
                for mesh, _ in meshes.values():
                    mesh.pingvas("admin", "grant-credits", BENCH_EMAIL, str(100 * (runs + 2) * segments))
                spent_in_round: dict[str, dict[str, float]] = {"off": {}, "on": {}}
                denoising_in_round = {"off": 0.0, "on": 0.0}
                for segment in range(segments):
                    if segment:
                        for mesh, _ in meshes.values():
                            restart_workers(mesh)
                    for _mesh, generator in meshes.values():  # warm-up: connections, pipelines, caches
                        generator.generate()
                        generator.generate()
                    before = {name: cpu_seconds_by_process(mesh.pid) for name, (mesh, _g) in meshes.items()}
                    threads_before = {
                        name: thread_seconds(mesh, "worker") for name, (mesh, _g) in meshes.items()
                    }
                    for index in range(runs):
                        order = ("off", "on") if index % 2 == 0 else ("on", "off")
                        for name in order:
                            meshes[name][1].generate()
                    for name, spent in spent_in_round.items():
                        mesh = meshes[name][0]
                        for component, seconds in cpu_seconds_since(mesh.pid, before[name]).items():
                            spent[component] = spent.get(component, 0.0) + seconds / (runs * segments)
                        denoising = busiest_thread_seconds(
                            threads_before[name], thread_seconds(mesh, "worker")
                        )
                        denoising_in_round[name] += denoising / (runs * segments)
                traced_generations += meshes["on"][1].made
                off.append(spent_in_round["off"])
                on.append(spent_in_round["on"])
                denoising_off.append(denoising_in_round["off"])
                denoising_on.append(denoising_in_round["on"])
    print(
        f"tracing cost: {rounds} round(s) of {segments} x {runs} generations per mesh, two meshes side by side, "
        f"{MODEL} {size}x{size}, {steps} steps"
        + ("; calibration: tracing off in both meshes, 'on' is the second" if calibrate else "")
        + (f"; the traced mesh samples with OTEL_TRACES_SAMPLER={traces_sampler}" if traces_sampler else "")
    )
    print("  CPU seconds per generation, all mesh processes (user + system):")
    # Each round's ratios: all threads, and the pipeline thread counted once (see the docstring).
    all_threads, pipeline_once = [], []
    for index, (without, with_tracing) in enumerate(zip(off, on, strict=True), start=1):
        total_off, total_on = sum(without.values()), sum(with_tracing.values())
        all_threads.append(total_on / total_off)
        pipeline_once.append(
            pipeline_thread_once(total_off, total_on, denoising_off[index - 1], denoising_on[index - 1])
        )
        print(
            f"    round {index} ({'off' if index % 2 else 'on'} started first): tracing off "
            f"{total_off * 1000:8.1f} ms   on {total_on * 1000:8.1f} ms   ratio {all_threads[-1]:.3f}, "
            f"pipeline thread once {pipeline_once[-1]:.3f}"
        )
    print("  by component (mean ms, off -> on):")
    for component in sorted({name for spent in off + on for name in spent}):
        component_off = statistics.mean(spent.get(component, 0.0) for spent in off)
        component_on = statistics.mean(spent.get(component, 0.0) for spent in on)
        print(f"    {component:<12} {component_off * 1000:8.1f} -> {component_on * 1000:8.1f}")
    mean_off = statistics.mean(sum(spent.values()) for spent in off)
    mean_on = statistics.mean(sum(spent.values()) for spent in on)
    print(f"  mean: off {mean_off * 1000:.1f} ms, on {mean_on * 1000:.1f} ms")
    print(f"  ratio on / off, all threads  {mean_on / mean_off:.3f}   (target <= 1.03)")
    # Tracing's own work on the pipeline thread is a list append a step: the rest of the mesh
    # holds most of its cost, measured without that thread's noise.
    rest_off = mean_off - statistics.mean(denoising_off)
    rest_on = mean_on - statistics.mean(denoising_on)
    print(
        f"  the worker's pipeline thread {statistics.mean(denoising_off) * 1000:.1f} -> "
        f"{statistics.mean(denoising_on) * 1000:.1f} ms; everything else {rest_off * 1000:.1f} -> "
        f"{rest_on * 1000:.1f} ms: {(rest_on - rest_off) * 1000:+.1f} ms per generation"
    )
    once = pipeline_thread_once(
        mean_off, mean_on, statistics.mean(denoising_off), statistics.mean(denoising_on)
    )
    print(f"  ratio, pipeline thread once  {once:.3f}")
    if rounds > 1:
        # The rounds' spread: a ratio is only as good as this says.
        for label, ratios in (("all threads", all_threads), ("pipeline thread once", pipeline_once)):
            error = statistics.stdev(ratios) / len(ratios) ** 0.5
            print(
                f"  rounds' ratios, {label:<20} mean {statistics.mean(ratios):.3f} +- {error:.3f} "
                "(standard error)"
            )
    # Warm-ups included: every process flushes its spans as it stops.
    print(f"  spans exported               {sink.span_count / max(traced_generations, 1):.0f} per generation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--gateway", default=os.environ.get("PINGVAS_GATEWAY_URL"))
    parser.add_argument("--start", action="store_true", help="start a mesh of its own")
    parser.add_argument(
        "--fsync-cost", action="store_true", help="with --start: also run a mesh with fsync off, and compare"
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="compare the mesh's CPU seconds per generation with OpenTelemetry off and on",
    )
    # Calibration runs both meshes untraced, so a sampler would have nothing to sample.
    traced_as = parser.add_mutually_exclusive_group()
    traced_as.add_argument(
        "--calibrate",
        action="store_true",
        help="with --tracing: tracing off in both meshes, to show the measurement's own spread",
    )
    traced_as.add_argument(
        "--traces-sampler",
        help="with --tracing: the traced mesh's OTEL_TRACES_SAMPLER (always_off: the instrumentations' "
        "own cost, nothing recorded); Pingvas's sampler when not given",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --tracing: rounds of -n generations per mesh, each on a fresh pair of meshes",
    )
    parser.add_argument(
        "--segments",
        type=int,
        default=4,
        help="with --tracing: segments of -n generations per round, each with fresh workers",
    )
    add_models_dir_argument(parser)
    args = parser.parse_args()
    models_dir = args.models_dir.resolve()
    if args.tracing:
        compare_tracing(
            models_dir,
            args.runs,
            args.steps,
            args.size,
            args.rounds,
            args.segments,
            calibrate=args.calibrate,
            traces_sampler=args.traces_sampler,
        )
        return

    bare = BarePipeline(models_dir, args.steps, args.size)
    without_fsync = None
    stores: list[StoreCost] = []
    if args.start:
        with own_mesh(models_dir) as mesh:
            measured = side_by_side(Generator(mesh.gateway_url, args.steps, args.size), bare, args.runs)
            stores = store_costs(mesh.home)[-args.runs :]  # the warm-up's is not counted
        if args.fsync_cost:
            with own_mesh(models_dir, {"PINGVAS_POSTGRES_FSYNC": "off"}) as mesh:
                without_fsync = side_by_side(
                    Generator(mesh.gateway_url, args.steps, args.size), bare, args.runs
                )
    else:
        gateway = args.gateway or f"http://127.0.0.1:{os.environ.get('PINGVAS_HTTP_PORT', '8080')}"
        measured = side_by_side(Generator(gateway, args.steps, args.size), bare, args.runs)
    walls = measured.walls
    first_events = [generation.first_event for generation in measured.mesh]
    mesh_mean, bare_mean = statistics.mean(walls), statistics.mean(measured.bare)
    print(
        f"mesh overhead: {args.runs} generations, {MODEL} {args.size}x{args.size}, {args.steps} steps, "
        "each beside a bare call"
    )
    print(
        f"  end-to-end through the mesh  mean {mesh_mean * 1000:8.1f} ms   median {statistics.median(walls) * 1000:8.1f} ms"
    )
    print(
        f"  bare diffusers call          mean {bare_mean * 1000:8.1f} ms   median "
        f"{statistics.median(measured.bare) * 1000:8.1f} ms   ({bare.torch.get_num_threads()} torch threads, "
        "the mesh idle meanwhile)"
    )
    print(f"  ratio mesh / bare            {mesh_mean / bare_mean:.3f}   (target <= 1.10)")
    print(
        f"  submit -> first stream event p50 {percentile(first_events, 0.5) * 1000:6.1f} ms   "
        f"p99 {percentile(first_events, 0.99) * 1000:6.1f} ms   (target p99 <= 50 ms)"
    )
    # Each generation less the bare call beside it, so that the machine's drift cancels out.
    fixed = [wall - seconds for wall, seconds in zip(walls, measured.bare, strict=True)]
    print(f"  fixed cost (mesh - bare)     p50 {statistics.median(fixed) * 1000:9.1f} ms   (target <= 25 ms)")
    print("  where it goes (median per hop; beside it, the bare call's phase that does the same work):")
    for hop in HOPS:
        line = f"    {hop:<28} {measured.hop(hop) * 1000:8.1f} ms"
        if (phase := BARE_PHASES.get(hop)) is not None:
            line += f"   bare {phase:<20} {measured.bare_phase(phase) * 1000:8.1f} ms"
        print(line)
    # Each step's progress event crosses the worker, Redis, the generation service, Envoy and the
    # client while the next step runs: on a machine without a GPU, their CPU is the step's.
    denoising = "first -> last progress"
    per_step = (measured.hop(denoising) - measured.bare_phase(BARE_PHASES[denoising])) / (args.steps - 1)
    print(f"  denoising, mesh - bare       {per_step * 1000:+8.2f} ms a step")
    if stores:
        print(f"  the store, per image (the worker's log, median of {len(stores)}; off the GPU's path):")
        for part in ("encode", "upload", "record", "total"):
            print(f"    {part:<28} {statistics.median(getattr(cost, part) for cost in stores):8.1f} ms")
    if without_fsync is not None:
        create, unsafe_create = measured.hop(HOPS[0]), without_fsync.hop(HOPS[0])
        wall, unsafe_wall = statistics.median(walls), statistics.median(without_fsync.walls)
        print(
            f"  fsync on vs off (medians)    create call {create * 1000:.1f} vs {unsafe_create * 1000:.1f} ms, "
            f"end to end {wall * 1000:.1f} vs {unsafe_wall * 1000:.1f} ms: "
            f"durability costs {(wall - unsafe_wall) * 1000:+.1f} ms"
        )


if __name__ == "__main__":
    main()
