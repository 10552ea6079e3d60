"""What transformers expects of a model, as GPT-2 provides it: fullgraph compile and the static cache, attention
backends with their kwargs passed through, outputs recorded by hooks, gradients through returned attentions, the
cache-name deprecation, a base model under the head."""

import warnings

import pytest
import torch
from transformers import AutoModel
from transformers.cache_utils import DynamicCache, StaticCache
from transformers.modeling_utils import AttentionInterface

from gptlite import GPTLiteForCausalLM, GPTLiteModel
from gptlite.compat import CACHE_NAME, cache_of
from tests.conftest import TINY, randomize_, tiny_model


def test_declared_capabilities():
    for flag in ("_can_compile_fullgraph", "_supports_attention_backend", "_supports_sdpa"):
        assert getattr(GPTLiteForCausalLM, flag) is True, flag
    assert GPTLiteForCausalLM.base_model_prefix == "model"
    assert set(GPTLiteForCausalLM._can_record_outputs) == {"hidden_states", "attentions"}


def test_the_base_model_is_gptlite_model_and_returns_the_final_hidden_states():
    model = tiny_model()
    randomize_(model)
    assert isinstance(model.base_model, GPTLiteModel) and model.base_model is not model
    ids = torch.randint(0, TINY["vocab_size"], (2, 7))
    with torch.no_grad():
        hidden = model.base_model(ids).last_hidden_state
        assert hidden.shape == (2, 7, TINY["emb_dim"])
        assert torch.allclose(model.out_head(hidden), model(ids).logits, atol=1e-6)
    assert AutoModel.from_config(model.config).__class__ is GPTLiteModel


@pytest.mark.parametrize("with_positions", [True, False])
def test_fullgraph_compile_with_a_static_cache_equals_eager(with_positions):
    # backend="eager": dynamo must capture the whole forward in one graph (a graph break or a host read of the ids
    # raises under fullgraph=True), without needing a C++ compiler.
    model = tiny_model()
    randomize_(model)
    ids = torch.randint(0, TINY["vocab_size"], (2, 6))
    cache = StaticCache(config=model.config, max_cache_len=20)
    compiled = torch.compile(model, fullgraph=True, backend="eager")

    def positions(start, length):
        return {"position_ids": torch.arange(start, start + length).expand(2, length)} if with_positions else {}

    with torch.no_grad():
        prefill = compiled(ids, cache=cache, **positions(0, 6)).logits
        step = compiled(ids[:, :2], cache=cache, **positions(6, 2)).logits
        reference = model(torch.cat([ids, ids[:, :2]], 1)).logits
    assert torch.allclose(prefill, reference[:, :6], atol=1e-5)
    assert torch.allclose(step, reference[:, 6:], atol=1e-5)


def test_static_cache_generation_equals_dynamic_with_left_padding():
    model = tiny_model()
    randomize_(model)
    ids = torch.randint(0, TINY["vocab_size"], (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # row 0 is left-padded
    kwargs = {"attention_mask": mask, "max_new_tokens": 8, "do_sample": False, "eos_token_id": None}
    with torch.no_grad():
        dynamic = model.generate(ids, **kwargs)
        static = model.generate(ids, cache_implementation="static", **kwargs)
    assert torch.equal(dynamic, static)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_padding_free_batches_keep_packed_sequences_apart_through_position_ids(implementation):
    model = tiny_model()
    randomize_(model)
    model.set_attn_implementation(implementation)
    first, second = torch.randint(0, TINY["vocab_size"], (1, 5)), torch.randint(0, TINY["vocab_size"], (1, 8))
    packed = torch.cat([first, second], 1)  # (1, 13), no padding, no attention mask
    position_ids = torch.cat([torch.arange(5), torch.arange(8)]).unsqueeze(0)
    with torch.no_grad():  # (as in training: packing is read from the positions when there is no cache)
        together = model(packed, position_ids=position_ids, use_cache=False).logits
        apart = torch.cat([model(first).logits, model(second).logits], 1)
    assert torch.allclose(together, apart, atol=1e-5)


def test_attention_kwargs_reach_a_registered_attention_implementation():
    seen = []

    def recording_attention(module, query, key, value, attention_mask, **kwargs):
        seen.append(kwargs)
        return AttentionInterface._global_mapping["sdpa"](module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("gptlite_test_recording", recording_attention)
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionMaskInterface.register("gptlite_test_recording", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model = tiny_model()
    model.set_attn_implementation("gptlite_test_recording")
    ids = torch.randint(0, TINY["vocab_size"], (1, 6))
    position_ids = torch.arange(6).unsqueeze(0)
    with torch.no_grad():
        model(ids, position_ids=position_ids, my_backend_flag=7)
    assert len(seen) == TINY["n_layers"]
    assert all(kw["my_backend_flag"] == 7 and torch.equal(kw["position_ids"], position_ids) for kw in seen)


def test_gradients_reach_the_returned_hidden_states_and_attentions():
    model = tiny_model(drop_rate=0.1).train()
    model.set_attn_implementation("eager")
    ids = torch.randint(0, TINY["vocab_size"], (2, 9))
    out = model(ids, output_hidden_states=True, output_attentions=True)
    hidden, attentions = out.hidden_states[0], out.attentions[0]
    hidden.retain_grad()
    attentions.retain_grad()
    out.logits.flatten()[0].backward()
    assert hidden.grad is not None and attentions.grad is not None
    assert len(out.hidden_states) == TINY["n_layers"] + 1 and len(out.attentions) == TINY["n_layers"]


def test_output_recording_follows_the_config_and_return_dict_false():
    model = tiny_model()
    model.config.output_hidden_states = True
    ids = torch.randint(0, TINY["vocab_size"], (1, 4))
    with torch.no_grad():
        out = model(ids)
        assert len(out.hidden_states) == TINY["n_layers"] + 1
        assert torch.equal(out.hidden_states[-1], model.base_model(ids).last_hidden_state)
        as_tuple = model(ids, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.logits)


def test_the_cache_keyword_and_its_deprecated_old_name():
    model = tiny_model()
    ids = torch.randint(0, TINY["vocab_size"], (1, 5))
    with torch.no_grad():
        new = model(ids, cache=DynamicCache(config=model.config), use_cache=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            old = model(ids, past_key_values=DynamicCache(config=model.config), use_cache=True)
    assert torch.equal(new.logits, old.logits)
    assert cache_of(old).get_seq_length() == cache_of(new).get_seq_length() == 5
    deprecated = [w for w in caught if "`past_key_values` is deprecated" in str(w.message)]
    # From transformers 5.24 the cache is `cache` and the old name warns, exactly as GPT-2 does; before, the old
    # name is the current one.
    assert len(deprecated) == (1 if CACHE_NAME == "cache" else 0)


def test_token_ids_are_checked_on_cpu_eager_but_never_read_under_compile():
    model = tiny_model()
    bad = torch.tensor([[1, TINY["vocab_size"]]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(bad)
    reads = []
    original = torch.aminmax
    torch.aminmax = lambda *args, **kwargs: reads.append(1) or original(*args, **kwargs)
    try:
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        with torch.no_grad():
            compiled(torch.tensor([[1, 2, 3]]))
    finally:
        torch.aminmax = original
    assert reads == []
