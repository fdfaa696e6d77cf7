"""Security: ids are never paths, every size has a limit, nothing untrusted is unpickled, Ray's dashboard
is off by default."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

import reactor_rt
from reactor_rt.errors import EventEncodeError, InvalidIdError
from reactor_rt.events import Query, codec
from reactor_rt.store import SQLiteSTMStore

ROOT = Path(reactor_rt.__file__).resolve().parent.parent
PACKAGES = [ROOT / "reactor_rt", ROOT / "actors", ROOT / "events"]
UNSAFE = re.compile(r"\b(pickle\.loads?|cloudpickle|dill|marshal\.loads?|torch\.load|yaml\.load|"
                    r"numpy\.load|np\.load|shelve|(?<![\w.])eval\(|(?<![\w.])exec\()")
# The training loop resumes from checkpoints it wrote itself into its own run directory (optimizer
# state needs torch's format); no serving path reads them. Anything else found here is a finding.
TRUSTED = {("reactor_rt/training/loop.py", "torch.load")}
PATH_IDS = ["../escape", "../../etc/passwd", "/tmp/abs", "a/b/c", "..", "C:\\x", "~root", "nul", "-rf"]


def test_nothing_untrusted_is_unpickled():
    found = []
    for package in PACKAGES:
        for path in package.rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                for match in UNSAFE.finditer(code):
                    if (rel, match.group(0)) not in TRUSTED:
                        found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_stores_and_checkpoints_use_safetensors():
    sources = {p.name: p.read_text() for p in (ROOT / "reactor_rt" / "store").glob("*.py")}
    assert "safetensors" in sources["codec.py"] and "safetensors" in sources["files.py"]
    assert "safetensors" in (ROOT / "reactor_rt" / "model" / "checkpoint.py").read_text()


@pytest.mark.parametrize("memory_id", PATH_IDS)
def test_an_id_is_never_a_path(tmp_path, memory_id, model):
    db = tmp_path / "store" / "stm.db"
    with SQLiteSTMStore(db) as store:
        before = set(tmp_path.rglob("*"))
        stm = model.init_stm(batch_size=1)[0]
        assert store.save(memory_id, stm, expected_version=0) == 1
        assert store.load(memory_id).version == 1
        created = {p for p in set(tmp_path.rglob("*")) - before if not p.name.startswith("stm.db")}
    assert not created, created
    assert not Path("/tmp/abs").exists() or memory_id != "/tmp/abs"


def test_ids_with_control_characters_or_oversize_are_refused():
    from reactor_rt.ids import validate_id

    for bad in ["", "a\x00b", "line\nbreak", "x" * 257, "\u202e"]:
        with pytest.raises(InvalidIdError):
            validate_id(bad)


def test_an_event_over_the_frame_limit_cannot_be_encoded():
    big = Query(subject="s", source="t", data={"text": "x" * (codec.DEFAULT_LIMITS.max_frame_bytes + 1)})
    with pytest.raises(EventEncodeError):
        codec.encode(big)


@pytest.mark.anyio
async def test_queries_over_the_queue_bound_are_refused_not_dropped(local_runtime, run_query, query):
    async with local_runtime(max_queue=2, max_new_tokens=4) as rt:
        results = await asyncio.gather(*(run_query(rt.bus, query("q", f"n{i}")) for i in range(8)))
    ends = [r[-1] for r in results]
    assert all(e.type in {"rx.memory.updated", "rx.error"} for e in ends)
    refused = [e for e in ends if e.type == "rx.error"]
    assert refused and all(e.data.code == "queue_full" for e in refused)
    assert len(ends) - len(refused) >= 2


@pytest.mark.anyio
async def test_a_query_over_the_token_limit_is_refused(local_runtime, run_query, query, model):
    async with local_runtime() as rt:
        events = await run_query(rt.bus, query("long", "word " * (model.config.max_query_tokens + 1)))
    assert events[-1].type == "rx.error" and events[-1].data.code == "query_too_long"


def test_ray_is_started_on_loopback_without_dashboard(monkeypatch):
    import ray

    from reactor_rt import runtime

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    assert runtime._ensure_ray(None) is True
    assert seen["include_dashboard"] is False
    import os

    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # binds to 127.0.0.1
