"""GPT-2 configurations (Hugging Face's config.json, OpenAI's hparams.json) to and from GPTLiteConfig."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from transformers import GPT2Config

from ..configuration_gptlite import GPTLiteConfig
from ..errors import UsageError
from .storage import ConversionError

__all__ = ["ModelRefused", "from_gpt2_config", "from_openai_hparams", "read_gpt2_config", "to_gpt2_config"]

# All compute GPT-2's tanh approximation of GELU, which is what gptlite's feed-forward uses.
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


class ModelRefused(ConversionError, UsageError):
    """A model of a kind gptlite does not take (another model_type, a GPT-2 option gptlite lacks): a usage error,
    exit status 2, as gptlite-generate and gptlite-eval give the same model."""


def read_json(path: Path, why_needed: str) -> dict:
    """A JSON object from `path`; an error naming the file if it is missing, not JSON or not an object."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: {why_needed}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ConversionError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def read_gpt2_config(path: Path) -> GPT2Config:
    """A Hugging Face GPT-2 `config.json`, refusing other model types."""
    raw = read_json(path, "a GPT-2 checkpoint needs its config.json")
    model_type = raw.get("model_type")
    if model_type != "gpt2":
        raise ModelRefused(f"{path}: model_type is {model_type!r}; only 'gpt2' checkpoints convert")
    # GPT2Config fills what older files leave out with GPT-2's defaults (e.g. tie_word_embeddings=True).
    return GPT2Config.from_dict(raw)


def from_gpt2_config(config: GPT2Config, where: str = "config.json") -> GPTLiteConfig:
    """The gptlite config computing the same function as a `GPT2LMHeadModel` with `config`.

    Raises:
        ModelRefused: naming the field, for GPT-2 options gptlite cannot express.
    """
    refusals = {
        "activation_function": (
            config.activation_function not in _TANH_GELUS,
            f"is {config.activation_function!r}; gptlite's feed-forward uses GPT-2's tanh-approximated GELU",
        ),
        "n_inner": (
            config.n_inner not in (None, 4 * config.n_embd),
            f"is {config.n_inner}; gptlite's feed-forward width is always 4 * n_embd = {4 * config.n_embd}",
        ),
        "scale_attn_weights": (
            not config.scale_attn_weights,
            "is false; gptlite always scales attention scores by 1/sqrt(head_dim)",
        ),
        "scale_attn_by_inverse_layer_idx": (
            config.scale_attn_by_inverse_layer_idx,
            "is true; gptlite does not divide attention scores by the block index",
        ),
        "reorder_and_upcast_attn": (
            config.reorder_and_upcast_attn,
            "is true; gptlite computes attention scores in the model's dtype, not upcast to float32 "
            "with pre-scaled keys, so half-precision results would differ",
        ),
        "add_cross_attention": (
            config.add_cross_attention,
            "is true; gptlite is decoder-only and has no cross-attention weights",
        ),
    }
    for field, (refused, reason) in refusals.items():
        if refused:
            raise ModelRefused(f"{where}: {field} {reason}")

    dropouts = {config.resid_pdrop, config.embd_pdrop, config.attn_pdrop}
    if len(dropouts) > 1:
        # Dropout does not change inference; only fine-tuning would see the difference.
        warnings.warn(
            f"{where}: resid_pdrop, embd_pdrop and attn_pdrop differ ({sorted(dropouts)}); gptlite has one "
            f"drop_rate and uses the largest, {max(dropouts)}",
            stacklevel=2,
        )
    return GPTLiteConfig(
        vocab_size=config.vocab_size,
        context_length=config.n_positions,
        emb_dim=config.n_embd,
        n_heads=config.n_head,
        n_layers=config.n_layer,
        drop_rate=max(dropouts),
        qkv_bias=True,  # GPT-2's fused c_attn always has a bias
        layer_norm_eps=config.layer_norm_epsilon,
        initializer_range=config.initializer_range,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )


def from_openai_hparams(path: Path) -> GPTLiteConfig:
    """OpenAI's `hparams.json` (`n_vocab`, `n_ctx`, `n_embd`, `n_head`, `n_layer`) as a gptlite config.

    OpenAI's GPT-2 ties the output head to the token embedding, has query/key/value biases, and uses
    LayerNorm epsilon 1e-5 (the value in its model.py).
    """
    hparams = read_json(path, "OpenAI's checkpoints have an hparams.json")
    fields = {"n_vocab": "vocab_size", "n_ctx": "context_length", "n_embd": "emb_dim", "n_head": "n_heads",
              "n_layer": "n_layers"}
    missing = [key for key in fields if key not in hparams]
    if missing:
        raise ConversionError(f"{path}: missing {', '.join(missing)}")
    try:
        return GPTLiteConfig(
            **{ours: hparams[theirs] for theirs, ours in fields.items()},
            qkv_bias=True,
            tie_word_embeddings=True,
            layer_norm_eps=1e-5,
        )
    except ValueError as err:
        raise ConversionError(f"{path}: {err}") from None


def to_gpt2_config(config: GPTLiteConfig, vocab_size: int | None = None) -> GPT2Config:
    """The `GPT2Config` of a `GPT2LMHeadModel` computing the same function as a gptlite model.

    Every gptlite option has a GPT-2 equivalent: no query/key/value bias is an exact zero bias, an
    untied head is `tie_word_embeddings=False`, and the single drop_rate sets all three GPT-2 dropouts.
    `vocab_size` overrides the vocabulary size (when a padded vocabulary is trimmed).

    Keys GPT-2 consumers read that transformers no longer needs are written too, as OpenAI's gpt2
    config.json has them: `n_ctx` (llama.cpp's convert_hf_to_gguf.py requires it) and an explicit
    `n_inner`, so no reader has to know that None means 4 * n_embd.
    """
    return GPT2Config(
        vocab_size=vocab_size or config.vocab_size,
        n_positions=config.context_length,
        n_ctx=config.context_length,
        n_embd=config.emb_dim,
        n_layer=config.n_layers,
        n_head=config.n_heads,
        n_inner=4 * config.emb_dim,
        activation_function="gelu_new",
        resid_pdrop=config.drop_rate,
        embd_pdrop=config.drop_rate,
        attn_pdrop=config.drop_rate,
        layer_norm_epsilon=config.layer_norm_eps,
        initializer_range=config.initializer_range,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
