"""`Reactor.start(compile_decode=True)`: the decoder actor runs a lone answer's steps compiled and
answers what the eager runtime answers. Slow: the decoder compiles at start (seconds to tens)."""

from __future__ import annotations

import shutil

import pytest
import ray
import torch

from reactor_rt import Reactor
from reactor_rt.model import ReactiveTransformer, RxTConfig

pytestmark = [
    pytest.mark.anyio, pytest.mark.ray, pytest.mark.slow,
    pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                       reason="torch.compile on CPU needs a C++ compiler"),
]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def _model() -> ReactiveTransformer:
    torch.manual_seed(0)
    model = ReactiveTransformer(RxTConfig.preset("tiny")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        tok = model.tokenizer  # answers in bytes only (an untrained argmax is often a special token)
        model.embedding.weight[list(tok.special_ids) + list(range(tok.vocab_size, model.config.vocab_size))] = 0.0
    return model


async def _conversation(compile_decode: bool) -> tuple[list[str], float]:
    async with Reactor.start(model=_model(), store="memory://", max_new_tokens=24, learning=False,
                             namespace=f"compiled-{compile_decode}", compile_decode=compile_decode) as rx:
        stream = await rx.stream("c")
        answers = [await stream.reply(text) for text in ("hello there", "what did I say?", "and then?")]
        decoder = ray.get_actor("decoder", namespace=f"compiled-{compile_decode}")
        return answers, (await decoder.stats.remote())["compiled"]


async def test_the_compiled_decoder_answers_what_the_eager_one_does(ray_local):
    eager, eager_compiled = await _conversation(False)
    compiled, compiled_flag = await _conversation(True)
    assert (eager_compiled, compiled_flag) == (0.0, 1.0)
    assert compiled == eager and all(eager)
