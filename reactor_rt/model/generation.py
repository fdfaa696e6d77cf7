"""DecodeBatch: continuous batching over a static, preallocated KV cache; `generate` built on it.

Rows join (`add`, or `add_many` for several in one forward) and leave (`remove`) between steps; `step` runs one
batched forward over every running row, each at its own position with its own key mask, memory K/V
and sampler, so a row's tokens do not depend on its neighbours. A slot names a row for its whole life,
while the rows' data stay packed at the front of the cache (a row that leaves is filled by the last
one): a step then reads its rows as one slice, not a gather of scattered cache rows.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from reactor_rt.model.compiled_step import CompiledRowStep
from reactor_rt.model.layers import MoE
from reactor_rt.model.memory import MemoryKV
from reactor_rt.model.sampler import Sampler
from reactor_rt.model.traced_step import TracedStep

if TYPE_CHECKING:
    from reactor_rt.model.rxt import ReactiveTransformer

__all__ = ["DecodeBatch", "StepOutput", "generate"]


# On CUDA, half-precision attention may pick cuDNN, which builds a new graph for every new key length
# (measured on an H200: 16 ms of CPU a call, 40-60 ms a bf16 decode step instead of ~2 ms), and a
# decode step's keys grow by one every step. The other backends build nothing. Entering the selection
# costs ~30 us, so it is done once a step, not once an attention call.
_DECODE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _attention_backends(device: torch.device) -> contextlib.AbstractContextManager[object]:
    return sdpa_kernel(_DECODE_BACKENDS) if device.type == "cuda" else contextlib.nullcontext()


class StepOutput(NamedTuple):
    """One row's result of a step: the token it produced and whether the row is now finished."""

    slot: int
    token: int
    finished: bool


class _Row:
    __slots__ = ("budget", "emitted", "generator", "pos", "sampler")

    def __init__(self, pos: int, budget: int, sampler: Sampler, generator: torch.Generator | None) -> None:
        self.pos = pos  # tokens in the cache = position of the next token fed
        self.budget = budget
        self.emitted = 0
        self.sampler = sampler
        self.generator = generator


class _PrefillHook:
    """Writes right-padded prompts into their cache rows (the padding lands past each row's end, where
    its decode steps overwrite it); causal attention keeps every real token from seeing the padding."""

    def __init__(self, db: DecodeBatch, rows: slice) -> None:
        self.db, self.rows = db, rows

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None, bool]:
        t = k.shape[2]
        self.db.k_cache[layer, self.rows, :, :t] = k
        self.db.v_cache[layer, self.rows, :, :t] = v
        return k, v, None, True


class _StepHook:
    """Writes one new key/value per row at that row's position, then exposes the rows' cache prefix."""

    def __init__(
        self, db: DecodeBatch, rows: slice | Tensor, pos: Tensor | None, single: int | None, length: int,
        mask: Tensor | None,
    ) -> None:
        self.db, self.rows, self.pos, self.single = db, rows, pos, single
        self.length, self.mask = length, mask
        if pos is not None and isinstance(rows, slice):
            self.arange = torch.arange(pos.shape[0], device=pos.device)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None, bool]:
        kc, vc = self.db.k_cache[layer], self.db.v_cache[layer]  # (C, H, M, hd)
        rows = self.rows
        if self.single is not None:  # one row: its persistent cache views, plain indexing
            kc, vc = self.db._row_k[layer][rows.start], self.db._row_v[layer][rows.start]  # (1, H, M, hd)
            kc.select(2, self.single).copy_(k.select(2, 0))
            vc.select(2, self.single).copy_(v.select(2, 0))
            return kc[:, :, : self.length], vc[:, :, : self.length], None, False
        if isinstance(rows, slice):
            kc, vc = kc[rows], vc[rows]  # views: written in place, read without a copy
            kc[self.arange, :, self.pos] = k[:, :, 0]
            vc[self.arange, :, self.pos] = v[:, :, 0]
            return kc[:, :, : self.length], vc[:, :, : self.length], self.mask, False
        kc[rows, :, self.pos] = k[:, :, 0]
        vc[rows, :, self.pos] = v[:, :, 0]
        keys = kc.index_select(0, rows)[:, :, : self.length]
        values = vc.index_select(0, rows)[:, :, : self.length]
        return keys, values, self.mask, False


class DecodeBatch:
    """Continuous-batching generation engine over a static KV cache of `capacity` rows x `max_len`.

    >>> db = DecodeBatch(model, capacity=16)
    >>> slot = db.add(prompt_ids, stm=row_stm, sampler=Sampler(), max_new_tokens=64)
    >>> for out in db.step(): ...          # StepOutput(slot, token, finished), one per running row
    >>> db.remove(slot)                    # frees the slot (finished rows keep it until removed)

    Slots are stable names; where a row's data lie (its cache row) is internal: rows are kept packed
    in cache rows 0..n-1, so `remove` moves the last row into the hole it leaves.

    cache_memory_kv=False recomputes the memory K/V projections from the STM at every step (only to
    measure what the pre-cache saves; see benchmarks/model_speed.py).

    On a CPU the steps run as one traced graph (traced_step.py: the same ops without Python, ~2x faster
    for `tiny` at batch 1; traced here unless another batch on the model did, ~0.2 s, and again after
    the weights change); ``trace=False``
    decodes eagerly, as on other devices. ``compile=True`` runs a lone row's steps compiled instead.

    add() and step() run under torch.inference_mode (about 20% faster steps than no_grad on CPU); they
    only write into this object's own buffers and hand back Python ints, so no inference tensor leaks.
    """

    def __init__(
        self,
        model: ReactiveTransformer,
        capacity: int = 16,
        max_len: int | None = None,
        *,
        cache_memory_kv: bool = True,
        compile: bool = False,
        trace: bool | None = None,
    ) -> None:
        c = model.config
        self.model = model
        self.capacity = capacity
        self.max_len = min(max_len or c.max_seq_len, c.max_seq_len)
        self.cache_memory_kv = cache_memory_kv
        self.eos_id = model.tokenizer.eos_id
        p = next(model.parameters())
        kw = {"dtype": p.dtype, "device": p.device}
        n_self = c.self_attention_layers  # == c.layers unless the model has stateless layers
        self.k_cache = torch.zeros(n_self, capacity, c.kv_heads, self.max_len, c.head_dim, **kw)
        self.v_cache = torch.zeros_like(self.k_cache)
        # per layer and slot, a (1, H, M, hd) view of the cache: the one-row step writes through these
        self._row_k = [[self.k_cache[i, s : s + 1] for s in range(capacity)] for i in range(n_self)]
        self._row_v = [[self.v_cache[i, s : s + 1] for s in range(capacity)] for i in range(n_self)]
        mem_kv_heads = c.heads_of("cross")[1]
        self.mem_k = torch.zeros(c.layers, capacity, mem_kv_heads, c.stm_slots, c.head_dim, **kw)
        self.mem_v = torch.zeros_like(self.mem_k)
        self.stm = None if cache_memory_kv else torch.zeros(capacity, c.layers, c.stm_slots, c.dim, **kw)
        self.pending = torch.zeros(capacity, dtype=torch.long, device=p.device)  # next token to emit, by cache row
        self._rows: dict[int, _Row] = {}
        self._finished: set[int] = set()
        self._cache_row: dict[int, int] = {}  # slot -> its cache row; occupied rows are 0..len(_rows)-1
        self._slot_at: list[int] = []  # cache row -> slot
        self._compiled: CompiledRowStep | None = None
        if compile:
            if not cache_memory_kv:
                raise ValueError("compile=True needs cache_memory_kv=True")
            self._compiled = self._compile_row_step()
        if trace is None:
            trace = p.device.type == "cpu"
        self._traced: TracedStep | None = None
        if trace:
            self._traced = TracedStep.of(model)
            self.weights_changed()
        # a traced MoE layer runs every expert: only as many rows as its eager dense path takes
        self._traced_rows = MoE.dense_tokens(c.moe_experts) if c.moe_experts else capacity

    def _compile_row_step(self) -> CompiledRowStep:
        """Compile the one-row step now, on cache row 0 (empty: a prefill overwrites what this writes),
        so that a missing compiler fails here and not in the middle of an answer."""
        step = CompiledRowStep(self.model, self.max_len)
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the compiler's own (deprecations in torch's code)
                step(self.pending[:1, None], torch.zeros(1, dtype=torch.long, device=self.pending.device),
                     *self._row0_buffers())
        except Exception as exc:
            raise RuntimeError(f"torch.compile could not compile the decode step ({type(exc).__name__}: "
                               f"{str(exc)[:500]}); on a CPU it needs a C++ compiler on the PATH") from exc
        finally:
            with torch.inference_mode():
                self.k_cache[:, 0].zero_()
                self.v_cache[:, 0].zero_()
        return step

    @property
    def compiled(self) -> bool:
        """Whether a lone row's steps run compiled (``compile=True``)."""
        return self._compiled is not None

    @property
    def traced(self) -> bool:
        """Whether steps run as a traced graph (the default on a CPU; off for good after a failure)."""
        return self._traced is not None

    def weights_changed(self) -> None:
        """Trace the step again now (after the model's weights changed), not in the next step; a no-op
        when steps are not traced. A trace that fails turns tracing off, with a RuntimeWarning."""
        if self._traced is not None and self._traced.stale:
            try:
                self._traced.retrace()
            except Exception as exc:
                self._trace_failed(exc)

    def _trace_failed(self, exc: Exception) -> None:
        self._traced = None
        warnings.warn(f"the traced decode step failed ({type(exc).__name__}: {str(exc)[:300]}); "
                      "decoding eagerly from now on", RuntimeWarning, stacklevel=3)

    def _row0_buffers(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Cache row 0's self-attention keys/values and memory keys/values, as (L, 1, ...) views."""
        return self.k_cache[:, :1], self.v_cache[:, :1], self.mem_k[:, :1], self.mem_v[:, :1]

    # ------------------------------------------------------------ membership
    @property
    def active(self) -> list[int]:
        """Slots of the rows still generating, in slot order."""
        return sorted(s for s in self._rows if s not in self._finished)

    @property
    def free_slots(self) -> list[int]:
        """Slots that `add` may use."""
        return [s for s in range(self.capacity) if s not in self._rows]

    @property
    def finished(self) -> list[int]:
        """Slots whose rows are done but not yet removed."""
        return sorted(self._finished)

    def position(self, slot: int) -> int:
        """Number of tokens in the slot's cache (prompt plus tokens fed so far)."""
        return self._rows[slot].pos

    def fewest_left(self) -> int | None:
        """The fewest tokens a running row may still emit before its budget ends it (so that row ends
        within that many steps; [EOS] may end it sooner); None when no row is running."""
        left = [r.budget - r.emitted for s, r in self._rows.items() if s not in self._finished]
        return min(left) if left else None

    @torch.inference_mode()
    def add(
        self,
        prompt_ids: Tensor,
        memory_kv: MemoryKV | None = None,
        stm: Tensor | None = None,
        sampler: Sampler | None = None,
        max_new_tokens: int = 64,
        generator: torch.Generator | None = None,
    ) -> int:
        """Prefill one row (prompt (T,) long) into a free slot and return the slot.

        Give exactly one of memory_kv (one row) / stm ((1, L, S, D) or (L, S, D)). The row's budget is
        cut to what fits in max_len. Its first token is sampled here and returned by the next step().
        """
        if not self.free_slots:
            raise RuntimeError(f"DecodeBatch is full ({self.capacity} rows); remove a row first")
        if stm is not None and stm.dim() == 3:
            stm = stm.unsqueeze(0)
        if (stm is None) == (memory_kv is None):
            raise ValueError("pass exactly one of memory_kv / stm")
        if self.stm is not None and stm is None:
            raise ValueError("cache_memory_kv=False needs the row's stm")
        if memory_kv is None:
            memory_kv = self.model.memory_kv(stm)
        (slot,) = self._prefill([prompt_ids], [memory_kv], [sampler], [max_new_tokens], [generator])
        if self.stm is not None:
            self.stm[self._cache_row[slot]] = stm[0]  # type: ignore[index]
        return slot

    @torch.inference_mode()
    def add_many(
        self,
        prompts: list[Tensor],
        memory_kvs: list[MemoryKV],
        samplers: list[Sampler | None],
        max_new_tokens: list[int],
        generators: list[torch.Generator | None],
    ) -> list[int]:
        """`add` for several rows in one forward (prompts right-padded to the longest); returns their
        slots in order. Same tokens as adding them one by one, up to float rounding of the batched
        matmuls. Needs the memory K/V of each row (one row each)."""
        n = len(prompts)
        if not (n == len(memory_kvs) == len(samplers) == len(max_new_tokens) == len(generators)):
            raise ValueError("add_many needs one memory_kv, sampler, budget and generator per prompt")
        if self.stm is not None:
            raise ValueError("add_many needs cache_memory_kv=True (add() takes each row's stm)")
        if n > len(self.free_slots):
            raise RuntimeError(f"DecodeBatch has {len(self.free_slots)} free rows, not {n}")
        return self._prefill(prompts, memory_kvs, samplers, max_new_tokens, generators)

    def _prefill(self, prompts: list[Tensor], memory_kvs: list[MemoryKV], samplers: list[Sampler | None],
                 max_new_tokens: list[int], generators: list[torch.Generator | None]) -> list[int]:
        """Write the rows' memory K/V and prompts into free slots (one forward, right-padded; causal
        attention keeps each real token from the padding) and sample each row's first token."""
        device = self.pending.device
        flat = [p.reshape(-1).to(device) for p in prompts]
        lengths = [int(p.shape[0]) for p in flat]
        if min(lengths) == 0 or max(lengths) > self.max_len:
            raise ValueError(f"prompts must have 1..{self.max_len} tokens, got lengths {lengths}")
        if min(max_new_tokens) < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if any(kv.batch_size != 1 for kv in memory_kvs):
            raise ValueError("memory_kv must hold one row per prompt")
        slots = self.free_slots[: len(flat)]
        first = len(self._rows)  # the new rows go right after the occupied ones
        rows = list(range(first, first + len(flat)))
        # the new rows are consecutive: views of the buffers, not gathered copies (a 16-row prefill's
        # memory K/V gather alone took 1.3 ms)
        block = slice(first, first + len(flat))
        for row, kv in zip(rows, memory_kvs, strict=True):
            self.mem_k[:, row] = kv.k[:, 0]
            self.mem_v[:, row] = kv.v[:, 0]
        width = max(lengths)
        ids = torch.full((len(flat), width), self.model.tokenizer.pad_id, dtype=torch.long, device=device)
        for i, p in enumerate(flat):
            ids[i, : lengths[i]] = p
        mem = MemoryKV(self.mem_k[:, block], self.mem_v[:, block])
        last = torch.tensor(lengths, device=device) - 1
        with _attention_backends(device):
            logits, _ = self.model.run_decoder(ids, mem, self.model.rope.tables(width), _PrefillHook(self, block),
                                               need_aux=False, at=last)
        new_rows, first_tokens = [], []
        for i in range(len(slots)):  # sample every row before registering any: a failure leaves no row behind
            sampler = samplers[i] or Sampler.from_config(self.model.config)
            row = _Row(lengths[i], min(max_new_tokens[i], self.max_len - lengths[i] + 1), sampler, generators[i])
            first_tokens.append(row.sampler.sample(logits[i : i + 1, -1], row.generator)[0])
            new_rows.append(row)
        for i, (slot, row) in enumerate(zip(slots, new_rows, strict=True)):
            self.pending[rows[i]] = first_tokens[i]
            self._rows[slot] = row
            self._cache_row[slot] = rows[i]
            self._slot_at.append(slot)
        return slots

    def remove(self, slot: int) -> None:
        """Free a slot (finished or not). The last occupied cache row moves into the freed one, so the
        rows stay packed (one row's keys/values copied once, instead of a gather at every step)."""
        if slot not in self._rows:
            raise KeyError(f"slot {slot} is not in use")
        row = self._cache_row.pop(slot)
        last = len(self._slot_at) - 1
        moved = self._slot_at.pop()
        if row != last:
            self._move_row(last, row, self._rows[moved].pos)
            self._slot_at[row] = moved
            self._cache_row[moved] = row
        del self._rows[slot]
        self._finished.discard(slot)

    def _move_row(self, src: int, dst: int, length: int) -> None:
        """Copy cache row ``src`` (its first ``length`` keys/values, memory K/V, pending token) to ``dst``."""
        with torch.inference_mode():  # as add() and step(): the buffers may be inference tensors
            self.k_cache[:, dst, :, :length] = self.k_cache[:, src, :, :length]
            self.v_cache[:, dst, :, :length] = self.v_cache[:, src, :, :length]
            self.mem_k[:, dst] = self.mem_k[:, src]
            self.mem_v[:, dst] = self.mem_v[:, src]
            self.pending[dst] = self.pending[src]
            if self.stm is not None:
                self.stm[dst] = self.stm[src]

    # ------------------------------------------------------------ stepping
    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        """Emit each running row's pending token, then one batched forward to sample the next ones."""
        slots = self.active
        if not slots:
            return []
        rows = [self._cache_row[s] for s in slots]
        tokens = self.pending[rows].tolist() if len(rows) > 1 else [int(self.pending[rows[0]])]
        outs, cont = [], []
        for slot, tok in zip(slots, tokens, strict=True):
            row = self._rows[slot]
            row.emitted += 1
            done = tok == self.eos_id or row.emitted >= row.budget
            outs.append(StepOutput(slot, tok, done))
            if done:
                self._finished.add(slot)
            else:
                cont.append(slot)
        if cont:
            self._forward(cont)
        return outs

    def _forward(self, slots: list[int]) -> None:
        n = len(slots)
        slots = sorted(slots, key=self._cache_row.__getitem__)  # in cache-row order
        first, last = self._cache_row[slots[0]], self._cache_row[slots[-1]]
        rows: slice | Tensor
        if last - first + 1 == n:  # packed (the usual case): one slice of the cache
            rows = slice(first, last + 1)
        else:  # a finished row not yet removed sits between running ones
            rows = torch.tensor([self._cache_row[s] for s in slots], device=self.pending.device)
        positions = [self._rows[s].pos for s in slots]
        logits = None
        if self._compiled is not None and isinstance(rows, slice) and rows == slice(0, 1):  # one row, in cache row 0
            logits = self._compiled_logits(positions[0])
        if logits is None and self._traced is not None and isinstance(rows, slice) and n <= self._traced_rows:
            logits = self._traced_logits(rows, positions)
        if logits is None:
            logits = self._eager_logits(rows, positions)
        nxt = logits.argmax(dim=-1)  # greedy rows: one batched argmax
        for i, s in enumerate(slots):
            row = self._rows[s]
            if not row.sampler.greedy:  # sampled rows: each with its own sampler and generator
                nxt[i] = row.sampler.sample(logits[i : i + 1], row.generator)[0]
        self.pending[rows] = nxt
        for s in slots:
            self._rows[s].pos += 1

    def _compiled_logits(self, position: int) -> Tensor | None:
        """The lone row's logits (1, V) from the compiled step; None after it failed (e.g. a recompile
        that found no compiler), which turns it off for good: the eager step then writes the same
        cache position again."""
        step = self._compiled
        assert step is not None
        try:
            return step(self.pending[:1, None], torch.tensor([position], device=self.pending.device),
                        *self._row0_buffers())
        except Exception as exc:
            self._compiled = None
            warnings.warn(f"the compiled decode step failed ({type(exc).__name__}: {str(exc)[:300]}); "
                          "decoding eagerly from now on", RuntimeWarning, stacklevel=2)
            return None

    def _memory_of(self, rows: slice | Tensor) -> MemoryKV:
        """The memory keys/values of cache ``rows`` (a view for a slice of them)."""
        if self.stm is not None:  # benchmark path: project the memory K/V again at every step
            return self.model.memory_kv(self.stm[rows])
        if isinstance(rows, slice):
            return MemoryKV(self.mem_k[:, rows], self.mem_v[:, rows])
        return MemoryKV(self.mem_k.index_select(1, rows), self.mem_v.index_select(1, rows))

    def _traced_logits(self, rows: slice, positions: list[int]) -> Tensor | None:
        """The packed rows' logits (n, V) from the traced step; None after it failed (tracing is then
        off for good, and the eager step writes the same cache positions again)."""
        step = self._traced
        assert step is not None
        device = self.pending.device
        length = max(positions) + 1
        pos = torch.tensor(positions, device=device)
        keep = (torch.arange(length, device=device)[None] <= pos[:, None])[:, None, None]  # (n, 1, 1, T)
        mem = self._memory_of(rows)
        try:
            return step(self.pending[rows][:, None], self.model.rope.at(pos), keep, step.positions_index(pos),
                        self.k_cache[:, rows, :, :length], self.v_cache[:, rows, :, :length], mem.k, mem.v)
        except Exception as exc:
            self._trace_failed(exc)
            return None

    def _eager_logits(self, rows: slice | Tensor, positions: list[int]) -> Tensor:
        """The next-token logits (n, V) of the running rows (cache ``rows``, at ``positions``)."""
        model = self.model
        n = len(positions)
        length = max(positions) + 1
        mask = pos = None
        if n == 1:  # one row: no index tensors, no mask (its keys are exactly the cache prefix)
            cis = model.rope.cis[positions[0] : length].view(1, 1, 1, -1)
        else:
            pos = torch.tensor(positions, device=self.pending.device)
            cis = model.rope.at(pos)
            if min(positions) != max(positions):
                mask = (torch.arange(length, device=pos.device)[None] <= pos[:, None])[:, None, None]  # (n,1,1,T)
        mem = self._memory_of(rows)
        hook = _StepHook(self, rows, pos, positions[0] if n == 1 else None, length, mask)
        ids = self.pending[rows][:, None]  # (n, 1)
        with _attention_backends(ids.device):
            logits, _ = model.run_decoder(ids, mem, cis, hook, need_aux=False)
        return logits[:, -1]  # (n, V)


@torch.no_grad()
def generate(
    model: ReactiveTransformer,
    ids: Tensor | list[Tensor],
    stm: Tensor | None,
    max_new_tokens: int = 64,
    sampler: Sampler | None = None,
    generator: torch.Generator | None = None,
    *,
    memory_kv: MemoryKV | None = None,
) -> Tensor:
    """Generate for a (ragged) batch on one DecodeBatch -> (B, n) new ids padded with the pad id."""
    prompts = list(ids) if isinstance(ids, (list, tuple)) else list(ids.unbind(0))
    b = len(prompts)
    if (stm is None) == (memory_kv is None):
        raise ValueError("pass exactly one of stm / memory_kv")
    mem = memory_kv if memory_kv is not None else model.memory_kv(stm)
    if mem.batch_size not in (1, b):
        raise ValueError(f"memory for {mem.batch_size} rows does not match a batch of {b}")
    pad = model.tokenizer.pad_id
    if max_new_tokens <= 0 or b == 0:
        return torch.full((b, 0), pad, dtype=torch.long)
    longest = max(int(p.numel()) for p in prompts)
    # eager: a trace (~0.2 s) costs more than it saves on one short generation
    db = DecodeBatch(model, capacity=b, max_len=longest + max_new_tokens, trace=False)
    sampler = sampler or Sampler.from_config(model.config)
    generators = _row_generators(sampler, generator, b, db.pending.device)
    slots = [
        db.add(p, memory_kv=mem[i if mem.batch_size > 1 else 0], sampler=sampler,
               max_new_tokens=max_new_tokens, generator=generators[i])
        for i, p in enumerate(prompts)
    ]
    produced: dict[int, list[int]] = {s: [] for s in slots}
    while db.active:
        for out in db.step():
            produced[out.slot].append(out.token)
    n = max(len(v) for v in produced.values())
    result = torch.full((b, n), pad, dtype=torch.long)
    for i, s in enumerate(slots):
        result[i, : len(produced[s])] = torch.tensor(produced[s], dtype=torch.long)
    return result


def _row_generators(
    sampler: Sampler, generator: torch.Generator | None, rows: int, device: torch.device
) -> list[torch.Generator | None]:
    """One generator per row, seeded from `generator` (the global RNG when None) in row order.

    Rows sharing one generator would take turns on it, so a row's samples would change with its
    neighbours (how many there are, and when each stops); a seed per row makes row i depend only on the
    caller's seed and i. Greedy decoding draws nothing.
    """
    if sampler.greedy:
        return [generator] * rows
    source = "cpu" if generator is None else generator.device
    seeds = torch.randint(0, 2**63 - 1, (rows,), generator=generator, device=source).tolist()
    return [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
