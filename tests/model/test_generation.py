"""DecodeBatch (continuous batching over a static KV cache) and generate()."""

import pytest
import torch

from reactor_rt.model import DecodeBatch, ReactiveTransformer, RxTConfig, Sampler
from reactor_rt.tokenizer import ByteTokenizer


def small(**changes):
    base = dict(vocab_size=300, dim=32, layers=2, heads=4, query_heads=2, kv_heads=2, ff_dim=48,
                moe_experts=4, moe_top_k=2, stm_slots=8, max_seq_len=64, max_query_tokens=32)
    return RxTConfig(**{**base, **changes})


def perturbed(cfg, tokenizer=None, seed=0, scale=0.05):
    torch.manual_seed(seed)
    m = ReactiveTransformer(cfg, tokenizer).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def model():
    return perturbed(small())


def prompt(n, seed):
    return torch.randint(8, 260, (n,), generator=torch.Generator().manual_seed(seed))


def stms(n, seed=0):
    return torch.randn(n, 2, 8, 32, generator=torch.Generator().manual_seed(seed))


def run_alone(model, p, stm, n):
    db = DecodeBatch(model, capacity=1)
    slot = db.add(p, stm=stm, max_new_tokens=n)
    out = []
    while db.active:
        out += [o.token for o in db.step()]
    db.remove(slot)
    return out


@torch.no_grad()
def test_cached_generation_equals_full_recompute(model):
    stm = stms(1)
    p = prompt(6, 1)
    out = model.generate(p[None], stm, max_new_tokens=15)[0].tolist()
    seq = p[None]
    for tok in out:
        assert tok == int(model.decode(seq, stm)[0, -1].argmax())
        seq = torch.cat([seq, torch.tensor([[tok]])], dim=1)


@pytest.mark.parametrize("changes", [{}, {"kv_heads": 1}, {"moe_experts": 0}, {"query_heads": 4, "kv_heads": 4}])
@torch.no_grad()
def test_ragged_batch_equals_rows(changes):
    m = perturbed(small(**changes))
    prompts = [prompt(3, 2), prompt(12, 3), prompt(7, 4)]
    stm = stms(3)
    batch = m.generate(prompts, stm, max_new_tokens=10)
    assert batch.shape[0] == 3
    for i, p in enumerate(prompts):
        alone = m.generate(p[None], stm[i : i + 1], max_new_tokens=10)[0]
        assert torch.equal(batch[i, : alone.shape[0]], alone)


@torch.no_grad()
def test_rows_join_and_leave_mid_way(model):
    """A row's tokens do not depend on which rows run beside it, or when they joined."""
    s = stms(3, seed=1)
    ps = [prompt(5, 10), prompt(9, 11), prompt(4, 12)]
    expected = [run_alone(model, ps[i], s[i : i + 1], 12) for i in range(3)]
    db = DecodeBatch(model, capacity=3)
    got: dict[int, list[int]] = {}
    slots = {0: db.add(ps[0], stm=s[0:1], max_new_tokens=12)}
    for step in range(40):
        if step == 3:
            slots[1] = db.add(ps[1], stm=s[1:2], max_new_tokens=12)
        if step == 5:
            slots[2] = db.add(ps[2], memory_kv=model.memory_kv(s[2:3]), max_new_tokens=12)
        for out in db.step():
            got.setdefault(out.slot, []).append(out.token)
            if out.finished:
                db.remove(out.slot)
    assert not db.active and db.free_slots == [0, 1, 2]
    for i in range(3):
        assert got[slots[i]] == expected[i], i


@torch.no_grad()
def test_rows_prefilled_together_equal_rows_prefilled_alone(model):
    """add_many pads the prompts to the longest: each row's tokens are those it gets alone, and it
    runs on beside rows added one by one; several sampled rows keep their own samplers."""
    s = stms(4, seed=3)
    ps = [prompt(7, 30), prompt(3, 31), prompt(12, 32), prompt(1, 33)]
    expected = [run_alone(model, ps[i], s[i : i + 1], 10) for i in range(4)]
    db = DecodeBatch(model, capacity=6)
    early = db.add(ps[0], stm=s[0:1], max_new_tokens=10)
    db.step()  # a row already running: the batched prefill must not disturb its cache
    slots = db.add_many(ps[1:], [model.memory_kv(s[i : i + 1]) for i in range(1, 4)], [None] * 3, [10] * 3,
                        [None] * 3)
    assert len(set(slots)) == 3 and early not in slots
    got: dict[int, list[int]] = {early: [expected[0][0]]}
    while db.active:
        for out in db.step():
            got.setdefault(out.slot, []).append(out.token)
    assert got[early] == expected[0]
    for i, slot in enumerate(slots, start=1):
        assert got[slot] == expected[i], i
    # bad calls are refused before anything is written
    with pytest.raises(ValueError):
        db.add_many([prompt(3, 1), torch.tensor([], dtype=torch.long)], [model.memory_kv(s[0:1])] * 2,
                    [None] * 2, [4] * 2, [None] * 2)
    with pytest.raises(RuntimeError, match="free rows"):
        db.add_many([prompt(3, 1)] * 3, [model.memory_kv(s[0:1])] * 3, [None] * 3, [4] * 3, [None] * 3)


def test_a_prefill_that_fails_while_sampling_leaves_no_row_behind(model):
    """add_many whose second row's sampler fails (e.g. NaN probabilities): no slot of that prefill stays
    taken, so the rows can be admitted again and the batch keeps its capacity."""

    class Broken(Sampler):
        def sample(self, logits, generator=None):  # type: ignore[no-untyped-def]
            raise RuntimeError("probability tensor contains nan")

    db = DecodeBatch(model, capacity=2)
    kv = model.memory_kv(stms(1))
    with pytest.raises(RuntimeError, match="nan"):
        db.add_many([prompt(3, 1), prompt(4, 2)], [kv, kv], [None, Broken()], [4, 4], [None, None])
    assert db.free_slots == [0, 1] and db.active == []
    slots = db.add_many([prompt(3, 1), prompt(4, 2)], [kv, kv], [None, None], [4, 4], [None, None])
    assert len(slots) == 2 and len(db.step()) == 2


@pytest.fixture(scope="module")
def lively():
    """Weights perturbed enough that every token depends on the prompt and the STM (the `model`
    fixture's answers are mostly one token repeated)."""
    return perturbed(small(), scale=0.3)


@pytest.mark.parametrize("cache_memory_kv", [True, False])
@torch.no_grad()
def test_rows_leaving_out_of_order_keep_the_cache_packed(lively, cache_memory_kv):
    """Rows finish or are cancelled in any order while others join: every surviving row still gets the
    tokens it gets alone, and the rows' data stay packed at the front of the cache (a leaving row's
    place is taken by the last one, memory K/V or STM and pending token included)."""
    model = lively
    s = 2 * stms(7, seed=5)
    assert run_alone(model, prompt(5, 41), s[1:2], 6) != run_alone(model, prompt(5, 41), s[2:3], 6)
    ps = [prompt(3 + 2 * i, 40 + i) for i in range(7)]
    budgets = [9, 4, 12, 6, 10, 3, 8]
    expected = [run_alone(model, ps[i], s[i : i + 1], budgets[i]) for i in range(7)]
    db = DecodeBatch(model, capacity=5, cache_memory_kv=cache_memory_kv)
    slot_of: dict[int, int] = {}
    got: dict[int, list[int]] = {}
    joins = {0: [0, 1, 2, 3], 2: [4], 5: [5, 6]}
    cancelled = None
    for step in range(40):
        for i in joins.get(step, []):
            slot_of[i] = db.add(ps[i], stm=s[i : i + 1], max_new_tokens=budgets[i])
        if step == 3:  # cancel a row in the middle of the cache while it still runs
            cancelled = slot_of.pop(2)
            db.remove(cancelled)
        who = {slot: i for i, slot in slot_of.items()}
        for out in db.step():
            got.setdefault(who[out.slot], []).append(out.token)
            if out.finished:
                db.remove(out.slot)
                del slot_of[who[out.slot]]
        rows = sorted(db._cache_row.values())
        assert rows == list(range(len(rows)))
    assert not db.active and cancelled is not None
    for i in (0, 1, 3, 4, 5, 6):
        assert got[i] == expected[i], i


def test_rows_can_leave_outside_inference_mode_of_a_batch_built_inside_it(model):
    s = stms(3, seed=6)
    with torch.inference_mode():  # the buffers are inference tensors
        db = DecodeBatch(model, capacity=3)
        slots = [db.add(prompt(4, 50 + i), stm=s[i : i + 1], max_new_tokens=6) for i in range(3)]
    db.remove(slots[0])  # moves the last row into the first: an in-place write
    got = {slots[1]: [], slots[2]: []}
    while db.active:
        for out in db.step():
            got[out.slot].append(out.token)
    assert got[slots[2]] == run_alone(model, prompt(4, 52), s[2:3], 6)


@torch.no_grad()
def test_non_contiguous_slots_and_slot_reuse(model):
    s = stms(3, seed=2)
    ps = [prompt(4, 20), prompt(6, 21), prompt(5, 22)]
    db = DecodeBatch(model, capacity=3)
    a, b, c = (db.add(p, stm=s[i : i + 1], max_new_tokens=8) for i, p in enumerate(ps))
    db.remove(b)  # the middle row leaves: slots 0 and 2 keep running
    got = {a: [], c: []}
    while db.active:
        for out in db.step():
            got[out.slot].append(out.token)
    assert got[a] == run_alone(model, ps[0], s[0:1], 8)
    assert got[c] == run_alone(model, ps[2], s[2:3], 8)
    assert db.finished == [a, c] and db.free_slots == [b]
    assert db.add(ps[1], stm=s[1:2], max_new_tokens=3) == b  # a freed slot is reused


@torch.no_grad()
def test_eos_stops_a_row_and_pads_the_output():
    base = perturbed(small())
    first = int(base.generate(prompt(5, 30)[None], stms(1), max_new_tokens=1)[0, 0])

    class EosAt(ByteTokenizer):
        def __init__(self):
            super().__init__()
            self.eos_id = first  # this prompt's first answer token now ends the answer

    m = perturbed(small(), EosAt())
    out = m.generate([prompt(5, 30), prompt(8, 31)], stms(1).expand(2, -1, -1, -1), max_new_tokens=6)
    assert out[0, 0] == first and (out[0, 1:] == m.tokenizer.pad_id).all()
    assert out.shape == (2, 6) or first in out[1].tolist()


@torch.no_grad()
def test_budget_is_cut_to_the_cache_length(model):
    db = DecodeBatch(model, capacity=1, max_len=10)
    slot = db.add(prompt(8, 40), stm=stms(1), max_new_tokens=50)
    n = 0
    while db.active:
        n += len(db.step())
    assert n == 3 and db.position(slot) == 10  # 8 prompt tokens + 2 fed back; the 3rd is never fed
    db.remove(slot)
    with pytest.raises(ValueError):
        db.add(prompt(11, 41), stm=stms(1))


@torch.no_grad()
def test_memory_kv_pre_cache_changes_nothing(model):
    p, s = prompt(6, 50), stms(1, seed=5)
    db = DecodeBatch(model, capacity=1, cache_memory_kv=False)
    db.add(p, stm=s, max_new_tokens=10)
    out = []
    while db.active:
        out += [o.token for o in db.step()]
    assert out == run_alone(model, p, s, 10)


@torch.no_grad()
def test_sampled_rows_are_reproducible_and_independent(model):
    smp = Sampler(temperature=1.0, top_k=20)
    p, s = prompt(5, 60), stms(2, seed=6)

    def run(with_neighbour):
        db = DecodeBatch(model, capacity=2)
        if with_neighbour:
            db.add(prompt(7, 61), stm=s[1:2], sampler=Sampler(), max_new_tokens=10)
        slot = db.add(p, stm=s[0:1], sampler=smp, max_new_tokens=10, generator=torch.Generator().manual_seed(3))
        out = []
        while slot in db.active:
            out += [o.token for o in db.step() if o.slot == slot]
        return out

    assert run(False) == run(True)


@torch.no_grad()
def test_capacity_and_bad_calls(model):
    db = DecodeBatch(model, capacity=1)
    db.add(prompt(3, 70), stm=stms(1))
    with pytest.raises(RuntimeError, match="full"):
        db.add(prompt(3, 71), stm=stms(1))
    with pytest.raises(KeyError):
        db.remove(5)
    db2 = DecodeBatch(model, capacity=1)
    with pytest.raises(ValueError, match="exactly one"):
        db2.add(prompt(3, 72))
    assert db2.step() == []
    assert model.generate([prompt(3, 73)], stms(1), max_new_tokens=0).shape == (1, 0)


def test_generation_and_training_interleave():
    """DecodeBatch runs in inference mode; the same model must still train between generations
    (live learning), and the new weights must show in the next generation."""
    m = perturbed(small()).train()
    s, p = stms(1, seed=7), prompt(5, 80)
    db = DecodeBatch(m, capacity=1)
    slot = db.add(p, memory_kv=m.memory_kv(s), max_new_tokens=4)
    while db.active:
        db.step()
    db.remove(slot)
    before = m.generate(p[None], s, max_new_tokens=6)
    logits, aux = m.decode_with_aux(p[None], s)
    (logits.logsumexp(-1).mean() + aux).backward()
    with torch.no_grad():
        for param in m.parameters():
            if param.grad is not None:
                param.sub_(0.5 * param.grad.sign() * param.abs().mean())
    after = m.generate(p[None], s, max_new_tokens=6)
    assert before.shape[0] == after.shape[0] == 1
    assert not torch.equal(m.decode(p[None], s), logits)  # the weights changed, and decode sees them


@torch.no_grad()
def test_generate_samples_each_row_independently_of_its_neighbours(model):
    """One seeded generator for a batch: a row's sampled tokens depend on the seed and its place in the
    batch, never on what (or how much) the other rows sample. They took turns on one generator, so a
    row's tokens changed with its neighbours and with the batch size."""
    smp = Sampler(temperature=1.0)
    p, q, r = prompt(5, 70), prompt(9, 71), prompt(3, 72)
    s = stms(2, seed=7)

    def gen(prompts, n=10):
        return model.generate(prompts, s[: len(prompts)], max_new_tokens=n, sampler=smp,
                              generator=torch.Generator().manual_seed(11))

    alone = gen([p])[0]
    assert torch.equal(gen([p, q])[0], alone)  # a neighbour that samples too
    assert torch.equal(gen([p, q], n=10)[1], gen([r, q], n=10)[1])  # row 1 whatever row 0 is
    assert torch.equal(gen([p, q]), gen([p, q]))  # reproducible
    twins = model.generate([p, p], s[:1], max_new_tokens=12, sampler=smp, generator=torch.Generator().manual_seed(11))
    assert not torch.equal(twins[0], twins[1])  # two rows never share one stream of draws
    torch.manual_seed(5)
    first = model.generate([p, q], s, max_new_tokens=6, sampler=smp)
    torch.manual_seed(5)
    assert torch.equal(model.generate([p, q], s, max_new_tokens=6, sampler=smp), first)  # global seed


def test_fewest_left_counts_down_to_the_row_nearest_its_budget(model):
    db = DecodeBatch(model, capacity=3)
    db.eos_id = -1  # only budgets end rows here
    stm = model.init_stm(1)
    assert db.fewest_left() is None
    a = db.add(torch.tensor([5, 6, 7]), stm=stm, max_new_tokens=4)
    db.add(torch.tensor([8, 9]), stm=stm, max_new_tokens=9)
    assert db.fewest_left() == 4
    db.step()
    assert db.fewest_left() == 3
    for _ in range(3):
        db.step()
    assert db.finished == [a] and db.fewest_left() == 5  # a finished row no longer counts
    db.remove(a)
    assert db.fewest_left() == 5
