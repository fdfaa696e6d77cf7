"""The STM store: the current version of every memory, handed out as handles and persisted.

``STMRegistry`` is plain (a cache in front of an :class:`~reactor_rt.store.STMStore`); ``STMStoreActor``
wraps it in Ray and makes exactly one ``ray.put`` per version, so every reader of a version shares
one object in Ray's store.

A conductor on the same node commits over a local link and gets handles without the reference back
(the version is durable when the reply leaves): the next update and the decoder get that STM over
links too, so its ``ray.put`` (about 1 ms, and work for the raylet) happens only if someone asks for
the handle through Ray, once.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from typing import Any

import ray
import torch

from reactor_rt.actors.handles import STMHandle, tensor_from_wire
from reactor_rt.actors.heap import settle_actor_process
from reactor_rt.events.local_link import LinkHost, LinkServer
from reactor_rt.store import STMStore, open_store

__all__ = ["STMRegistry", "STMStoreActor", "STMStoreActorImpl"]


class STMRegistry:
    """Versioned STMs by memory id. A memory never written is version 0: the model's initial STM."""

    # latest versions cached in memory; the least recently used beyond these bounds (a count and bytes:
    # a large model's STM is megabytes) are read from the store again
    MAX_CACHED = 4096
    MAX_CACHED_BYTES = 512 << 20

    def __init__(self, store: STMStore, initial: torch.Tensor) -> None:
        self.store = store
        self.initial = initial.detach().clone()  # (layers, slots, dim)
        self._current: OrderedDict[str, tuple[int, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, memory_id: str) -> tuple[int, torch.Tensor]:
        """``(version, stm)`` of the memory's latest version (cached after the first read)."""
        with self._lock:
            if memory_id in self._current:
                self._current.move_to_end(memory_id)
                return self._current[memory_id]
        stored = self.store.load(memory_id)
        if stored is None:
            current = (0, self.initial)
        else:
            self._check_stm(memory_id, stored.stm)  # a row this model cannot read: a StoreError, not a broken turn
            current = (stored.version, stored.stm)
        with self._lock:
            self._current.setdefault(memory_id, current)
            self._bound()
            return self._current[memory_id]

    def commit(
        self, memory_id: str, expected_version: int, stm: torch.Tensor, interaction: str | None
    ) -> tuple[int, torch.Tensor]:
        """Persist ``stm`` as the next version (compare-and-set, idempotent on ``interaction``)."""
        self._check_stm(memory_id, stm)
        if interaction is not None and self.store.applied_version(memory_id, interaction) is not None:
            # a retry of an interaction already applied: nothing is written; serve what is stored
            self.forget(memory_id)
            return self.load(memory_id)
        try:
            version = self.store.save(memory_id, stm, expected_version=expected_version, interaction=interaction)
        except Exception:
            # the write may have landed with its answer lost: the cache must not hide what is stored
            self.forget(memory_id)
            raise
        current = (version, stm.detach().clone())
        with self._lock:
            self._current[memory_id] = current
            self._current.move_to_end(memory_id)
            self._bound()
        return current

    def fork(self, src: str, dst: str) -> tuple[int, torch.Tensor]:
        """Create memory ``dst`` as a copy of ``src``'s latest STM (the initial one if ``src`` is new)."""
        _, stm = self.load(src)
        return self.commit(dst, 0, stm, None)

    def _bound(self) -> None:
        limit = max(1, min(self.MAX_CACHED, self.MAX_CACHED_BYTES // self.stm_bytes))
        while len(self._current) > limit:  # under the lock; the newest entry is never dropped
            self._current.popitem(last=False)

    @property
    def stm_bytes(self) -> int:
        """The size of one STM of this model (every version has the initial one's shape and dtype)."""
        return self.initial.numel() * self.initial.element_size()

    def forget(self, memory_id: str) -> None:
        """Drop the cached version (the next read goes to the store)."""
        with self._lock:
            self._current.pop(memory_id, None)

    def _check_stm(self, memory_id: str, stm: torch.Tensor) -> None:
        """Only an STM this model can read becomes a version: its shape and dtype, finite values (an
        imported file, or an update gone wrong, would otherwise break every later turn of the memory)."""
        from reactor_rt.errors import StoreError

        if stm.shape != self.initial.shape:
            raise StoreError(
                f"memory {memory_id[:256]!r} has shape {tuple(stm.shape)}, but this model's STM is "
                f"{tuple(self.initial.shape)}"
            )
        if stm.dtype != self.initial.dtype:
            raise StoreError(f"memory {memory_id[:256]!r} has dtype {stm.dtype}, but this model's STM is "
                             f"{self.initial.dtype}")
        if not _all_finite(stm):
            raise StoreError(f"memory {memory_id[:256]!r} holds NaN or infinite values: not stored")


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every value is finite. A float64 sum carries NaN and infinities through and cannot
    overflow for narrower floats: one reduction, ~6x faster than ``isfinite(t).all()`` on an STM
    (which allocates a mask), and it runs on every commit."""
    if t.is_floating_point() and t.element_size() < 8:
        return bool(torch.isfinite(t.sum(dtype=torch.float64)))
    return bool(torch.isfinite(t).all())


class STMStoreActorImpl(LinkHost):
    """Ray actor named ``stm``. Hands out ``STMHandle``s whose tensors live in Ray's object store.
    Async so that its local link is served by the actor's event loop; no method awaits, so calls run
    one at a time as in a synchronous actor."""

    # recent versions stay reachable: live learning rebuilds an example from the STM its answer read
    HISTORY = 16
    # each kept version pins one STM in Ray's object store: bound them across all memories, by count and
    # bytes (the least recently used memories lose their old versions first), so memory does not grow
    # with the streams
    MAX_KEPT = 4096
    MAX_KEPT_BYTES = 1 << 30

    def __init__(self, store_url: str, initial: torch.Tensor) -> None:
        self.registry = STMRegistry(open_store(store_url), initial)
        # every memory not written yet reads the initial STM: one object in Ray and one token for all
        # (the decoder projects its memory keys/values once, the conductor fetches it once)
        self._initial = STMHandle("", 0, ray.put(self.registry.initial))
        self._handles: OrderedDict[str, OrderedDict[int, STMHandle]] = OrderedDict()
        self._kept = 0
        self._unput: dict[tuple[str, int], torch.Tensor] = {}  # handed out over the link, not yet in Ray
        self.link = LinkServer({"commit_many": self._commit_many_wired}, {})
        settle_actor_process()

    def _handle(self, memory_id: str, put: bool = True) -> STMHandle:
        """The latest version as a handle; ``put=False`` leaves its ``ray.put`` until a handle with the
        reference is asked for."""
        version, stm = self.registry.load(memory_id)
        history = self._handles.setdefault(memory_id, OrderedDict())
        self._handles.move_to_end(memory_id)
        if version not in history:
            if version == 0:  # never written: the shared initial STM (nothing of its own to put)
                history[version] = dataclasses.replace(self._initial, memory_id=memory_id)
            elif put:
                history[version] = STMHandle(memory_id, version, ray.put(stm))
            else:
                history[version] = STMHandle(memory_id, version, None)
                self._unput[(memory_id, version)] = stm
            self._kept += 1
            while len(history) > self.HISTORY:
                old, _ = history.popitem(last=False)
                self._unput.pop((memory_id, old), None)
                self._kept -= 1
            self._evict()
        handle = history[version]
        if put and handle.stm is None:
            handle = self._put(memory_id, version) or handle
        return handle

    def _put(self, memory_id: str, version: int) -> STMHandle | None:
        """Give a version handed out without its reference its one ``ray.put`` (same token)."""
        stm = self._unput.pop((memory_id, version), None)
        history = self._handles.get(memory_id)
        handle = None if history is None else history.get(version)
        if handle is None or stm is None:
            return handle
        handle = history[version] = dataclasses.replace(handle, stm=ray.put(stm))  # type: ignore[index]
        return handle

    def _evict(self) -> None:
        limit = max(1, min(self.MAX_KEPT, self.MAX_KEPT_BYTES // self.registry.stm_bytes))
        while self._kept > limit:
            oldest_memory, history = next(iter(self._handles.items()))
            old, _ = history.popitem(last=False)
            self._unput.pop((oldest_memory, old), None)
            self._kept -= 1
            if not history:
                del self._handles[oldest_memory]

    async def handle(self, memory_id: str) -> STMHandle:
        """The latest version of the memory as a handle."""
        return self._handle(memory_id)

    async def handle_at(self, memory_id: str, version: int) -> STMHandle | None:
        """A recent version of the memory, or None when it is no longer kept.

        The latest version is always kept: it is in the store even when this actor has not handed it
        out since it (re)started."""
        handle = self._handles.get(memory_id, {}).get(version)
        if handle is None:
            # after a restart the handles are gone, but the version a caller last saw is often the latest
            return self._handle(memory_id) if self.registry.load(memory_id)[0] == version else None
        if handle.stm is None:
            handle = self._put(memory_id, version)
        return handle

    def _commit(self, memory_id: str, expected_version: int, stm: torch.Tensor, interaction: str | None,
                put: bool = True) -> STMHandle:
        self.registry.commit(memory_id, expected_version, stm, interaction)
        return self._handle(memory_id, put)

    async def commit(self, memory_id: str, expected_version: int, stm: torch.Tensor,
                     interaction: str | None) -> STMHandle:
        """Persist the new version (durable before this returns), then hand it out."""
        return self._commit(memory_id, expected_version, stm, interaction)

    async def commit_many(self, items: list[tuple[str, int, str | None]],
                          stms: list[torch.Tensor]) -> list[STMHandle | Exception]:
        """`commit` for several memories: each ``(memory_id, expected_version, interaction)`` with its
        STM; an item that fails gets its exception in its place, the others are still committed."""
        return self._commit_each(items, stms, put=True)

    async def _commit_many_wired(self, items: list[list[Any]], stms: list[list[Any]]) -> list[Any]:
        """`commit_many` over the local link: STMs as ``tensor_to_wire`` fields in, handles without
        their reference (``STMHandle.to_wire``) or the item's exception out."""
        # views of the received message: the store and the registry each keep a copy of their own
        out = self._commit_each(items, [tensor_from_wire(s, copy=False) for s in stms], put=False)
        return [r.to_wire() if isinstance(r, STMHandle) else r for r in out]

    def _commit_each(self, items: list[Any], stms: list[torch.Tensor], put: bool) -> list[STMHandle | Exception]:
        out: list[STMHandle | Exception] = []
        for (memory_id, expected, interaction), stm in zip(items, stms, strict=True):
            try:
                out.append(self._commit(memory_id, expected, stm, interaction, put))
            except Exception as exc:
                out.append(exc)
        return out

    async def fork(self, src: str, dst: str) -> STMHandle:
        self.registry.fork(src, dst)
        return self._handle(dst)

    async def tensor(self, memory_id: str) -> tuple[int, torch.Tensor]:
        return self.registry.load(memory_id)

    async def close(self) -> None:
        self.registry.store.close()

    async def ping(self) -> bool:
        return True


STMStoreActor = ray.remote(STMStoreActorImpl)
