"""Thought loops: the model's internal response becomes its next internal query.

A loop is a task that queues one *thought step* at a time into its memory's lane, like any query, so
steps batch with other streams in the decoder, each step's memory update lands before the next step,
and an external query that arrives during a step is answered before the next step starts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reactor_rt.errors import ConfigError

__all__ = ["Budget", "StopRule", "ThoughtLoop"]

StopRule = str | Callable[[str], bool] | None


@dataclass(frozen=True)
class Budget:
    """Limits of a thought loop; a loop ends at the first one reached. All None: until stopped."""

    steps: int | None = None
    tokens: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "tokens", "seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"budget {name} must be positive, got {value}")

    @classmethod
    def of(cls, budget: int | Budget | None) -> Budget:
        """An int means a number of steps."""
        if budget is None:
            return cls()
        if isinstance(budget, Budget):
            return budget
        if isinstance(budget, int) and not isinstance(budget, bool):
            return cls(steps=budget)
        raise ConfigError(f"a budget is an int (steps) or a Budget, not {type(budget).__name__}")


@dataclass
class ThoughtLoop:
    """The state of one loop on one stream (the counters survive in the loop's events)."""

    stream_id: str
    seed: str
    budget: Budget
    stop: StopRule = None
    resume: bool = False  # restart this loop when the runtime restarts
    pause_on_query: bool = False  # end the loop when an external query arrives, instead of resuming
    loop_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    step: int = 0
    tokens: int = 0
    elapsed_before: float = 0.0  # seconds spent before a restart
    started: float = field(default_factory=time.monotonic)
    stopping: str | None = None  # why the loop was asked to end
    ended: str | None = None  # why the loop ended (its final response is out)
    task: Any = None

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def token_allowance(self, per_step: int) -> int:
        """Tokens the next step may generate."""
        if self.budget.tokens is None:
            return per_step
        return max(1, min(per_step, self.budget.tokens - self.tokens))

    def record(self, answer: str, tokens: int) -> str | None:
        """Count a finished step; return why the loop ends now, or None to go on."""
        self.step += 1
        self.tokens += tokens
        self.ended = self._end_reason(answer)
        return self.ended

    def _end_reason(self, answer: str) -> str | None:
        b = self.budget
        if self.stopping:
            return self.stopping
        if b.steps is not None and self.step >= b.steps:
            return "steps"
        if b.tokens is not None and self.tokens >= b.tokens:
            return "tokens"
        if b.seconds is not None and self.elapsed >= b.seconds:
            return "seconds"
        if isinstance(self.stop, str) and self.stop and self.stop in answer:
            return "stop"
        if callable(self.stop) and self.stop(answer):
            return "stop"
        if not answer.strip():
            return "empty"  # an empty response cannot be the next query
        return None

    def state(self) -> dict[str, Any]:
        """What the loop's events carry, so a restarted runtime can resume it from the log."""
        return {
            "steps": self.budget.steps, "tokens": self.budget.tokens, "seconds": self.budget.seconds,
            "stop": self.stop if isinstance(self.stop, str) else None, "resume": self.resume,
            "pause_on_query": self.pause_on_query, "used_steps": self.step, "used_tokens": self.tokens,
            "used_seconds": round(self.elapsed, 3),
        }

    @classmethod
    def from_state(cls, stream_id: str, loop_id: str, next_query: str, state: Any) -> ThoughtLoop:
        """Rebuild a loop from the state its last event carried."""
        loop = cls(stream_id, next_query, Budget(state.steps, state.tokens, state.seconds), state.stop,
                   state.resume, state.pause_on_query, loop_id=loop_id)
        loop.step, loop.tokens, loop.elapsed_before = state.used_steps, state.used_tokens, state.used_seconds
        return loop
