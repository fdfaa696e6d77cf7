"""Creates the runtime's named actors in one Ray namespace, and stops them."""

from __future__ import annotations

import asyncio
from typing import Any

import ray
import ray.exceptions
import structlog
import torch

from reactor_rt.actors.conductor import ConductorActor, ConductorConfig
from reactor_rt.actors.decoder import DecoderActor
from reactor_rt.actors.encoder import EncoderActor
from reactor_rt.actors.engine import ActorSet
from reactor_rt.actors.learner import LearnerActor
from reactor_rt.actors.memory_updater import MemoryUpdaterActor
from reactor_rt.actors.stm_store import STMStoreActor
from reactor_rt.errors import ReactorError, RuntimeUnavailableError
from reactor_rt.events.ray_bus import RayBus
from reactor_rt.model import ReactiveTransformer

__all__ = ["ACTOR_NAMES", "MODEL_REF", "launch_actors", "stop_actors"]

log = structlog.get_logger()

ACTOR_NAMES = ("decoder", "encoder", "memory", "stm", "learner", "conductor")
# a crashed actor comes back; its callers retry idempotent calls (DESIGN.md §5 "Faults")
_RESTARTS = 3
# key of the pinned constructor arguments (ObjectRefs) in the actors dict: not an actor, never killed
MODEL_REF = "model_ref"


def _options(name: str, namespace: str, **extra: Any) -> dict[str, Any]:
    # num_cpus=0: the actors share the machine's cores; none should wait for a free "CPU slot"
    return {"name": name, "namespace": namespace, "num_cpus": 0, "max_restarts": _RESTARTS, **extra}


def _refuse_if_running(namespace: str) -> None:
    for name in ACTOR_NAMES:
        try:
            ray.get_actor(name, namespace=namespace)
        except ValueError:
            continue
        raise ReactorError(
            f"a reactor-rt runtime already runs in Ray namespace {namespace!r} (actor {name!r} exists); "
            "use another namespace or stop that one first"
        )


async def launch_actors(model: ReactiveTransformer, *, store: str, namespace: str, event_log: str | None,
                        decoder_capacity: int, decoder_threads: int, max_queue: int,
                        max_new_tokens: int, align_finish_steps: int, compile_decode: bool,
                        learning: dict[str, Any] | None = None,
                        weights_dir: str | None = None, local_link: bool = True,
                        log_max_age: float | None = None, log_max_rows: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Start bus, decoder, encoder, memory updater, STM store, learner (unless ``learning`` is None)
    and conductor; returns ``(bus, actors)``. The learner keeps its own copy of the model and loads
    what it learned before from ``weights_dir``; the serving actors get those weights before the
    first query. ``local_link``: clients and actors on one node talk over Unix sockets for the hot
    path (see ``events.local_link``); False keeps every message on Ray. ``log_max_age`` (seconds) and
    ``log_max_rows`` bound the durable event log (see `EventLog`); None keeps everything."""
    _refuse_if_running(namespace)
    model_ref = ray.put(model)
    # Ray re-runs a crashed actor's constructor with the same arguments: objects passed by reference
    # must outlive this call, or every restart fails (ray-project/ray#53727). The facade holds them.
    with torch.no_grad():
        initial_ref = ray.put(model.init_stm(batch_size=1)[0].clone())  # > Ray's inline size: pinned too
    actors: dict[str, Any] = {}
    bus: RayBus | None = None
    try:
        # all processes start at once (each imports torch: seconds); the conductor only needs handles
        actors[MODEL_REF] = (model_ref, initial_ref)
        actors["decoder"] = DecoderActor.options(**_options("decoder", namespace)).remote(
            model_ref, capacity=decoder_capacity, threads=decoder_threads, align_finish_steps=align_finish_steps,
            compile=compile_decode)
        actors["encoder"] = EncoderActor.options(**_options("encoder", namespace)).remote(model_ref)
        actors["memory"] = MemoryUpdaterActor.options(**_options("memory", namespace)).remote(model_ref)
        actors["stm"] = STMStoreActor.options(**_options("stm", namespace)).remote(store, initial_ref)
        if learning is not None:
            actors["learner"] = LearnerActor.options(**_options("learner", namespace)).remote(
                model_ref, save_dir=weights_dir, **learning)
        model_actors = ActorSet(actors["decoder"], actors["encoder"], actors["memory"], actors["stm"],
                                actors.get("learner"))
        # the conductor hosts the event bus (and its durable log): RayBus talks to it
        actors["conductor"] = ConductorActor.options(**_options("conductor", namespace)).remote(
            model_actors, model.tokenizer, model.config,
            ConductorConfig(max_queue=max_queue, max_new_tokens=max_new_tokens, local_link=local_link), event_log,
            max_age=log_max_age, max_rows=log_max_rows)
        bus = RayBus(actors["conductor"], local_link=local_link)
        await asyncio.gather(*(actor.ping.remote() for name, actor in actors.items() if name != MODEL_REF))
        await actors["conductor"].sync_weights.remote()  # what was learned before a restart
        await actors["conductor"].start.remote()
    except BaseException as exc:
        await stop_actors(actors, bus)
        if isinstance(exc, ray.exceptions.RayError):
            raise RuntimeUnavailableError(f"the runtime's actors could not start: {exc}") from None
        raise
    log.info("reactor.started", namespace=namespace, store=store)
    return bus, actors


async def stop_actors(actors: dict[str, Any], bus: Any | None) -> None:
    """Stop the conductor first (no new work), then kill every actor and close the bus."""
    conductor = actors.get("conductor")
    if conductor is not None:
        try:
            await asyncio.wait_for(conductor.stop.remote(), timeout=10)
        except Exception:
            log.warning("reactor.conductor_stop_failed")
    stm = actors.get("stm")
    if stm is not None:
        try:
            await asyncio.wait_for(stm.close.remote(), timeout=10)
        except Exception:
            log.warning("reactor.stm_close_failed")
    if bus is not None:
        try:
            await asyncio.wait_for(bus.close(), timeout=10)
        except Exception:
            log.warning("reactor.bus_close_failed")
    for name, actor in actors.items():
        if name == MODEL_REF:
            continue
        try:
            ray.kill(actor, no_restart=True)
        except Exception:
            log.warning("reactor.kill_failed", actor=name)
