"""Sampler: greedy, temperature, top-k, top-p."""

import pytest
import torch

from reactor_rt.errors import ConfigError
from reactor_rt.model import RxTConfig, Sampler


def test_greedy_is_argmax():
    logits = torch.randn(4, 50)
    assert torch.equal(Sampler().sample(logits), logits.argmax(-1))
    assert Sampler().greedy and not Sampler(temperature=0.5).greedy


def test_top_k_one_and_tiny_top_p_are_argmax():
    logits = torch.randn(8, 50)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(Sampler(temperature=1.0, top_k=1).sample(logits, g), logits.argmax(-1))
    assert torch.equal(Sampler(temperature=1.0, top_p=1e-6).sample(logits, g), logits.argmax(-1))


def test_top_k_never_picks_outside_the_k_best():
    logits = torch.randn(1, 30).expand(500, 30)
    picks = Sampler(temperature=2.0, top_k=3).sample(logits, torch.Generator().manual_seed(1))
    assert set(picks.tolist()) <= set(logits[0].topk(3).indices.tolist())
    assert len(set(picks.tolist())) > 1


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(400, 4)
    picks = Sampler(temperature=1.0, top_p=0.7).sample(logits, torch.Generator().manual_seed(2))
    assert set(picks.tolist()) == {0, 1}


def test_sampling_is_reproducible_with_a_generator():
    logits = torch.randn(3, 40)
    s = Sampler(temperature=1.0)
    a = s.sample(logits, torch.Generator().manual_seed(5))
    b = s.sample(logits, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_validation_and_from_config():
    with pytest.raises(ConfigError):
        Sampler(temperature=-1)
    with pytest.raises(ConfigError):
        Sampler(top_p=1.5)
    cfg = RxTConfig.preset("tiny", temperature=0.7, top_k=5, top_p=0.9)
    assert Sampler.from_config(cfg) == Sampler(temperature=0.7, top_k=5, top_p=0.9)


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-40, 1e-30])
def test_a_vanishing_temperature_is_argmax_not_nan(temperature):
    """A temperature too small for float32 (1 / T overflows, or T rounds to 0) still samples: the
    limit of sampling as T -> 0 is the argmax (found by the runtime's fuzz test)."""
    logits = torch.randn(6, 64, generator=torch.Generator().manual_seed(3)) * 4
    for top_p in (1.0, 0.5):
        got = Sampler(temperature=temperature, top_p=top_p).sample(logits, torch.Generator().manual_seed(0))
        assert torch.equal(got, logits.argmax(-1))


@pytest.mark.parametrize("temperature", [1.0, 1e6, 1e300])
def test_cuts_rank_by_the_logits_whatever_the_temperature(temperature):
    """top-k 1 and a top-p below float32's resolution keep the best token, also when a huge temperature
    rounds every scaled logit to one value (they were a uniform pick, or NaN probabilities)."""
    logits = torch.randn(6, 64, generator=torch.Generator().manual_seed(4)) * 4
    g = torch.Generator().manual_seed(0)
    assert torch.equal(Sampler(temperature=temperature, top_k=1).sample(logits, g), logits.argmax(-1))
    assert torch.equal(Sampler(temperature=temperature, top_p=1e-300).sample(logits, g), logits.argmax(-1))
    # and a huge temperature without cuts is (close to) uniform over the vocabulary
    if temperature >= 1e6:
        picks = Sampler(temperature=temperature).sample(logits[:1].expand(2000, 64), g)
        assert len(set(picks.tolist())) > 50
