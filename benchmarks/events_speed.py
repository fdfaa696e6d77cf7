"""Events speed: codec round trip (µs/event) and events/s through InProcessBus and the Ray bus with one
publisher and 4 subscribers (batched publish).

    python -m benchmarks.events_speed            # full run
    python -m benchmarks.events_speed --quick    # a few seconds, smaller counts

Goals (issue 3): codec round trip <= 20 µs/event; InProcessBus >= 100k events/s; Ray bus >= 20k events/s.
Each figure is the best of `--repeats` runs (the machine is shared; the best run is the least disturbed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray binds to 127.0.0.1 only
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import anyio

from reactor_rt.events import Event, EventLog, InProcessBus, ResponseChunk, ResponseDone, codec

__all__ = ["main"]

GOAL_CODEC_US = 20.0
GOAL_INPROCESS = 100_000
GOAL_RAY = 20_000


def chunk_events(n: int, subject: str = "bench") -> list[Event]:
    return [ResponseChunk(subject=subject, source="bench", data={"text": f" tok{i % 97}"}) for i in range(n)]


def done_events(n: int, subject: str = "bench") -> list[Event]:
    text = "The quick brown fox jumps over the lazy dog. " * 4
    return [
        ResponseDone(subject=subject, source="bench", seq=i + 1,
                     data={"text": text, "tokens": 48, "stm_version": i, "generate_ms": 12.5})
        for i in range(n)
    ]


def best_of(repeats: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(repeats))


# ---------------------------------------------------------------------- codec


def bench_codec(n: int, repeats: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, events in (("chunk", chunk_events(n)), ("done", done_events(n))):
        frames = [codec.encode(ev) for ev in events]

        def encode_all(events: list[Event] = events, clock: Callable[[], float] = time.perf_counter) -> float:
            t = clock()
            for ev in events:
                codec.encode(ev)
            return (clock() - t) / len(events) * 1e6

        def decode_all(frames: list[bytes] = frames, clock: Callable[[], float] = time.perf_counter) -> float:
            t = clock()
            for raw in frames:
                codec.decode(raw)
            return (clock() - t) / len(frames) * 1e6

        enc, dec = best_of(repeats, encode_all), best_of(repeats, decode_all)
        out[f"{name}_encode_us"], out[f"{name}_decode_us"] = enc, dec
        out[f"{name}_round_trip_us"] = enc + dec
        # CPU time of this thread: what the codec costs, whatever else the (shared) machine runs
        out[f"{name}_round_trip_cpu_us"] = best_of(repeats, lambda e=events: encode_all(e, time.thread_time)) + best_of(
            repeats, lambda f=frames: decode_all(f, time.thread_time)
        )
        out[f"{name}_frame_bytes"] = sum(map(len, frames)) / len(frames)
    return out


# ---------------------------------------------------------------------- buses


async def pump(bus: Any, events: list[Event], subscribers: int, batch: int, subject: str) -> float:
    """One publisher (publish_many batches), `subscribers` consumers; events/s until all have all."""
    subs = [await bus.subscribe(subject=subject) for _ in range(subscribers)]
    n = len(events)

    async def consume(sub: Any) -> None:
        count = 0
        async for _ev in sub:
            count += 1
            if count == n:
                break
        await sub.aclose()

    t = time.perf_counter()
    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            for sub in subs:
                tg.start_soon(consume, sub)
            if batch == 1:
                for ev in events:
                    await bus.publish(ev)
            else:
                for i in range(0, n, batch):
                    await bus.publish_many(events[i : i + batch])
    return n / (time.perf_counter() - t)


async def bench_inprocess(n: int, repeats: int, subscribers: int, batch: int) -> dict[str, float]:
    out: dict[str, float] = {}
    rates, cpu_rates = [], []
    for r in range(repeats):
        events = chunk_events(n, f"c{r}")
        async with InProcessBus(buffer=4096) as bus:
            cpu = time.process_time()
            rates.append(await pump(bus, events, subscribers, batch, f"c{r}"))
            cpu_rates.append(n / (time.process_time() - cpu))  # one process: events per CPU-second
    out["inprocess_chunks_batched"] = max(rates)
    out["inprocess_chunks_batched_cpu"] = max(cpu_rates)
    async with InProcessBus(buffer=4096) as bus:
        out["inprocess_chunks_single"] = await pump(bus, chunk_events(n // 2, "s"), subscribers, 1, "s")
    with tempfile.TemporaryDirectory() as tmp:
        async with InProcessBus(EventLog(Path(tmp) / "events.db"), buffer=4096) as bus:
            events = [ev.model_copy(update={"seq": 0}) for ev in done_events(n // 2, "d")]
            out["inprocess_durable_logged_batched"] = await pump(bus, events, subscribers, batch, "d")
    return out


async def bench_ray(n: int, repeats: int, subscribers: int, batch: int) -> dict[str, float]:
    import ray

    from reactor_rt.events.ray_bus import RayBus

    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = True
    out: dict[str, float] = {}
    try:
        bus = RayBus.create(name=None, log_path=None, buffer=8192)
        await bus.wait_ready()
        await pump(bus, chunk_events(2000, "warm"), subscribers, batch, "warm")  # warm the worker and paths
        rates = [await pump(bus, chunk_events(n, f"c{r}"), subscribers, batch, f"c{r}") for r in range(repeats)]
        out["ray_chunks_batched"] = max(rates)
        out["ray_publish_only"] = await pump(bus, chunk_events(n, "p"), 0, batch, "p")
        bus.kill()
        with tempfile.TemporaryDirectory() as tmp:
            bus = RayBus.create(name=None, log_path=str(Path(tmp) / "events.db"), buffer=8192)
            await bus.wait_ready()
            events = [ev.model_copy(update={"seq": 0}) for ev in done_events(n // 2, "d")]
            out["ray_durable_logged_batched"] = await pump(bus, events, subscribers, batch, "d")
            bus.kill()
    finally:
        if started:
            ray.shutdown()
    return out


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts (a few seconds)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray bus")
    parser.add_argument("--subscribers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256, help="events per publish_many")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    n_codec, n_bus, repeats = (5_000, 20_000, 2) if args.quick else (50_000, 100_000, 3)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall-clock figures drop under load)")
    repeats = args.repeats or repeats

    codec_figs = bench_codec(n_codec, repeats)
    print(f"codec ({n_codec} events, best of {repeats})")
    for name in ("chunk", "done"):
        print(
            f"  {name:5s}: encode {codec_figs[f'{name}_encode_us']:5.2f} µs + decode "
            f"{codec_figs[f'{name}_decode_us']:5.2f} µs = round trip {codec_figs[f'{name}_round_trip_us']:5.2f} "
            f"µs/event  (CPU {codec_figs[f'{name}_round_trip_cpu_us']:5.2f} µs; "
            f"{codec_figs[f'{name}_frame_bytes']:.0f} B/frame)"
        )
    worst = max(codec_figs["chunk_round_trip_us"], codec_figs["done_round_trip_us"])
    worst_cpu = max(codec_figs["chunk_round_trip_cpu_us"], codec_figs["done_round_trip_cpu_us"])
    print(
        f"  goal <= {GOAL_CODEC_US:.0f} µs: wall clock {'met' if worst <= GOAL_CODEC_US else 'MISSED'}, "
        f"CPU time {'met' if worst_cpu <= GOAL_CODEC_US else 'MISSED'}"
    )

    ok = worst <= GOAL_CODEC_US
    subs, batch = args.subscribers, args.batch
    figs = anyio.run(bench_inprocess, n_bus, repeats, subs, batch)
    print(f"InProcessBus (1 publisher, {subs} subscribers, {n_bus} events)")
    print(
        f"  chunks, publish_many({batch}):        {figs['inprocess_chunks_batched']:>9,.0f} events/s"
        f"  ({figs['inprocess_chunks_batched_cpu']:,.0f} per CPU-second)"
    )
    print(f"  chunks, publish() one by one:        {figs['inprocess_chunks_single']:>9,.0f} events/s")
    print(f"  rx.response.done + SQLite log:       {figs['inprocess_durable_logged_batched']:>9,.0f} events/s")
    met = figs["inprocess_chunks_batched"] >= GOAL_INPROCESS
    met_cpu = figs["inprocess_chunks_batched_cpu"] >= GOAL_INPROCESS
    ok &= met
    print(
        f"  goal >= {GOAL_INPROCESS:,} events/s (batched): wall clock {'met' if met else 'MISSED'}, "
        f"per CPU-second {'met' if met_cpu else 'MISSED'}"
    )

    if not args.no_ray:
        rfigs = anyio.run(bench_ray, n_bus, repeats, subs, batch)
        print(f"Ray bus (actor; 1 publisher and {subs} subscribers in the driver, {n_bus} events)")
        print(f"  chunks, publish_many({batch}):        {rfigs['ray_chunks_batched']:>9,.0f} events/s")
        print(f"  rx.response.done + SQLite log:       {rfigs['ray_durable_logged_batched']:>9,.0f} events/s")
        print(f"  publish only (no subscriber):        {rfigs['ray_publish_only']:>9,.0f} events/s")
        met = rfigs["ray_chunks_batched"] >= GOAL_RAY
        ok &= met
        print(f"  goal >= {GOAL_RAY:,} events/s (batched): {'met' if met else 'MISSED'}")
    print("all goals met" if ok else "some goals missed (see above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
