"""Decorator-style handlers on any bus: ``@bus.subscriber()`` with a typed argument (FastStream's style).

    bus = InProcessBus()

    @bus.subscriber()                        # types come from the annotation
    async def on_done(ev: ResponseDone) -> None: ...

    @bus.subscriber("rx.memory.", subject="alice")
    def on_memory(ev: Event) -> None: ...

    async with bus.serve():                  # handlers are subscribed when this enters
        ...
"""

from __future__ import annotations

import inspect
import types as pytypes
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import structlog

from reactor_rt.events.schemas import Event

__all__ = ["Handler", "HandlerRegistry", "types_from_annotation"]

log = structlog.get_logger()

H = TypeVar("H", bound=Callable[..., Any])


@dataclass(frozen=True)
class Handler:
    """A registered handler and its filter."""

    func: Callable[[Event], Awaitable[None] | None]
    types: tuple[str, ...] | None
    subject: str | None


def types_from_annotation(func: Callable[..., Any]) -> tuple[str, ...] | None:
    """The event types a handler's first parameter accepts: a concrete event class or a union of them
    gives their types; `Event`, `Any` or no annotation gives None (all types)."""
    params = list(inspect.signature(func).parameters)
    if not params:
        raise TypeError(f"handler {func!r} must take the event as its first argument")
    hint = typing.get_type_hints(func).get(params[0])
    is_union = isinstance(hint, pytypes.UnionType) or typing.get_origin(hint) is typing.Union
    members = typing.get_args(hint) if is_union else (hint,)
    names: list[str] = []
    for cls in members:
        if not (isinstance(cls, type) and issubclass(cls, Event)) or cls is Event:
            return None
        default = cls.model_fields["type"].default
        if not isinstance(default, str):
            return None
        names.append(default)
    return tuple(names)


class HandlerRegistry:
    """Mixin for a bus with `subscribe()`: register handlers with `subscriber`, run them with `serve`."""

    def __init__(self) -> None:
        self._handlers: list[Handler] = []

    @property
    def handlers(self) -> tuple[Handler, ...]:
        """The registered handlers."""
        return tuple(self._handlers)

    def subscriber(self, *types: str, subject: str | None = None) -> Callable[[H], H]:
        """Decorator: call the function with each matching event while `serve()` runs.

        With no `types`, they come from the annotation of the function's first parameter.
        """

        def register(func: H) -> H:
            chosen: tuple[str, ...] | None = types or types_from_annotation(func)
            self._handlers.append(Handler(func=func, types=chosen, subject=subject))
            return func

        return register

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[None]:
        """Subscribe every registered handler, run them while the block runs, stop them on exit.

        A handler that raises is logged and keeps receiving later events. An error of the block itself
        comes out as it was raised; a subscription that fails (`SubscriberOverflowError` for a handler
        that fell behind, `RuntimeUnavailableError` for a bus that went away) ends the block with that
        error (an `ExceptionGroup` only when several failed at once).
        """
        subscribe = self.subscribe  # type: ignore[attr-defined]
        subs = [await subscribe(types=h.types, subject=h.subject) for h in self._handlers]
        raised: BaseException | None = None
        try:
            try:
                async with anyio.create_task_group() as tg:
                    for handler, sub in zip(self._handlers, subs, strict=True):
                        tg.start_soon(_run_handler, handler, sub)
                    try:
                        yield
                    except BaseException as exc:  # re-raised below, not wrapped by the task group
                        raised = exc
                    finally:
                        tg.cancel_scope.cancel()
            except BaseExceptionGroup as group:  # the handlers' subscriptions failed
                if len(group.exceptions) == 1:
                    raise group.exceptions[0] from None
                raise
            if raised is not None:
                raise raised
        finally:
            for sub in subs:
                await sub.aclose()


async def _run_handler(handler: Handler, sub: Any) -> None:
    async for event in sub:
        try:
            result = handler.func(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            name = getattr(handler.func, "__qualname__", repr(handler.func))
            log.exception("event_bus.handler_failed", handler=name, type=event.type)

