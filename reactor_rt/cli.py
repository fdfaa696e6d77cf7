"""The ``reactor-rt`` command line: chat, ask, events, train, eval."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from reactor_rt.errors import ReactorError

__all__ = ["main"]

UPDATE_WAIT_S = 2.0  # how long chat waits for a memory update before it shows the next prompt
CHAT_HELP = "commands: /new [NAME] new stream, /fork NAME copy this memory, /memory show STM stats, /quit"


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="bundled model name or checkpoint dir (default: the bundled tiny)")
    p.add_argument("--store", default=None, help="STM store URL: sqlite:///path.db or memory:// "
                   "(default $REACTOR_RT_HOME/stm.db, REACTOR_RT_HOME defaulting to ~/.reactor-rt)")
    p.add_argument("--address", default=None, help="join this Ray cluster instead of starting a local one")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--compile", action="store_true",
                   help="compile the decoder's one-answer step with torch.compile (faster tokens; seconds to start)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the model's)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reactor-rt", description="Event-driven runtime for Reactive Transformers")
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)

    chat = sub.add_parser("chat", help="interactive chat; answers stream, the memory updates in the background")
    chat.add_argument("--stream", default="chat", help="stream id (its STM persists in the store)")
    _runtime_args(chat)

    ask = sub.add_parser("ask", help="ask one question on a stream and print the answer")
    ask.add_argument("--stream", required=True)
    ask.add_argument("text")
    _runtime_args(ask)

    ev = sub.add_parser("events", help="print events from the durable event log (JSON lines)")
    ev.add_argument("--store", default=None, help="the store whose event log to read "
                    "(default $REACTOR_RT_HOME/stm.db, REACTOR_RT_HOME defaulting to ~/.reactor-rt)")
    ev.add_argument("--subject", default=None)
    ev.add_argument("--after", type=int, default=0, help="only events with seq > AFTER (with --subject)")
    ev.add_argument("--follow", action="store_true", help="keep printing new events as they are logged")

    train = sub.add_parser("train", help="train a model with a recipe")
    train.add_argument("--recipe", default="tiny")
    train.add_argument("--out", default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--restart", action="store_true", help="start over instead of resuming an interrupted run")

    ev2 = sub.add_parser("eval", help="evaluate a model")
    ev2.add_argument("task", choices=["recall"])
    ev2.add_argument("--model", default="tiny")
    ev2.add_argument("--json", action="store_true")
    ev2.add_argument("--dialogues", type=int, default=200)

    imp = sub.add_parser("import-rxlm", help="convert an RxLM (RxT-Alpha/Beta) checkpoint dir into a reactor-rt one")
    imp.add_argument("src", help="RxLM checkpoint directory (config.json, model.safetensors, tokenizer.json)")
    imp.add_argument("out", help="output directory for the reactor-rt checkpoint")
    imp.add_argument("--tokenizer", default=None, help="tokenizer.json to use when SRC has none")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``reactor-rt`` script."""
    args = _parser().parse_args(argv)
    from reactor_rt.log_setup import configure_logging

    configure_logging(args.log_level)
    try:
        if args.command == "chat":
            return asyncio.run(_chat(args))
        if args.command == "ask":
            return asyncio.run(_ask(args))
        if args.command == "events":
            return _events(args)
        if args.command in ("train", "eval"):
            return _training(args)
        if args.command == "import-rxlm":
            from reactor_rt.rxlm.cli import import_rxlm_command

            return import_rxlm_command(args.src, args.out, args.tokenizer)
    except ReactorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


def _start(args: argparse.Namespace) -> Any:
    from reactor_rt.runtime import Reactor

    return Reactor.start(model=args.model, store=args.store, address=args.address, max_new_tokens=args.max_new_tokens,
                         compile_decode=args.compile)


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return {} if args.temperature is None else {"temperature": args.temperature}


async def _ask(args: argparse.Namespace) -> int:
    async with _start(args) as rx:
        stream = await rx.stream(args.stream)
        async for event in stream.ask(args.text, max_new_tokens=args.max_new_tokens, **_sampling(args)):
            if event.type == "rx.response.chunk":
                print(event.data.text, end="", flush=True)
            elif event.type == "rx.response.done":
                print(flush=True)
        # the loop ran to rx.memory.updated: the new STM is persisted before we stop
    return 0


async def _chat(args: argparse.Namespace) -> int:
    print("starting reactor-rt (the first start takes a few seconds)...", file=sys.stderr)
    async with _start(args) as rx:
        stream = await rx.stream(args.stream)
        print(f"stream {stream.id!r} (memory {stream.memory_id!r}, version {stream.stm_version}). {CHAT_HELP}")
        background: set[asyncio.Task[None]] = set()
        while True:
            try:
                line = await _read_line(f"{stream.id}> ")
            except EOFError:
                line = "/quit"
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                try:
                    stream = await _chat_command(rx, stream, line)
                except ReactorError as exc:  # e.g. /new with a bad id, /fork onto a memory that exists
                    print(f"[error] {exc}")
                    continue
                if stream is None:
                    break
                continue
            await _chat_turn(stream, line, args, background)
        if background:
            print("(waiting for the memory update to finish...)")
            await asyncio.gather(*background, return_exceptions=True)
    return 0


async def _read_line(prompt: str) -> str:
    """``input(prompt)`` without blocking the loop. The read runs in a daemon thread of its own: Ctrl-C
    then ends the chat at once (a thread of asyncio's executor is waited for when ``asyncio.run``
    ends, i.e. until the user pressed Enter)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    def settle(line: str | None, error: BaseException | None) -> None:
        if answer.done():  # the chat stopped waiting (cancelled)
            return
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(line or "")

    def read() -> None:
        try:
            line, error = input(prompt), None
        except BaseException as exc:  # EOFError (stdin closed), or the interpreter going down
            line, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits for this line
            loop.call_soon_threadsafe(settle, line, error)

    threading.Thread(target=read, name="reactor-rt-input", daemon=True).start()
    return await answer


async def _chat_turn(stream: Any, text: str, args: argparse.Namespace, background: set[asyncio.Task[None]]) -> None:
    events = stream.ask(text, max_new_tokens=args.max_new_tokens, **_sampling(args))
    try:
        async for event in events:
            if event.type == "rx.response.chunk":
                print(event.data.text, end="", flush=True)
            elif event.type == "rx.response.done":
                print()
                break
    except ReactorError as exc:
        print(f"\n[error] {exc}")
        await events.aclose()
        return

    late = False  # the next prompt is shown: report the end on a line of its own

    async def finish_update() -> None:
        try:
            async for event in events:
                if event.type == "rx.memory.updating":
                    print("  (updating memory…", end="", flush=True)
                elif event.type == "rx.memory.updated":
                    version = event.data.version
                    print(f"\n  (memory updated: version {version})" if late else f" done: version {version})",
                          flush=True)
        except ReactorError as exc:
            print(f"\n  [memory update failed] {exc}", flush=True)

    task = asyncio.get_running_loop().create_task(finish_update())
    # an update takes milliseconds: wait for it before the next prompt, so its lines do not land in the
    # middle of what the user types; a slow one finishes in the background (the next query queues)
    done, _ = await asyncio.wait({task}, timeout=UPDATE_WAIT_S)
    if not done:
        late = True
        print(" still running)", flush=True)
        background.add(task)
        task.add_done_callback(background.discard)


async def _chat_command(rx: Any, stream: Any, line: str) -> Any:
    cmd, _, arg = line.partition(" ")
    arg = arg.strip()
    if cmd in ("/quit", "/exit"):
        return None
    if cmd == "/new":
        new = await rx.stream(arg or f"chat-{uuid.uuid4().hex[:12]}")  # a fresh stream, even twice a second
        print(f"switched to stream {new.id!r} (version {new.stm_version})")
        return new
    if cmd == "/fork":
        if not arg:
            print("usage: /fork NAME")
            return stream
        new = await stream.fork(arg)
        print(f"forked {stream.id!r} into {new.id!r}; now on {new.id!r}")
        return new
    if cmd == "/memory":
        stm = await stream.memory()
        print(f"memory {stream.memory_id!r} version {stream.stm_version}: shape {tuple(stm.shape)}, "
              f"rms {stm.pow(2).mean().sqrt().item():.4f}")
        return stream
    print(CHAT_HELP)
    return stream


def _events(args: argparse.Namespace) -> int:
    from reactor_rt.events.log import EventLog
    from reactor_rt.runtime import default_store, event_log_path

    path = event_log_path(args.store or default_store())
    if path == ":memory:":
        print("error: only a sqlite:/// store has a durable event log", file=sys.stderr)
        return 1
    if not args.follow and not os.path.exists(path):  # opening it would create an empty log (a typo: no output)
        print(f"error: no event log at {path!r} (no runtime has used this store yet)", file=sys.stderr)
        return 1
    log = EventLog(path)
    seen: dict[str, int] = {}  # subject -> last seq printed
    try:
        while True:
            subjects = [args.subject] if args.subject is not None else log.subjects()
            for subject in subjects:
                for event in log.read(subject, after=seen.get(subject, args.after)):
                    print(event.to_cloudevent_json(), flush=True)
                    seen[subject] = event.seq
            if not args.follow:
                return 0
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        log.close()


def _training(args: argparse.Namespace) -> int:
    from reactor_rt import cli_train

    if args.command == "train":
        return int(cli_train.train_command(recipe=args.recipe, out=args.out, seed=args.seed,
                                                resume=not args.restart) or 0)
    return int(cli_train.eval_recall_command(model=args.model, json_output=args.json, dialogues=args.dialogues) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
