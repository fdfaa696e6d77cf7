"""An agent that only listens: it subscribes to every stream's answers and memory updates, while
another task talks to two streams. Any process could publish the queries; here one task does.

    python examples/subscribe.py
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from reactor_rt import Reactor, events


async def main(model: Any = "tiny", store: str = "memory://") -> list[tuple[str, str]]:
    """Returns the ``(subject, type)`` pairs the listening agent saw."""
    seen: list[tuple[str, str]] = []
    async with Reactor.start(model=model, store=store) as rx:
        # awaiting registers the subscription now: nothing published after this line is missed.
        # Two streams x two turns x (done, updating, updated) = 12 events, then it ends by itself.
        subscription = await rx.subscribe(types={"rx.response.done", "rx.memory."}, limit=12)

        async def listen() -> None:
            async for ev in subscription:
                seen.append((ev.subject, ev.type))
                text = getattr(ev.data, "text", None)
                print(f"[agent] {ev.subject} #{ev.seq} {ev.type}" + (f": {text!r}" if text else ""))

        listener = asyncio.create_task(listen())
        for subject in ("carol", "dave"):
            # publishing a Query is all it takes: the runtime answers on the bus
            await rx.publish(events.Query(subject=subject, source="example", data={"text": "My pet is a fluffy cat."}))
            await rx.publish(events.Query(subject=subject, source="example", data={"text": "What is my pet?"}))
        await asyncio.wait_for(listener, timeout=120)
    return seen


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--store", default="memory://")
    args = parser.parse_args()
    asyncio.run(main(args.model, args.store))
