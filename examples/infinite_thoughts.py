"""An infinite chain of thoughts: the model's internal response becomes its next internal query.

Two streams think at once (their steps batch together in the decoder); a user query on one of them
is answered between two thought steps, and then that loop goes on.

    python examples/infinite_thoughts.py --steps 5
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from reactor_rt import Reactor
from reactor_rt.runtime import Budget


async def main(model: Any = "tiny", store: str = "memory://", steps: int = 4) -> dict[str, list[str]]:
    """Returns each stream's thought responses, in order."""
    thoughts: dict[str, list[str]] = {}
    async with Reactor.start(model=model, store=store, max_new_tokens=32) as rx:
        a = await rx.stream("dreamer")
        b = await rx.stream("planner")
        print("[user -> dreamer] My name is Tomi.")
        print("[dreamer answers]", await a.reply("My name is Tomi."))
        # seeds the small model can keep talking about (an acknowledgement as a query gets an empty
        # answer, which ends a loop)
        loops = [
            await a.think("How are you?", Budget(steps=steps, seconds=120)),
            await b.think("Hello!", steps, stop="See you soon."),
        ]
        # an external query preempts the loop at the next step boundary
        print("[user -> dreamer] What is my name?")
        print("[dreamer answers]", await a.reply("What is my name?"))
        for loop in loops:
            async for ev in loop.events():
                if ev.type == "rx.thought.response":
                    thoughts.setdefault(loop.stream.id, []).append(ev.data.text)
                    end = f"  (loop ends: {ev.data.reason})" if ev.data.final else ""
                    print(f"[{loop.stream.id} thought {ev.data.step}] {ev.data.text!r}{end}")
    return thoughts


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(main(args.model, args.store, args.steps))
