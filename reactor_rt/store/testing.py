"""Fault injection for STM stores: `FaultyStore` wraps a store and fails chosen calls.

For reliability tests: fail the Nth save before it writes (the write is lost) or after it writes
(the write is kept but the caller sees an error: a lost acknowledgement, the case that idempotent
retries exist for).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import torch

from reactor_rt.errors import StoreError
from reactor_rt.store.base import STMStore, StoredSTM

__all__ = ["Fault", "FaultyStore", "InjectedFault"]

Operation = Literal["load", "save", "applied_version", "delete", "list_ids", "copy"]


class InjectedFault(StoreError):
    """Raised when a `FaultyStore` fails a call on purpose (tests only)."""


@dataclass(frozen=True)
class Fault:
    """Fail the ``call``-th (1-based, counted per operation) call of ``op``.

    ``after=True`` runs the call on the wrapped store first, then raises (the effect happens, the
    answer is lost). ``error`` is raised instead of the default `InjectedFault`.
    """

    op: Operation
    call: int
    after: bool = False
    error: BaseException | None = field(default=None, compare=False)


class FaultyStore(STMStore):
    """Delegates to ``inner`` and raises where a `Fault` says so. ``calls`` counts calls per op."""

    def __init__(self, inner: STMStore, faults: list[Fault] | tuple[Fault, ...] = ()) -> None:
        super().__init__()
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self._faults: list[Fault] = list(faults)
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        """Arm another fault (its ``call`` counts from the start, not from now)."""
        with self._lock:
            self._faults.append(fault)

    def fail_next(self, op: Operation, *, after: bool = False, error: BaseException | None = None) -> None:
        """Fail the next call of ``op``."""
        with self._lock:
            self._faults.append(Fault(op, self.calls[op] + 1, after, error))

    def _run(self, op: Operation, fn, *args):  # type: ignore[no-untyped-def]
        with self._lock:
            self.calls[op] += 1
            n = self.calls[op]
            fault = next((f for f in self._faults if f.op == op and f.call == n), None)
        if fault is not None and not fault.after:
            raise fault.error or InjectedFault(f"injected fault: {op} call #{n} failed before running")
        result = fn(*args)
        if fault is not None:
            raise fault.error or InjectedFault(f"injected fault: {op} call #{n} failed after running")
        return result

    def _load(self, memory_id: str) -> StoredSTM | None:
        return self._run("load", self.inner.load, memory_id)

    def _save(self, memory_id: str, stm: torch.Tensor, expected_version: int, interaction: str | None) -> int:
        return self._run(
            "save",
            lambda: self.inner.save(
                memory_id, stm, expected_version=expected_version, interaction=interaction
            ),
        )

    def _applied_version(self, memory_id: str, interaction: str) -> int | None:
        return self._run("applied_version", self.inner.applied_version, memory_id, interaction)

    def _delete(self, memory_id: str) -> bool:
        return self._run("delete", self.inner.delete, memory_id)

    def _list_ids(self) -> list[str]:
        return self._run("list_ids", self.inner.list_ids)

    def _copy(self, src: str, dst: str) -> int:
        return self._run("copy", self.inner.copy, src, dst)

    def _close(self) -> None:
        self.inner.close()
