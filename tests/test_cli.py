"""The reactor-rt command line: events from the durable log, ask and chat over a real runtime."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import torch

from reactor_rt.cli import main
from reactor_rt.events import Query
from reactor_rt.events.log import EventLog
from reactor_rt.model import ReactiveTransformer, RxTConfig


@pytest.fixture(autouse=True)
def _restore_logging():
    """main() configures structlog for a terminal; leave the library default for the other tests."""
    yield
    import structlog

    structlog.reset_defaults()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model"
    ReactiveTransformer(RxTConfig.preset("tiny")).save_pretrained(path)
    return str(path)


def test_events_prints_the_log_as_cloudevents(tmp_path, capsys):
    log = EventLog(str(tmp_path / "stm.events.db"))
    for i in range(3):
        log.append(Query(subject="alice", source="t", seq=i + 1, data={"text": f"q{i}"}))
    log.close()
    assert main(["events", "--store", f"sqlite:///{tmp_path}/stm.db", "--subject", "alice", "--after", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["data"]["text"] for e in lines] == ["q1", "q2"]
    assert all(e["specversion"] == "1.0" and e["type"] == "rx.query" for e in lines)


def test_events_rejects_a_store_without_a_log(capsys):
    assert main(["events", "--store", "memory://"]) == 1


def test_events_on_a_store_with_no_log_yet_is_an_error_and_creates_nothing(tmp_path, capsys):
    """A mistyped store path printed nothing, exited 0 and left an empty event log behind."""
    assert main(["events", "--store", f"sqlite:///{tmp_path}/typo.db"]) == 1
    assert "no event log" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.ray
def test_ask_and_chat(ray_local, checkpoint, tmp_path, capsys, monkeypatch):
    store = f"sqlite:///{tmp_path}/stm.db"
    common = ["--model", checkpoint, "--store", store, "--max-new-tokens", "4"]
    assert main(["ask", "--stream", "cli", *common, "hello"]) == 0
    lines = iter(["hi there", "/memory", "/new " + "x" * 300, "/fork cli-copy", "/new other", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--stream", "cli", *common]) == 0
    out = capsys.readouterr().out
    assert "memory 'cli' version 2" in out  # ask wrote version 1, the chat turn version 2
    # the update is reported on the answer's line pair before the next prompt, not in the middle of it
    assert "(updating memory… done: version 2)" in out
    assert "forked 'cli' into 'cli-copy'" in out and "switched to stream 'other'" in out
    assert "[error]" in out  # a bad /new is reported and the chat goes on


def test_a_prompt_waiting_for_input_does_not_hold_up_the_exit(monkeypatch):
    """Ctrl-C at the chat prompt: the chat ends at once, not when the user next presses Enter."""
    import threading

    from reactor_rt import cli

    pressed = threading.Event()
    monkeypatch.setattr("builtins.input", lambda prompt="": pressed.wait(10) and "")
    threading.Timer(4, pressed.set).start()  # the old executor thread would let asyncio.run end only now

    async def chat_interrupted() -> None:
        task = asyncio.get_running_loop().create_task(cli._read_line("> "))
        await asyncio.sleep(0.1)
        task.cancel()

    started = time.monotonic()
    asyncio.run(chat_interrupted())
    assert time.monotonic() - started < 2
    pressed.set()


def test_read_line_returns_the_line_and_raises_eof(monkeypatch):
    from reactor_rt import cli

    monkeypatch.setattr("builtins.input", lambda prompt="": "hello")
    assert asyncio.run(cli._read_line("> ")) == "hello"

    def closed(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr("builtins.input", closed)
    with pytest.raises(EOFError):
        asyncio.run(cli._read_line("> "))


def test_new_without_a_name_opens_a_fresh_stream_each_time(monkeypatch):
    """Two /new within one second landed on the same stream (its name was the time in seconds)."""
    from reactor_rt.cli import _chat_command

    class FakeReactor:
        def __init__(self) -> None:
            self.opened: list[str] = []

        async def stream(self, stream_id: str):  # type: ignore[no-untyped-def]
            self.opened.append(stream_id)
            return type("S", (), {"id": stream_id, "stm_version": 0})()

    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)  # both in the same second
    rx = FakeReactor()
    first = asyncio.run(_chat_command(rx, None, "/new"))
    second = asyncio.run(_chat_command(rx, first, "/new"))
    assert first.id != second.id and rx.opened == [first.id, second.id]


@pytest.mark.parametrize("flags, compiled", [([], False), (["--compile"], True)])
def test_chat_and_ask_compile_the_decode_step_on_request(flags, compiled):
    from reactor_rt import cli

    args = cli._parser().parse_args(["ask", "--stream", "s", *flags, "hi"])
    assert cli._start(args)._options["compile_decode"] is compiled
