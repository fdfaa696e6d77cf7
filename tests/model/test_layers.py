"""RMSNorm, SwiGLU and the Mixture-of-Experts (routing, paths, balance loss)."""

import pytest
import torch
import torch.nn.functional as F

from reactor_rt.model.layers import MoE, RMSNorm, SwiGLU, load_balancing_loss


def test_rms_norm_gives_unit_rms():
    x = torch.randn(3, 5, 16) * 7
    y = RMSNorm(16)(x)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(3, 5), atol=1e-4)


def test_rms_norm_formula_state_dict_and_cast():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-3)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 16)
    want = x / (x.pow(2).mean(-1, keepdim=True).sqrt() + 1e-3) * norm.weight
    torch.testing.assert_close(norm(x), want)
    assert set(norm.state_dict()) == {"weight"}  # its constants are not state
    assert norm(torch.zeros(2, 16)).abs().max() == 0  # eps keeps an all-zero row finite
    norm.double()
    assert norm(x.double()).dtype == torch.float64


def test_swiglu_shape():
    assert SwiGLU(16, 40)(torch.randn(2, 3, 16)).shape == (2, 3, 16)


def reference_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Each token through its top-k experts, weighted by the renormalised router probabilities."""
    probs = moe.router(x).softmax(-1)
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        w, idx = probs[n].topk(moe.top_k)
        w = w / w.sum()
        for weight, e in zip(w, idx.tolist(), strict=True):
            g, u = (x[n] @ moe.w_gate_up[:, e]).split(moe.ff_dim)
            out[n] += weight * ((F.silu(g) * u) @ moe.w_down[e])
    return out


@pytest.mark.parametrize("tokens", [1, 3, 80])  # the one-token, dense and sparse paths
def test_moe_paths_match_a_per_token_reference(tokens):
    torch.manual_seed(0)
    moe = MoE(16, 24, experts=4, top_k=2)
    x = torch.randn(tokens, 16)
    y, aux = moe(x)
    assert torch.allclose(y, reference_moe(moe, x), atol=1e-5)
    assert aux is not None and aux.item() >= 1.0 - 1e-5


class _Output(torch.nn.Module):
    def __init__(self, moe: MoE) -> None:
        super().__init__()
        self.moe = moe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.moe(x, need_aux=False)[0]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("tokens", [1, 80])  # the paths that read the expert choice as Python ints
def test_a_traced_moe_routes_each_input_anew(tokens):
    """Traced on one input, the layer routes another (other experts) as the eager layer does: a trace
    takes the dense path, not one that fixes the example's expert choice."""
    torch.manual_seed(0)
    moe = MoE(16, 24, experts=4, top_k=2).eval()
    example, other = torch.randn(tokens, 16), torch.randn(tokens, 16)
    with torch.no_grad():
        while torch.equal(moe.route(other)[2], moe.route(example)[2]):
            other = torch.randn(tokens, 16)
        traced = torch.jit.trace(_Output(moe), example, check_trace=False)
        assert torch.allclose(traced(other), reference_moe(moe, other), atol=1e-5)


def test_router_picks_top_k_and_weights_sum_to_one():
    torch.manual_seed(0)
    moe = MoE(16, 24, experts=6, top_k=3)
    x = torch.randn(10, 16)
    logits, weights, idx = moe.route(x)
    assert idx.shape == weights.shape == (10, 3)
    assert torch.allclose(weights.sum(-1), torch.ones(10), atol=1e-6)
    assert torch.equal(idx, logits.topk(3, dim=-1).indices)
    assert (weights > 0).all()


def test_balance_loss_is_minimal_for_uniform_routing():
    n, e, k = 64, 4, 2
    uniform = load_balancing_loss(torch.full((n, e), 1 / e), torch.arange(n * k).view(n, k) % e, e)
    assert uniform.item() == pytest.approx(1.0)
    skewed_probs = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).expand(n, e)
    skewed = load_balancing_loss(skewed_probs, torch.tensor([[0, 1]]).expand(n, k), e)
    assert skewed.item() > uniform.item() + 0.1


def test_balance_loss_ignores_padding():
    probs = torch.tensor([[0.25] * 4, [1.0, 0.0, 0.0, 0.0]])
    idx = torch.tensor([[0, 1], [0, 1]])
    masked = load_balancing_loss(probs, idx, 4, mask=torch.tensor([True, False]))
    assert masked.item() == pytest.approx(load_balancing_loss(probs[:1], idx[:1], 4).item())


def test_moe_is_differentiable_through_router_and_experts():
    torch.manual_seed(0)
    moe = MoE(16, 24, experts=4, top_k=2, shared_expert=True)
    y, aux = moe(torch.randn(20, 16))
    (y.pow(2).mean() + aux).backward()
    for p in (moe.router.weight, moe.w_gate_up, moe.w_down, moe.shared.gate_up.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_shared_expert_adds_a_dense_path():
    torch.manual_seed(0)
    moe = MoE(16, 24, experts=4, top_k=1, shared_expert=True)
    x = torch.randn(5, 16)
    y, _ = moe(x, need_aux=False)
    moe.shared = None
    y_without, aux = moe(x, need_aux=False)
    assert aux is None and not torch.allclose(y, y_without)
