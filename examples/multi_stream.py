"""Many streams at once: each has its own STM; their answers are decoded together in one batch.

    python examples/multi_stream.py --streams 8
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from reactor_rt import Reactor

# names of the shape the bundled model was trained on (two syllables from its set): see README
NAMES = ["Tomi", "Zumi", "Kalo", "Mira", "Suvi", "Neri", "Dabe", "Goha", "Lone", "Beri", "Tori", "Suri"]


async def main(model: Any = "tiny", store: str = "memory://", streams: int = 8) -> dict[str, str]:
    """Every stream states a name, then asks for it; returns each stream's final answer."""
    async with Reactor.start(model=model, store=store) as rx:
        handles = [await rx.stream(f"user-{i}") for i in range(streams)]

        async def converse(i: int) -> tuple[str, str]:
            s = handles[i]
            await s.reply(f"My name is {NAMES[i % len(NAMES)]}.")
            await s.reply("My number is 4217.")
            return s.id, await s.reply("What is my name?")

        started = time.perf_counter()
        results = dict(await asyncio.gather(*(converse(i) for i in range(streams))))
        elapsed = time.perf_counter() - started
    for sid, answer in results.items():
        print(f"{sid}: {answer}")
    print(f"{streams} streams x 3 turns in {elapsed:.2f} s")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--streams", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.model, args.store, args.streams))
