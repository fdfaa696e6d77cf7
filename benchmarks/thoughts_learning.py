"""Thought loops and live learning through the runtime: thought steps/s with 1 and 8 thinking streams,
and the serving pause a weight swap causes.

    .venv/bin/python -m benchmarks.thoughts_learning [--quick]

Thought steps are full interactions (answer + memory update) on the bundled `tiny` model. The swap
pause is measured from the conductor's side (`WeightsGate.last_pause_ms`: from the moment new
interactions must wait until the swap is done, including the wait for interactions in flight) and
from a client's side (a query sent right after feedback: its answer latency vs the median without a
swap). Goal (issue 6): pause <= 50 ms for the tiny model.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import ray

__all__ = ["main", "measure"]


async def _steps_per_s(rx, streams: int, steps: int) -> float:
    handles = [await rx.stream(f"think-{streams}-{i}") for i in range(streams)]
    t0 = time.perf_counter()
    loops = [await h.think(f"Thought number {i}: my city is Rome.", steps) for i, h in enumerate(handles)]
    finals = await asyncio.gather(*(loop.wait() for loop in loops))
    elapsed = time.perf_counter() - t0
    return sum(f.data.step for f in finals) / elapsed


async def _answer_ms(stream, text: str) -> float:
    t0 = time.perf_counter()
    await stream.reply(text)
    return 1000 * (time.perf_counter() - t0)


async def measure(quick: bool = False) -> dict[str, float]:
    """Figures: steps/s for 1 and 8 streams, swap pauses (conductor and client view), ms."""
    from reactor_rt import Reactor

    steps = 3 if quick else 6
    async with Reactor.start(model="tiny", store="memory://", max_new_tokens=24) as rx:
        warm = await rx.stream("warm")
        await warm.reply("My name is Ada.")
        one = await _steps_per_s(rx, 1, steps)
        eight = await _steps_per_s(rx, 8, steps)

        conductor = ray.get_actor("conductor", namespace=rx.namespace)
        student = await rx.stream("student")
        base = [await _answer_ms(student, "What is my name?") for _ in range(5)]
        pauses, during = [], []
        for i in range(2 if quick else 4):
            events = [ev async for ev in student.ask("What is my name?")]
            done = next(e for e in events if e.type == "rx.response.done")
            sent = await student.feedback(done.interaction, correction=f"Your name is Ada {i}.")
            probe = asyncio.ensure_future(_answer_ms(await rx.stream(f"probe-{i}"), "Hello."))
            async for _ in rx.subscribe(types={"rx.learning.applied", "rx.error"}, subject="student",
                                        after=sent.seq, limit=1):
                pass
            during.append(await probe)
            pauses.append(await conductor.__ray_call__.remote(lambda self: self.conductor._gate.last_pause_ms))
    return {
        "steps_per_s_1": one, "steps_per_s_8": eight,
        "swap_pause_ms": statistics.median(pauses), "swap_pause_max_ms": max(pauses),
        "answer_ms": statistics.median(base), "answer_during_swap_ms": statistics.median(during),
    }


def report(r: dict[str, float]) -> str:
    return "\n".join([
        "thoughts_learning: bundled tiny model, 24-token thought answers",
        f"thought steps/s, 1 stream:  {r['steps_per_s_1']:.2f}",
        f"thought steps/s, 8 streams: {r['steps_per_s_8']:.2f} ({r['steps_per_s_8'] / r['steps_per_s_1']:.2f}x)",
        f"weight swap pause (conductor): median {r['swap_pause_ms']:.1f} ms, max {r['swap_pause_max_ms']:.1f} ms "
        f"-> goal <= 50 ms {'met' if r['swap_pause_ms'] <= 50 else 'NOT met'}",
        f"answer latency: {r['answer_ms']:.1f} ms without a swap, {r['answer_during_swap_ms']:.1f} ms for a query "
        "sent while feedback was being applied (includes the learner's update time)",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    print(report(asyncio.run(measure(parser.parse_args(argv).quick))))


if __name__ == "__main__":
    main()
