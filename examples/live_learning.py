"""Live learning: a grader agent listens to answers on the bus and sends a corrected answer back as
feedback; the learner updates the decoder while serving, and the next answer uses the new weights.

    python examples/live_learning.py
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from reactor_rt import Reactor

QUESTION = "What is the capital of France?"
CORRECT = "Paris."


async def main(model: Any = "tiny", store: str = "memory://", rounds: int = 6) -> list[tuple[int, str]]:
    """Returns ``(weights_version, answer)`` for each round."""
    history: list[tuple[int, str]] = []
    async with Reactor.start(model=model, store=store) as rx:
        for round_ in range(rounds):
            stream = await rx.stream(f"student-{round_}")  # a fresh memory each round: same question, same STM
            events = [ev async for ev in stream.ask(QUESTION)]
            done = next(e for e in events if e.type == "rx.response.done")
            history.append((done.data.weights_version, done.data.text))
            print(f"round {round_}: weights v{done.data.weights_version} answered {done.data.text!r}")
            if done.data.text.strip() == CORRECT:
                break
            # the grader: any process could publish this event on the bus
            sent = await stream.feedback(done.interaction, correction=CORRECT, reward=-1.0)
            async for ev in rx.subscribe(types={"rx.learning.applied", "rx.error"}, subject=stream.id,
                                         after=sent.seq, limit=1):
                if ev.type == "rx.learning.applied":
                    print(f"  learned: v{ev.data.weights_version}, loss {ev.data.loss_before:.3f} -> "
                          f"{ev.data.loss_after:.3f}")
                else:
                    print(f"  rejected: {ev.data.message}")
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--store", default="memory://")
    args = parser.parse_args()
    asyncio.run(main(args.model, args.store))
