"""gptlite.speedups.decoding: bf16 decoding on CPU through faster kernels; the same products, only where it pays."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F

from gptlite import GPTLiteConfig, GPTLiteForCausalLM
from gptlite.speedups import decoding as decode_linear
from gptlite.speedups import speed_up
from gptlite.speedups.decoding import _PACKED, DecodingLinear

pytestmark = pytest.mark.skipif(not decode_linear._ONEDNN_BF16, reason="this CPU has no oneDNN bf16")


def linear(in_features: int = 96, out_features: int = 160, bias: bool = True) -> DecodingLinear:
    torch.manual_seed(0)
    return DecodingLinear(in_features, out_features, bias=bias).to(torch.bfloat16).eval()


def fp32_reference(layer: DecodingLinear, x: torch.Tensor) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


@pytest.mark.parametrize("shape", [(1, 96), (1, 1, 96)])
@pytest.mark.parametrize("bias", [True, False])
def test_one_row_is_a_bf16_product_accumulated_in_fp32(shape, bias, monkeypatch):
    layer = linear(bias=bias)
    x = torch.randn(shape).to(torch.bfloat16)
    calls = []
    original = torch._C._set_mkldnn_enabled
    monkeypatch.setattr(torch._C, "_set_mkldnn_enabled", lambda flag: calls.append(flag) or original(flag))
    with torch.no_grad():
        out = layer(x)
    monkeypatch.undo()
    assert calls == [False, True]  # the one-row route ran, and put oneDNN back
    assert torch._C._get_mkldnn_enabled()
    assert out.shape == (*shape[:-1], 160) and out.dtype == torch.bfloat16
    # One rounding of an fp32-accumulated product: within bf16's half unit of the fp32 result.
    torch.testing.assert_close(out.float(), fp32_reference(layer, x), rtol=2**-8, atol=1e-3)
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=2**-7, atol=1e-2)


@pytest.mark.parametrize("shape", [(2, 1, 96), (3, 1, 96), (16, 1, 96)])
@pytest.mark.parametrize("bias", [True, False])
def test_a_decoding_step_of_a_few_sequences_uses_the_packed_weight_with_f_linears_bits(shape, bias):
    layer = linear(bias=bias)
    x = torch.randn(shape).to(torch.bfloat16)
    with torch.inference_mode():
        out = layer(x)
    assert layer in _PACKED
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))


def test_a_changed_weight_is_packed_again():
    layer = linear()
    x = torch.randn(4, 1, 96).to(torch.bfloat16)
    with torch.no_grad():
        layer(x)
        first = _PACKED[layer][1]
        layer.weight.mul_(2)  # as an optimizer step changes it in place
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
        assert _PACKED[layer][1] is not first
        layer.load_state_dict({"weight": torch.ones(160, 96), "bias": torch.zeros(160)})
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_the_plain_product_wherever_the_fast_routes_do_not_pay_or_apply():
    layer = linear()
    rows = torch.randn(4, 1, 96).to(torch.bfloat16)
    out = layer(rows)  # gradients wanted: autograd needs the plain product
    assert out.requires_grad
    layer.train()
    with torch.no_grad():
        layer(rows)  # training mode
        layer.eval()
        layer(torch.randn(decode_linear.MAX_PACKED_ROWS + 1, 1, 96).to(torch.bfloat16))  # bound by arithmetic
        layer(torch.randn(1, 8, 96).to(torch.bfloat16))  # a prompt: runs once, a copy would not be reused
        layer(torch.randn(8, 96).to(torch.bfloat16))  # not a decoding step
        layer.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(rows.float())  # autocast casts the weight itself
        assert torch.equal(layer(rows.float()), F.linear(rows.float(), layer.weight, layer.bias))  # fp32
    assert layer not in _PACKED
    layer.bfloat16()
    with torch.no_grad():
        layer(rows)
    assert layer in _PACKED
    layer.train()
    assert layer not in _PACKED  # train() frees the copy


def test_a_model_that_packed_still_copies_pickles_and_saves(tmp_path):
    config = GPTLiteConfig(vocab_size=64, context_length=16, emb_dim=32, n_heads=4, n_layers=2)
    model = speed_up(GPTLiteForCausalLM(config).to(torch.bfloat16).eval())
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with torch.no_grad():
        tokens = model.generate(prompts, max_new_tokens=5, do_sample=False)
    assert model.out_head in _PACKED
    twin = copy.deepcopy(model)
    pickle.loads(pickle.dumps(model))
    torch.save(model.state_dict(), io.BytesIO())
    model.save_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(twin.generate(prompts, max_new_tokens=5, do_sample=False), tokens)


def test_decoding_logits_match_the_plain_model(monkeypatch):
    config = GPTLiteConfig(vocab_size=300, context_length=64, emb_dim=64, n_heads=4, n_layers=3)
    torch.manual_seed(0)
    model = speed_up(GPTLiteForCausalLM(config).to(torch.bfloat16).eval())
    ids = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        fast = [model(ids[:, : t + 1]).logits[:, -1] for t in range(4)]  # one row each, as in batch-1 decoding
        monkeypatch.setattr(decode_linear, "_ONEDNN_BF16", False)
        plain = [model(ids[:, : t + 1]).logits[:, -1] for t in range(4)]
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a.float(), b.float(), rtol=0.02, atol=0.02)
