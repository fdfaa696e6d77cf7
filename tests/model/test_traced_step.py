"""The traced decode step (DecodeBatch's default on a CPU): the eager step's tokens, logits and cache
for any number of rows at their own positions, traced again when the weights change, eager where a
trace cannot serve (rows past the dense MoE limit, a failed trace)."""

import pytest
import torch

from reactor_rt.model import DecodeBatch, RxTConfig
from reactor_rt.model.layers import MoE
from reactor_rt.model.traced_step import TracedStep


def small(**changes):
    base = dict(vocab_size=300, dim=32, layers=2, heads=4, query_heads=2, kv_heads=2, ff_dim=48,
                moe_experts=4, moe_top_k=2, stm_slots=8, max_seq_len=64, max_query_tokens=32)
    return RxTConfig(**{**base, **changes})


# the shapes a trace could get wrong: MoE and dense FFNs, GQA, gated attention, stateless layers, the
# options of imported checkpoints (biases, an own output head, no final norm)
CONFIGS = {
    "moe": small(),
    "dense-gqa": small(moe_experts=0, kv_heads=1),
    "gated-stateless": small(attn_gate="sigmoid", cross_attn_gate="silu", stateless_layers=("dense",),
                             final_stateless_layers=("moe",)),
    "imported-options": small(attn_out_bias=True, ffn_bias=True, tied_head=False, final_norm=False,
                              moe_shared_expert=True, moe_expert_bias=True, cross_kv_heads=1),
}


def prompt(n, seed):
    return torch.randint(8, 260, (n,), generator=torch.Generator().manual_seed(seed))


def stm(model, seed):
    c = model.config
    return torch.randn(1, c.layers, c.stm_slots, c.dim, generator=torch.Generator().manual_seed(seed))


def run(db, model, lengths, budget=12):
    """Rows of the given prompt lengths join, one more every other step, and leave as they end:
    the tokens of each row."""
    out, waiting, step = {}, list(enumerate(lengths)), 0
    while waiting or db.active:
        if waiting and step % 2 == 0 and db.free_slots:
            i, n = waiting.pop(0)
            out[db.add(prompt(n, i), stm=stm(model, i), max_new_tokens=budget + i)] = (i, [])
        for o in db.step():
            out[o.slot][1].append(o.token)
            if o.finished:
                db.remove(o.slot)
        step += 1
    return sorted(out.values())


def count_calls(monkeypatch, cls, name):
    calls = []
    original = getattr(cls, name)

    def spy(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, spy)
    return calls


@pytest.mark.parametrize("name", list(CONFIGS))
def test_traced_steps_give_the_eager_tokens(name, perturbed, monkeypatch):
    model = perturbed(CONFIGS[name])
    calls = count_calls(monkeypatch, TracedStep, "__call__")
    traced = run(DecodeBatch(model, capacity=4), model, [3, 9, 5, 12, 7])
    assert calls, "the traced step never ran"
    eager = run(DecodeBatch(model, capacity=4, trace=False), model, [3, 9, 5, 12, 7])
    assert traced == eager


@pytest.mark.parametrize("name", list(CONFIGS))
def test_traced_logits_and_cache_match_the_eager_step(name, perturbed):
    model = perturbed(CONFIGS[name])
    dbs = [DecodeBatch(model, capacity=3, trace=t) for t in (True, False)]
    for db in dbs:
        for i, n in enumerate((4, 11, 7)):  # three rows at three positions
            db.add(prompt(n, i), stm=stm(model, i), max_new_tokens=20)
    with torch.inference_mode():
        for rows in (slice(0, 3), slice(0, 1)):
            positions = [db.position(s) for s in range(rows.stop)]
            traced = dbs[0]._traced_logits(rows, positions)
            eager = dbs[1]._eager_logits(rows, positions)
            assert torch.allclose(traced, eager, atol=1e-5, rtol=1e-5)
    for cache in ("k_cache", "v_cache"):
        assert torch.allclose(getattr(dbs[0], cache), getattr(dbs[1], cache), atol=1e-6)


def test_without_the_memory_pre_cache_traced_steps_give_the_eager_tokens(perturbed, monkeypatch):
    """The benchmark's baseline (memory keys/values projected at every step) runs traced as well."""
    model = perturbed(small())
    calls = count_calls(monkeypatch, TracedStep, "__call__")
    traced = run(DecodeBatch(model, capacity=3, cache_memory_kv=False), model, [4, 9, 6])
    assert calls
    assert traced == run(DecodeBatch(model, capacity=3, trace=False), model, [4, 9, 6])


def test_a_weight_changed_in_place_is_traced_again(perturbed):
    model = perturbed(small(), seed=1)
    db, eager = DecodeBatch(model, capacity=1), DecodeBatch(model, capacity=1, trace=False)
    run(db, model, [5])  # traced, with the transposed copies of today's weights as constants
    with torch.no_grad():
        model.decoder_layers[0].self_attn.out.weight.mul_(-3.0)  # what an optimizer step or a load does
    assert db._traced.stale
    db.weights_changed()  # traces now rather than in the next step
    assert not db._traced.stale
    assert run(db, model, [5, 8]) == run(eager, model, [5, 8])
    with torch.no_grad():
        model.embedding.weight.add_(0.1)
    assert run(db, model, [6]) == run(eager, model, [6])  # and lazily, in the next step


def test_rows_past_the_dense_moe_limit_step_eagerly(perturbed, monkeypatch):
    monkeypatch.setattr(MoE, "dense_limit", 8)  # 4 experts: a traced step takes at most 2 rows
    model = perturbed(small())
    calls = count_calls(monkeypatch, TracedStep, "__call__")
    db = DecodeBatch(model, capacity=3)
    for i in range(3):
        db.add(prompt(4 + i, i), stm=stm(model, i), max_new_tokens=5)
    db.step()
    db.step()
    assert calls == []  # three rows: eager
    db.remove(0)
    db.step()
    assert len(calls) == 1 and calls[0][0].shape[0] == 2


def test_a_trace_that_fails_decodes_eagerly_with_a_warning(perturbed, monkeypatch):
    model = perturbed(small())
    expected = run(DecodeBatch(model, capacity=2, trace=False), model, [4, 6])

    def broken(*args, **kwargs):
        raise RuntimeError("no TorchScript here")

    monkeypatch.setattr(torch.jit, "trace", broken)
    with pytest.warns(RuntimeWarning, match="no TorchScript here"):
        db = DecodeBatch(model, capacity=2)
    assert not db.traced
    assert run(db, model, [4, 6]) == expected


def test_a_traced_step_that_fails_is_stepped_again_eagerly(perturbed, monkeypatch):
    model = perturbed(small())
    expected = run(DecodeBatch(model, capacity=2, trace=False), model, [4, 6])
    db = DecodeBatch(model, capacity=2)

    def broken(self, *args):
        raise RuntimeError("graph broke")

    monkeypatch.setattr(TracedStep, "__call__", broken)
    with pytest.warns(RuntimeWarning, match="graph broke"):
        tokens = run(db, model, [4, 6])
    assert tokens == expected and not db.traced


def test_what_is_traced_by_default(perturbed, monkeypatch):
    model = perturbed(small())
    assert DecodeBatch(model, capacity=1).traced
    assert not DecodeBatch(model, capacity=1, trace=False).traced
    assert DecodeBatch(model, capacity=1, cache_memory_kv=False).traced
    retraces = count_calls(monkeypatch, TracedStep, "retrace")
    model.generate(prompt(5, 0), stm(model, 0), max_new_tokens=4)  # one short generation: not worth a trace
    assert retraces == []


def test_the_graph_holds_the_transposed_weights_instead_of_making_them(perturbed):
    """Each Linear multiplies by a transposed copy of its weight, made on first use: the graph must
    hold the copies, not record their making (a copy of every weight at every step)."""
    model = perturbed(small(), seed=2)  # a fresh model: no copy made yet
    db = DecodeBatch(model, capacity=1)
    kinds = [node.kind() for node in db._traced._graph.inlined_graph.nodes()]
    assert "aten::matmul" in kinds
    assert "aten::t" not in kinds and "aten::contiguous" not in kinds


def test_batches_on_one_model_share_its_trace_which_does_not_keep_the_model_alive(perturbed, monkeypatch):
    import gc
    import weakref

    retraces = count_calls(monkeypatch, TracedStep, "_retrace")
    model = perturbed(small(), seed=3)
    first, second = DecodeBatch(model, capacity=2), DecodeBatch(model, capacity=3)
    assert first._traced is second._traced and len(retraces) == 1
    assert run(first, model, [4, 7]) == run(second, model, [4, 7])
    assert len(retraces) == 1
    gone = weakref.ref(model)
    del model, first, second
    gc.collect()
    assert gone() is None
