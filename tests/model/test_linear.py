"""Linear layers with a transposed weight copy for inference: same results as nn.Linear, a copy that
follows every change of the weight, and nothing extra in state dicts, pickles or autograd."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reactor_rt.learning import apply_serving_state
from reactor_rt.model import ReactiveTransformer, RxTConfig
from reactor_rt.model.linear import Linear, TransposedWeight, linear


def _layer(bias: bool = True) -> Linear:
    torch.manual_seed(0)
    return Linear(8, 5, bias=bias)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(8,), (3, 8), (2, 4, 8)])
@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference"])
def test_matches_f_linear(bias: bool, shape: tuple[int, ...], mode: str) -> None:
    layer = _layer(bias)
    x = torch.randn(*shape)
    want = F.linear(x, layer.weight.detach(), None if layer.bias is None else layer.bias.detach())
    ctx = {"grad": torch.enable_grad(), "no_grad": torch.no_grad(), "inference": torch.inference_mode()}[mode]
    with ctx:
        got = layer(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got.detach(), want, rtol=1e-6, atol=1e-6)


def test_inference_uses_a_contiguous_transposed_copy() -> None:
    layer = _layer()
    with torch.no_grad():
        layer(torch.randn(2, 8))
    copy_ = layer.transposed.get(layer.weight)
    assert copy_ is not None and copy_.shape == (8, 5) and copy_.is_contiguous()
    assert copy_.data_ptr() != layer.weight.data_ptr()
    assert layer.transposed.get(layer.weight) is copy_  # kept while the weight is unchanged


def test_made_in_inference_mode_the_copy_is_a_plain_tensor() -> None:
    layer = _layer()
    with torch.inference_mode():
        layer(torch.randn(2, 8))
    copy_ = layer.transposed.get(layer.weight)
    assert copy_ is not None and not copy_.is_inference() and not copy_.requires_grad


@pytest.mark.parametrize("change", ["optimizer", "copy_", "load_state_dict", "cast", "serving_state"])
def test_copy_follows_every_change_of_the_weight(change: str) -> None:
    layer = _layer()
    x = torch.randn(3, 8)
    with torch.inference_mode():
        before = layer(x)
    if change == "optimizer":
        opt = torch.optim.SGD(layer.parameters(), lr=0.5)
        layer(x).square().sum().backward()
        opt.step()
    elif change == "copy_":
        with torch.no_grad():
            layer.weight.copy_(torch.randn(5, 8))
    elif change == "load_state_dict":
        layer.load_state_dict({"weight": torch.randn(5, 8), "bias": torch.randn(5)})
    elif change == "cast":
        layer.double()
        x = x.double()
    else:  # what live learning does to a serving model: a copy_ into each parameter
        holder = nn.Module()
        holder.proj = layer
        apply_serving_state(holder, {"proj.weight": torch.randn(5, 8)})  # type: ignore[arg-type]
    with torch.inference_mode():
        after = layer(x)
    torch.testing.assert_close(after, F.linear(x, layer.weight.detach(), layer.bias.detach()))
    if change == "cast":  # same values, now in double: a stale float copy would not even multiply
        assert after.dtype == torch.float64
    else:
        assert not torch.allclose(after, before)


def test_weight_made_in_inference_mode_is_read_as_it_is_now() -> None:
    # an inference tensor counts no versions: an in-place change could not be seen, so no copy is kept
    with torch.inference_mode():
        layer = _layer()
        x = torch.randn(3, 8)
        layer(x)
        layer.weight.add_(1.0)
        got = layer(x)
    assert layer.transposed.get(layer.weight) is None
    torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias))


def test_gradients_as_nn_linear() -> None:
    layer = _layer()
    plain = nn.Linear(8, 5)
    plain.load_state_dict(layer.state_dict())
    with torch.no_grad():
        layer(torch.randn(2, 8))  # a copy exists: training must not use it
    x = torch.randn(4, 8, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    layer(x).sin().sum().backward()
    plain(x2).sin().sum().backward()
    torch.testing.assert_close(layer.weight.grad, plain.weight.grad)
    torch.testing.assert_close(layer.bias.grad, plain.bias.grad)
    torch.testing.assert_close(x.grad, x2.grad)


def test_state_dict_pickle_and_deepcopy_carry_no_copy() -> None:
    layer = _layer()
    with torch.no_grad():
        layer(torch.randn(2, 8))
    assert set(layer.state_dict()) == {"weight", "bias"}
    for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert clone.transposed._entry is None
        with torch.no_grad():
            torch.testing.assert_close(clone(torch.ones(1, 8)), layer(torch.ones(1, 8)))


def _tiny_model() -> ReactiveTransformer:
    torch.manual_seed(0)
    return ReactiveTransformer(RxTConfig.preset("tiny")).eval()


def test_pickled_model_is_not_bigger_after_inference() -> None:
    model = _tiny_model()
    size = len(pickle.dumps(model))
    ids = torch.randint(0, 200, (1, 6))
    with torch.inference_mode():
        model.decode(ids, model.init_stm(1))
    assert model._tied_head._entry is not None  # copies were made ...
    assert len(pickle.dumps(model)) <= size + 4096  # ... and are not shipped with the model


def test_model_logits_same_with_and_without_autograd() -> None:
    # the tied output head, attention and feed-forward layers all take the transposed path without grad
    model = _tiny_model()
    ids = torch.randint(0, 200, (2, 7))
    stm = model.update_memory(model.init_stm(2), model.encode(ids)).detach()
    want = model.decode(ids, stm).detach()
    with torch.inference_mode():
        got = model.decode(ids, stm)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_function_without_grad_mode_uses_the_copy() -> None:
    weight = torch.randn(5, 8)
    cache = TransposedWeight()
    x = torch.randn(2, 8)
    with torch.no_grad():
        y = linear(x, weight, None, cache)
    assert cache._entry is not None
    torch.testing.assert_close(y, x @ weight.t())
