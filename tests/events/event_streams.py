"""Helpers the event tests share (imported by path: the tests run with ``--import-mode=importlib``)."""

from __future__ import annotations

from typing import Any

import anyio

__all__ = ["take"]


async def take(sub: Any, n: int, timeout: float = 10.0) -> list[Any]:
    """The next `n` events of subscription `sub` (fewer if it ends first); fails after `timeout` seconds."""
    got: list[Any] = []
    with anyio.fail_after(timeout):
        async for ev in sub:
            got.append(ev)
            if len(got) == n:
                break
    return got
