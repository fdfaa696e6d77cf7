"""save_pretrained / from_pretrained: exact round trips and clear errors."""

import json

import pytest
import torch
from safetensors.torch import load_file

from reactor_rt.errors import CheckpointError
from reactor_rt.model import ReactiveTransformer, RxTConfig
from reactor_rt.tokenizer import ByteTokenizer


def small(**changes):
    base = dict(vocab_size=300, dim=32, layers=2, heads=4, query_heads=2, kv_heads=2, ff_dim=48,
                moe_experts=4, moe_top_k=2, stm_slots=8, max_seq_len=64, max_query_tokens=32)
    return RxTConfig(**{**base, **changes})


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    m = ReactiveTransformer(small(residual_gate="linear")).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.save_pretrained(tmp_path / "ckpt")
    return m, tmp_path / "ckpt"


@torch.no_grad()
def test_round_trip_is_exact(saved):
    m, path = saved
    again = ReactiveTransformer.from_pretrained(path).eval()
    assert again.config == m.config and isinstance(again.tokenizer, ByteTokenizer)
    for (k, a), (k2, b) in zip(m.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    x = torch.randint(8, 260, (2, 7))
    stm = torch.randn(2, 2, 8, 32)
    assert torch.equal(m.decode(x, stm), again.decode(x, stm))
    assert torch.equal(m.generate(x, stm, max_new_tokens=5), again.generate(x, stm, max_new_tokens=5))


def test_tied_embedding_is_stored_once(saved):
    _, path = saved
    tensors = load_file(str(path / "model.safetensors"))
    assert [k for k, v in tensors.items() if tuple(v.shape) == (300, 32)] == ["embedding.weight"]
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {p.name for p in path.iterdir()}


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer_config.json"])
def test_missing_file(saved, missing):
    _, path = saved
    (path / missing).unlink()
    with pytest.raises(CheckpointError):
        ReactiveTransformer.from_pretrained(path)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        ReactiveTransformer.from_pretrained(tmp_path / "nowhere")


def test_corrupt_weights(saved):
    _, path = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        ReactiveTransformer.from_pretrained(path)


def test_garbage_weights(saved):
    _, path = saved
    (path / "model.safetensors").write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(CheckpointError):
        ReactiveTransformer.from_pretrained(path)


def test_corrupt_config(saved):
    _, path = saved
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json"):
        ReactiveTransformer.from_pretrained(path)


def test_config_that_does_not_match_the_weights(saved):
    _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    cfg["ff_dim"] = 64
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        ReactiveTransformer.from_pretrained(path)
    cfg["ff_dim"], cfg["memory_attention"] = 48, "simple"  # drops the pre-attention tensors
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        ReactiveTransformer.from_pretrained(path)
