"""gptlite.packed_linear: decoding on CPU reads weights packed once; same numbers, only where it pays."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F

from gptlite import GPTLiteConfig, GPTLiteForCausalLM, packed_linear
from gptlite.packed_linear import _PACKED, Linear

needs_bf16 = pytest.mark.skipif(not packed_linear._SUPPORTED[torch.bfloat16], reason="no oneDNN bf16 on this CPU")
needs_fp32 = pytest.mark.skipif(not packed_linear._SUPPORTED[torch.float32], reason="no MKL in this torch")


def linear(dtype: torch.dtype, in_features: int = 96, out_features: int = 160, bias: bool = True) -> Linear:
    torch.manual_seed(0)
    return Linear(in_features, out_features, bias=bias).to(dtype).eval()


@needs_bf16
@pytest.mark.parametrize("shape", [(1, 96), (1, 1, 96), (3, 1, 96), (16, 96)])
@pytest.mark.parametrize("bias", [True, False])
def test_bf16_packed_product_is_bit_identical_to_f_linear(shape, bias):
    layer = linear(torch.bfloat16, bias=bias)
    x = torch.randn(shape).to(torch.bfloat16)
    with torch.no_grad():
        out = layer(x)
    assert layer in _PACKED  # the packed path really ran
    assert out.shape == (*shape[:-1], 160)
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))


@needs_fp32
@pytest.mark.parametrize("shape", [(1, 96), (2, 1, 96), (8, 96)])
def test_fp32_packed_product_matches_f_linear(shape):
    layer = linear(torch.float32)
    x = torch.randn(shape)
    with torch.inference_mode():
        out = layer(x)
    assert layer in _PACKED
    reference = F.linear(x, layer.weight, layer.bias)
    if shape[0] * (shape[1] if len(shape) == 3 else 1) > 1:
        assert torch.equal(out, reference)  # MKL's packed GEMM sums as its unpacked one does
    else:
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)  # one row: gemv's order differs


@needs_bf16
def test_a_changed_weight_is_packed_again():
    layer = linear(torch.bfloat16)
    x = torch.randn(1, 96).to(torch.bfloat16)
    with torch.no_grad():
        layer(x)
        first = _PACKED[layer][1]
        layer.weight.mul_(2)  # as an optimizer step changes it in place
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
        assert _PACKED[layer][1] is not first
        layer.load_state_dict({"weight": torch.ones(160, 96), "bias": torch.zeros(160)})
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.float()
    x = x.float()
    with torch.no_grad():
        assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


@needs_bf16
def test_packing_only_where_it_pays():
    layer = linear(torch.bfloat16)
    x = torch.randn(1, 96).to(torch.bfloat16)
    layer(x)  # gradients wanted: autograd needs the plain product
    layer.train()
    with torch.no_grad():
        layer(x)  # training mode
        layer.eval()
        layer(torch.randn(packed_linear.MAX_PACKED_ROWS + 1, 96).to(torch.bfloat16))  # bound by arithmetic
        layer.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x.float())  # autocast casts the weight itself
    assert layer not in _PACKED
    with torch.no_grad():
        layer(x.float())
    assert layer in _PACKED
    layer.train()
    assert layer not in _PACKED  # train() frees the copy


@needs_bf16
def test_a_model_that_packed_still_copies_pickles_and_saves(tmp_path):
    config = GPTLiteConfig(vocab_size=64, context_length=16, emb_dim=32, n_heads=4, n_layers=2)
    model = GPTLiteForCausalLM(config).to(torch.bfloat16).eval()
    prompt = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        tokens = model.generate(prompt, max_new_tokens=5, do_sample=False)
    assert model.out_head in _PACKED
    twin = copy.deepcopy(model)
    pickle.loads(pickle.dumps(model))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    model.save_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(twin.generate(prompt, max_new_tokens=5, do_sample=False), tokens)


@needs_bf16
def test_generate_gives_the_tokens_of_the_unpacked_model(monkeypatch):
    config = GPTLiteConfig(vocab_size=300, context_length=64, emb_dim=64, n_heads=4, n_layers=3)
    torch.manual_seed(0)
    model = GPTLiteForCausalLM(config).to(torch.bfloat16).eval()
    prompts = torch.randint(0, 300, (2, 5))
    with torch.no_grad():
        packed = model.generate(prompts, max_new_tokens=20, do_sample=False)
        assert model.out_head in _PACKED
        monkeypatch.setattr(packed_linear, "MAX_PACKED_ROWS", 0)
        plain = model.generate(prompts, max_new_tokens=20, do_sample=False)
    assert torch.equal(packed, plain)
