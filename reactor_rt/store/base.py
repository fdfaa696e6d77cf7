"""The STM store interface: versioned, compare-and-set, idempotent persistence of one tensor per memory id.

Public methods validate their arguments and then call the ``_``-prefixed hooks that an implementation
provides, so a new store (a network one, say) implements six small methods and inherits the checks.

Semantics every store keeps (DESIGN.md §5 "State"):

* a memory that does not exist has version 0; the first save makes version 1, each save adds one;
* ``save(..., expected_version=v)`` writes only when the current version is ``v`` (compare-and-set),
  else it raises `StaleVersionError`;
* ``save(..., interaction=i)`` is applied at most once per memory: when ``i`` was already applied, the
  version it produced is returned and nothing is written (even if ``expected_version`` is stale by
  then: a retry of a write whose acknowledgement was lost must succeed). The store remembers the last
  ``history_size`` interaction ids per memory, durably when the store is durable;
* ``save`` returns only once the write is durable (for a durable store);
* tensors are copied in and out (stored on the CPU): a caller can never mutate stored state.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import torch

from reactor_rt.errors import StaleVersionError, StoreError
from reactor_rt.ids import validate_id

__all__ = [
    "DEFAULT_HISTORY_SIZE",
    "STMStore",
    "StoredSTM",
    "check_history_size",
    "copy_target_exists_error",
    "stale_version_error",
]

# Enough to cover every retry window the runtime has, small enough to keep one memory's rows cheap.
DEFAULT_HISTORY_SIZE = 1024


@dataclass(frozen=True, eq=False)
class StoredSTM:
    """One memory as the store holds it. ``stm`` is the caller's own copy (CPU)."""

    memory_id: str
    version: int  # >= 1
    stm: torch.Tensor
    interaction: str | None  # the interaction that produced this version, if any
    updated_at: float  # unix time (seconds) of the write


def stale_version_error(memory_id: str, expected: int, current: int) -> StaleVersionError:
    """A `StaleVersionError` that says what was expected and what is there (also as attributes)."""
    detail = "the memory does not exist (version 0)" if current == 0 else f"the current version is {current}"
    err = StaleVersionError(f"stale write to memory {memory_id!r}: expected version {expected}, but {detail}")
    err.memory_id = memory_id  # type: ignore[attr-defined]
    err.expected_version = expected  # type: ignore[attr-defined]
    err.current_version = current  # type: ignore[attr-defined]
    return err


def copy_target_exists_error(src: str, dst: str, current: int) -> StaleVersionError:
    """The `StaleVersionError` that `STMStore.copy` raises when its destination already exists."""
    err = StaleVersionError(
        f"cannot copy memory {src!r} to {dst!r}: {dst!r} already exists (version {current}); "
        "copy() only creates new memories, delete the destination first to replace it"
    )
    err.memory_id = dst  # type: ignore[attr-defined]
    err.expected_version = 0  # type: ignore[attr-defined]
    err.current_version = current  # type: ignore[attr-defined]
    return err


def _check_version(expected_version: object) -> int:
    return _int_at_least(expected_version, "expected_version", 0, " (0 = absent)")


def check_history_size(history_size: object) -> int:
    """A store's ``history_size``: an int >= 1 (a float would only fail later, at the first write)."""
    return _int_at_least(history_size, "history_size", 1)


def _int_at_least(value: object, name: str, minimum: int, note: str = "") -> int:
    # bool is an int subclass: True would silently mean 1
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}{note}, got {value}")
    return value


def _check_tensor(stm: object) -> torch.Tensor:
    if not isinstance(stm, torch.Tensor):
        raise TypeError(f"stm must be a torch.Tensor, not {type(stm).__name__}")
    if stm.layout != torch.strided:
        raise TypeError(f"stm must be a dense tensor, not {stm.layout}")
    if stm.is_meta:  # shape and dtype only: there is nothing to store
        raise TypeError("stm must hold data, not be a meta tensor")
    return stm


class STMStore(abc.ABC):
    """Versioned STM persistence. Thread-safe; usable as a context manager (closes on exit).

    Implementations provide ``_load``, ``_save``, ``_applied_version``, ``_delete``, ``_list_ids`` and
    ``_close``; ``_copy`` has a generic default (load + create) that a store may make atomic.
    Arguments reach the hooks already validated; the hooks are never called after `close`.
    """

    def __init__(self) -> None:
        self._closed = False
        self._close_lock = threading.Lock()

    # -- public API ---------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._closed

    def load(self, memory_id: str) -> StoredSTM | None:
        """The memory's latest version, or None when it does not exist.

        Raises `StoreError` (naming the memory id) when the stored row cannot be decoded.
        """
        self._check_open()
        return self._load(validate_id(memory_id, "memory"))

    def save(
        self,
        memory_id: str,
        stm: torch.Tensor,
        *,
        expected_version: int,
        interaction: str | None = None,
    ) -> int:
        """Write ``stm`` as the next version of the memory and return that version.

        ``expected_version`` must be the current version (0 when the memory does not exist yet), else
        `StaleVersionError`. When ``interaction`` was already applied to this memory, returns the
        version it produced and writes nothing. Durable when it returns.
        """
        self._check_open()
        memory_id = validate_id(memory_id, "memory")
        if interaction is not None:
            interaction = validate_id(interaction, "interaction")
        expected_version = _check_version(expected_version)
        stm = _check_tensor(stm)
        # a private CPU copy: the caller may keep mutating its tensor after save() returns
        stm = stm.detach().to("cpu", copy=True).contiguous()
        return self._save(memory_id, stm, expected_version, interaction)

    def applied_version(self, memory_id: str, interaction: str) -> int | None:
        """The version that ``interaction`` produced for this memory, or None if it is not remembered."""
        self._check_open()
        return self._applied_version(
            validate_id(memory_id, "memory"), validate_id(interaction, "interaction")
        )

    def delete(self, memory_id: str) -> bool:
        """Forget the memory and its interaction history; True if it existed.

        A later save starts again from ``expected_version=0``.
        """
        self._check_open()
        return self._delete(validate_id(memory_id, "memory"))

    def list_ids(self) -> list[str]:
        """Every stored memory id, sorted."""
        self._check_open()
        return sorted(self._list_ids())

    def copy(self, src: str, dst: str) -> int:
        """Fork: create memory ``dst`` holding ``src``'s current STM, at version 1; returns 1.

        ``dst`` must not exist: when it does (``src == dst`` included), raises `StaleVersionError`
        (a create is a compare-and-set on version 0) and changes nothing; delete ``dst`` first to
        replace it. ``dst`` starts with an empty interaction history. A missing ``src`` raises
        `StoreError`.
        """
        self._check_open()
        return self._copy(validate_id(src, "memory"), validate_id(dst, "memory"))

    def close(self) -> None:
        """Release the store's resources. Idempotent; any later call raises `StoreError`."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._close()

    def __enter__(self) -> Self:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- implementation hooks -----------------------------------------------------------------------

    @abc.abstractmethod
    def _load(self, memory_id: str) -> StoredSTM | None: ...

    @abc.abstractmethod
    def _save(self, memory_id: str, stm: torch.Tensor, expected_version: int, interaction: str | None) -> int:
        """``stm`` is already a private contiguous CPU tensor the store may keep."""

    @abc.abstractmethod
    def _applied_version(self, memory_id: str, interaction: str) -> int | None: ...

    @abc.abstractmethod
    def _delete(self, memory_id: str) -> bool: ...

    @abc.abstractmethod
    def _list_ids(self) -> list[str]: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    def _copy(self, src: str, dst: str) -> int:
        # Generic fork: snapshot src, then create dst with a compare-and-set on version 0.
        source = self._load(src)
        if source is None:
            raise StoreError(f"cannot copy memory {src!r}: it does not exist")
        try:
            return self._save(dst, source.stm, 0, None)
        except StaleVersionError as err:
            current = getattr(err, "current_version", -1)
            raise copy_target_exists_error(src, dst, current) from None

    # -- helpers ------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{type(self).__name__} is closed")
