"""Tiny gptlite models and their copies in transformers' own GPT-2, shared by the tests."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gptlite import GPTLiteConfig, GPTLiteForCausalLM

# What travels beside a saved gptlite model as remote code: the book's model and nothing else.
REMOTE_CODE = frozenset({"configuration_gptlite.py", "modeling_gptlite.py", "compat.py"})

TINY = {"vocab_size": 120, "context_length": 40, "emb_dim": 48, "n_heads": 4, "n_layers": 3, "drop_rate": 0.0}


def tiny_model(**overrides) -> GPTLiteForCausalLM:
    return GPTLiteForCausalLM(GPTLiteConfig(**{**TINY, **overrides})).eval()


def randomize_(model: torch.nn.Module) -> None:
    """Random values everywhere, biases and LayerNorm included, so no parameter goes untested."""
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)


def book_state_dict(model: GPTLiteForCausalLM) -> dict[str, torch.Tensor]:
    """The model's state dict under the book's GPTModel names (the trunk is `model.` inside gptlite)."""
    return {name.removeprefix("model."): tensor for name, tensor in model.state_dict().items()}


def to_gpt2(model: GPTLiteForCausalLM) -> GPT2LMHeadModel:
    """Copy gptlite weights into transformers' GPT-2, written out independently of gptlite.conversion."""
    c = model.config
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=c.vocab_size,
            n_positions=c.context_length,
            n_embd=c.emb_dim,
            n_layer=c.n_layers,
            n_head=c.n_heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=c.tie_word_embeddings,
        )
    ).eval()
    src = book_state_dict(model)
    dst = {
        "transformer.wte.weight": src["tok_emb.weight"],
        "transformer.wpe.weight": src["pos_emb.weight"],
        "transformer.ln_f.weight": src["final_norm.scale"],
        "transformer.ln_f.bias": src["final_norm.shift"],
        "lm_head.weight": src["out_head.weight"],
    }
    zeros = torch.zeros(c.emb_dim)
    for i in range(c.n_layers):
        p, h = f"trf_blocks.{i}.", f"transformer.h.{i}."
        # GPT-2's Conv1D stores (in, out); nn.Linear stores (out, in).
        dst[h + "attn.c_attn.weight"] = torch.cat(
            [src[p + f"att.{n}.weight"].T for n in ("W_query", "W_key", "W_value")], 1
        )
        dst[h + "attn.c_attn.bias"] = torch.cat(
            [src.get(p + f"att.{n}.bias", zeros) for n in ("W_query", "W_key", "W_value")]
        )
        dst[h + "attn.c_proj.weight"] = src[p + "att.out_proj.weight"].T
        dst[h + "attn.c_proj.bias"] = src[p + "att.out_proj.bias"]
        dst[h + "mlp.c_fc.weight"] = src[p + "ff.layers.0.weight"].T
        dst[h + "mlp.c_fc.bias"] = src[p + "ff.layers.0.bias"]
        dst[h + "mlp.c_proj.weight"] = src[p + "ff.layers.2.weight"].T
        dst[h + "mlp.c_proj.bias"] = src[p + "ff.layers.2.bias"]
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            dst[h + f"{theirs}.weight"] = src[p + f"{ours}.scale"]
            dst[h + f"{theirs}.bias"] = src[p + f"{ours}.shift"]
    missing, unexpected = gpt2.load_state_dict(dst, strict=False)
    assert not unexpected and all(k.endswith("attn.bias") or k.endswith("masked_bias") for k in missing)
    return gpt2
