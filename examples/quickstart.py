"""Quickstart: one stream, a fact, then a question that needs the memory.

    python examples/quickstart.py            # the bundled `tiny` model, an in-memory STM store
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from reactor_rt import Reactor


async def main(model: Any = "tiny", store: str = "memory://") -> list[str]:
    """Run the demo; returns the answers (the example's test checks them)."""
    answers = []
    async with Reactor.start(model=model, store=store) as rx:
        alice = await rx.stream("alice")
        for text in ("My name is Tomi.", "My city is Wesmere.", "What is my name?"):
            print(f"> {text}")
            async for event in alice.ask(text):
                if event.type == "rx.response.chunk":
                    print(event.data.text, end="", flush=True)
                elif event.type == "rx.response.done":
                    print()
                    answers.append(event.data.text)
                elif event.type == "rx.memory.updated":
                    print(f"  [memory v{event.data.version}]")
    return answers


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--store", default="memory://")
    args = parser.parse_args()
    asyncio.run(main(args.model, args.store))
