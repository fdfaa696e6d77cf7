"""Security: ids are never paths, every size has a limit, nothing untrusted is unpickled, Ray's dashboard
is off by default."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
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
    from ray._private import ray_constants

    from reactor_rt import runtime

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)  # as Ray read it when imported first
    assert runtime._ensure_ray(None) is True
    assert seen["include_dashboard"] is False
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # for the processes ray.init starts
    assert ray_constants.ENABLE_RAY_CLUSTER is False  # and for this one, which imported Ray before
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"


def test_joining_a_cluster_leaves_its_addresses_alone(monkeypatch):
    import ray
    from ray._private import ray_constants

    from reactor_rt import runtime

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: None)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    runtime._ensure_ray("10.0.0.5:6379")
    assert ray_constants.ENABLE_RAY_CLUSTER is True  # other nodes must reach this driver
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ


def test_ray_address_in_the_environment_joins_that_cluster(monkeypatch):
    import ray

    from reactor_rt import runtime

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    runtime._ensure_ray(None)
    assert seen["address"] == "10.0.0.5:6379" and "_system_config" not in seen  # Ray refuses it when joining


@pytest.mark.parametrize("failure", [ConnectionError("no cluster at auto"), RuntimeError("port in use"),
                                     ValueError("_system_config must not be provided")])
def test_ray_that_cannot_start_or_join_is_a_reactor_error(monkeypatch, failure):
    import ray

    from reactor_rt import runtime
    from reactor_rt.errors import RuntimeUnavailableError

    def init(**kwargs):
        raise failure

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(RuntimeUnavailableError, match=type(failure).__name__):
        runtime._ensure_ray("auto")


def test_a_store_path_that_cannot_be_created_is_a_store_error(tmp_path, monkeypatch):
    from reactor_rt.errors import StoreError
    from reactor_rt.runtime import default_store
    from reactor_rt.store import SQLiteSTMStore

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="directory"):
        SQLiteSTMStore(blocker / "sub" / "stm.db")
    monkeypatch.setenv("REACTOR_RT_HOME", str(blocker / "home"))
    with pytest.raises(StoreError, match="REACTOR_RT_HOME"):
        default_store()


_PROBE = """
import ray  # first, as a caller may: Ray reads its address setting now, before reactor_rt runs
from ray._common.usage.usage_lib import usage_stats_enabled
from reactor_rt.runtime import _ensure_ray
_ensure_ray(None)
print(ray.util.get_node_ip_address(), usage_stats_enabled())
ray.shutdown()
"""


@pytest.mark.ray
def test_a_local_instance_listens_on_loopback_even_when_ray_was_imported_first():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_USAGE_STATS_ENABLED",
                                                             "RAY_ADDRESS")}
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    node_ip, usage_stats = done.stdout.split()[-2:]
    assert node_ip == "127.0.0.1"  # what its raylet, object store and workers listen on
    assert usage_stats == "False"
