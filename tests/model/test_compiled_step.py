"""The compiled one-row decode step (`DecodeBatch(compile=True)`): same tokens and logits as the eager
step, row 0 only, a clear error when it cannot compile. Each compile takes seconds, so few models."""

import pytest
import torch

from reactor_rt.model import DecodeBatch, RxTConfig
from reactor_rt.model.attention import apply_rope
from reactor_rt.model.compiled_step import CompiledRowStep


def small(**changes):
    base = dict(vocab_size=300, dim=32, layers=2, heads=4, query_heads=2, kv_heads=2, ff_dim=48,
                moe_experts=4, moe_top_k=2, stm_slots=8, max_seq_len=64, max_query_tokens=32)
    return RxTConfig(**{**base, **changes})


def prompt(n, seed):
    return torch.randint(8, 260, (n,), generator=torch.Generator().manual_seed(seed))


def stm(seed):
    return torch.randn(1, 2, 8, 32, generator=torch.Generator().manual_seed(seed))


def run(db, rows):
    """Add every (prompt, stm, budget) row, step until all end (removing each as it ends): tokens by row."""
    slots = [db.add(p, stm=s, max_new_tokens=n) for p, s, n in rows]
    out = {s: [] for s in slots}
    while db.active:
        for o in db.step():
            out[o.slot].append(o.token)
            if o.finished:
                db.remove(o.slot)
    for s in list(db.finished):
        db.remove(s)
    return [out[s] for s in slots]


def test_real_rotations_rotate_like_the_complex_ones():
    cis = torch.polar(torch.ones(5, 4), torch.randn(5, 4)).to(torch.complex64)  # (T, hd/2)
    x = torch.randn(2, 5, 3, 8)  # (B, T, H, hd)
    expected = apply_rope(x, cis[:, None])
    assert torch.allclose(apply_rope(x, torch.view_as_real(cis)[:, None]), expected, atol=1e-6)


def test_compile_needs_the_memory_pre_cache(perturbed):
    with pytest.raises(ValueError, match="cache_memory_kv"):
        DecodeBatch(perturbed(small()), capacity=1, cache_memory_kv=False, compile=True)


def test_a_step_that_cannot_compile_fails_at_construction_with_a_clear_error(monkeypatch, perturbed):
    def broken(self, *args):
        raise OSError("no compiler")

    monkeypatch.setattr(CompiledRowStep, "__call__", broken)
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler"):
        DecodeBatch(perturbed(small()), capacity=1, compile=True)


@pytest.fixture(scope="module")
def pair(perturbed):
    model = perturbed(small())
    return model, DecodeBatch(model, capacity=3, trace=False), DecodeBatch(model, capacity=3, compile=True)


@pytest.mark.cxx
def test_one_row_gives_the_eager_tokens_and_logits(pair):
    _, eager, compiled = pair
    for seed in range(3):
        assert run(compiled, [(prompt(5 + seed, seed), stm(seed), 40)]) == \
            run(eager, [(prompt(5 + seed, seed), stm(seed), 40)])
    # the logits themselves, step by step (up to float rounding: fused kernels sum in another order)
    for db in (eager, compiled):
        db.add(prompt(7, 9), stm=stm(9), max_new_tokens=30)
    for _ in range(12):
        eager.step()
        compiled.step()
        position = torch.tensor([eager.position(0)])
        with torch.inference_mode():
            want = eager._eager_logits(slice(0, 1), [eager.position(0)])
            got = compiled._compiled(compiled.pending[:1, None], position, *compiled._row0_buffers())
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    eager.remove(0)
    compiled.remove(0)


@pytest.mark.cxx
def test_several_rows_step_eagerly_and_a_lone_row_compiled(pair):
    """Rows join and leave: steps of several rows (and of a row not in cache row 0) run eagerly, those of
    a lone row in cache row 0 compiled; every row gets the tokens it gets from the eager batch."""
    _, eager, compiled = pair
    step, calls = compiled._compiled, []

    def counted(*args):
        calls.append(args[1].item())  # the position
        return step(*args)

    compiled._compiled = counted
    try:
        rows = [(prompt(4, 1), stm(1), 6), (prompt(9, 2), stm(2), 25), (prompt(6, 3), stm(3), 12)]
        assert run(compiled, rows) == run(eager, rows)
    finally:
        compiled._compiled = step
    # slot 1 (a 9-token prompt) ran alone in cache row 0 once slot 2 had left after step 12: the
    # forwards of steps 13 to 24 (its 25th token needs none), at positions 21 to 32
    assert calls == list(range(9 + 12, 9 + 24))
    assert not compiled.active and not compiled.finished


@pytest.mark.cxx
def test_weights_changed_in_place_are_seen_by_the_compiled_step(pair):
    model, eager, compiled = pair
    row = [(prompt(6, 4), stm(4), 20)]
    before = run(compiled, row)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            for p in model.decoder_layers.parameters():
                p.add_(0.3 * torch.randn_like(p))
        changed = run(compiled, row)
        assert changed == run(eager, row)
        assert changed != before
    finally:
        model.load_state_dict(saved)


@pytest.mark.cxx
def test_a_compiled_step_that_fails_later_falls_back_to_eager_steps(pair):
    """E.g. a recompile (the thread count changed) on a machine whose compiler has gone: the answer goes
    on, eagerly, with the tokens the eager batch gives; the compiled step stays off."""
    model = pair[0]
    eager, compiled = DecodeBatch(model, capacity=1), DecodeBatch(model, capacity=1, compile=True)
    row = [(prompt(6, 5), stm(5), 16)]
    step, calls = compiled._compiled, []

    def failing(*args):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("recompile failed")
        return step(*args)

    compiled._compiled = failing
    with pytest.warns(RuntimeWarning, match="decoding eagerly"):
        assert run(compiled, row) == run(eager, row)
    assert not compiled.compiled and len(calls) == 4


@pytest.mark.slow  # a compile per configuration (seconds each)
@pytest.mark.cxx
@pytest.mark.parametrize("changes", [
    {"moe_experts": 0},  # dense SwiGLU
    {"kv_heads": 1, "tied_head": False, "final_norm": False},
    # an imported layout: stateless layers around the memory layers, gates, shared experts, a bf16 router
    {"stateless_layers": ("dense",), "final_stateless_layers": ("moe",), "attn_gate": "sigmoid",
     "cross_attn_gate": "sigmoid", "moe_shared_expert": True, "moe_shared_count": 2, "moe_router_bf16": True},
])
def test_other_layouts_compile_whole_and_give_the_eager_tokens(perturbed, changes):
    model = perturbed(small(**changes))
    rows = [(prompt(7, 3), stm(3), 20)]
    assert run(DecodeBatch(model, capacity=1, compile=True), rows) == run(DecodeBatch(model, capacity=1), rows)


@pytest.mark.cxx
def test_a_sampled_row_draws_what_it_draws_eagerly(pair):
    """The compiled logits go through the row's own sampler and generator as the eager ones do."""
    from reactor_rt.model import Sampler

    _, eager, compiled = pair
    sampler = Sampler(temperature=0.9, top_k=40, top_p=0.95)
    drawn = []
    for db in (eager, compiled):
        slot = db.add(prompt(8, 6), stm=stm(6), sampler=sampler, max_new_tokens=24,
                      generator=torch.Generator().manual_seed(11))
        tokens = []
        while db.active:
            tokens += [o.token for o in db.step()]
        db.remove(slot)
        drawn.append(tokens)
    assert drawn[0] == drawn[1] and len(drawn[0]) == 24
