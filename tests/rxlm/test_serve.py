"""A converted RxLM checkpoint is served by the runtime: Reactor.start(model=OUT_DIR)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from rxlm_fixtures import LAYERS, SLOTS, rxlm_config, write_checkpoint

from reactor_rt import Reactor
from reactor_rt.rxlm import convert

pytestmark = [pytest.mark.anyio, pytest.mark.ray]


async def test_reactor_serves_a_converted_checkpoint(ray_local, tmp_path: Path) -> None:
    # stateless layers too: their KV-cache rows come after the memory layers' in generation
    cfg = rxlm_config(decoder={"stateless_layers_config": ["dense"], "final_stateless_layers_config": ["moe"],
                               "dense_layer_dim": 20})
    out = convert(write_checkpoint(tmp_path / "src", cfg), tmp_path / "out")
    store = f"sqlite:///{tmp_path}/stm.db"
    async with Reactor.start(model=str(out), store=store, max_new_tokens=4, namespace="rxlm-serve") as rx:
        stream = await rx.stream("imported")
        answer = await stream.reply("w10 w11 w12")
        assert isinstance(answer, str)
        memory = await stream.memory()
        assert tuple(memory.shape[-3:]) == (LAYERS, SLOTS, 32)
        assert stream.stm_version >= 1
