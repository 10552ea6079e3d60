"""Configuration of gptlite: the book's `GPT_CONFIG_124M` keys as a Hugging Face config.

This file travels to the Hub as remote code next to `modeling_gptlite.py`: it imports only transformers and its
sibling `compat.py`. It is written with an `__init__` (not as a 5.x dataclass) so that transformers 4.x loads it
too, and checks every field's type itself: a JSON `"false"` must not become a truthy string.
"""

from __future__ import annotations

import os

from transformers import PretrainedConfig

from .compat import MIN_TRANSFORMERS  # noqa: F401  (importing compat refuses a too-old transformers in one line)

# The book's `model_configs` (chapter 5): OpenAI's four GPT-2 sizes. They all use a 1024-token
# context, biases on the query/key/value projections and an output head tied to the embedding.
_PRESETS: dict[str, dict[str, int]] = {
    "gpt2-small": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "gpt2-medium": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "gpt2-large": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "gpt2-xl": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}
_PRESET_ALIASES = {
    "gpt2": "gpt2-small",
    "124M": "gpt2-small",
    "355M": "gpt2-medium",
    "774M": "gpt2-large",
    "1558M": "gpt2-xl",
}
# The fields that fix the weights' shapes or their meaning (the same matrix split into other heads): what a
# checkpoint must share with the run resuming it. A preset (or a model to start from) fixes all but the first two.
ARCHITECTURE_FIELDS: tuple[str, ...] = (
    "vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "qkv_bias", "tie_word_embeddings",
)  # fmt: skip
PRESET_FIELDS: tuple[str, ...] = ARCHITECTURE_FIELDS[2:]
INITIALIZERS: tuple[str, ...] = ("gpt2", "book")
_POSITIVE_INTS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers")
_NUMBERS = ("drop_rate", "layer_norm_eps", "initializer_range")
_BOOLS = ("qkv_bias", "use_cache", "tie_word_embeddings")
_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_types(fields: dict) -> None:
    """Refuse a value of the wrong type, naming the field and the value (JSON strings are not numbers or bools)."""

    def refuse(name: str, expected: str) -> None:
        raise ValueError(f"GPTLiteConfig.{name} must be {expected}, got {fields[name]!r}")

    # (The sizes, _POSITIVE_INTS, are checked by validate_architecture, which also runs after later changes.)
    for name in _NUMBERS:
        if not (_is_int(fields[name]) or isinstance(fields[name], float)):
            refuse(name, "a number")
    for name in _BOOLS:
        if not isinstance(fields[name], bool):
            refuse(name, "true or false")
    if not isinstance(fields["initializer"], str):
        refuse("initializer", f"one of {INITIALIZERS}")
    for name in _TOKEN_IDS:
        value = fields[name]
        ids = value if name == "eos_token_id" and isinstance(value, (list, tuple)) else [value]
        if value is not None and not all(_is_int(i) and i >= 0 for i in ids):
            refuse(name, "a token id (a non-negative integer), a list of them or null")


def _naming_the_file(error: ValueError, source) -> ValueError:
    source = str(source)
    if os.path.isdir(source):
        source = os.path.join(source, "config.json")
    elif not source.endswith(".json"):
        source = f"config.json of {source}"
    return ValueError(f"{source}: {error}")


class GPTLiteConfig(PretrainedConfig):
    """Configuration of a gptlite model, with the field names of the book's `GPT_CONFIG_124M`.

    `GPTLiteConfig(**GPT_CONFIG_124M)` accepts the book's dictionary unchanged. Transformers' generic
    names (`hidden_size`, `num_attention_heads`, `num_hidden_layers`, `max_position_embeddings`,
    `n_positions`) read and write the book's fields through `attribute_map`.

    Args:
        vocab_size: Number of token ids (GPT-2's BPE has 50,257).
        context_length: Longest sequence the learned position embedding covers.
        emb_dim: Width of the residual stream.
        n_heads: Attention heads per block; must divide `emb_dim`.
        n_layers: Number of transformer blocks.
        drop_rate: Dropout after the embeddings, on the attention weights and on both residual branches.
        qkv_bias: Whether the query, key and value projections have biases (GPT-2's weights do).
        layer_norm_eps: Epsilon of every LayerNorm.
        initializer_range: Standard deviation of GPT-2's normal initialisation.
        initializer: `"gpt2"` (normal init, residual projections scaled by 1/sqrt(2·n_layers)) or
            `"book"` (PyTorch's default init, exactly as the book's `GPTModel` draws it).
        tie_word_embeddings: Share the output head with the token embedding (GPT-2 does, the book does not).
        use_cache: Whether `forward` returns a key/value cache by default.
    """

    model_type = "gptlite"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    attribute_map = {
        "hidden_size": "emb_dim",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
        "max_position_embeddings": "context_length",
        "n_positions": "context_length",
    }

    def __init__(
        self,
        vocab_size: int = 50257,
        context_length: int = 256,
        emb_dim: int = 768,
        n_heads: int = 12,
        n_layers: int = 12,
        drop_rate: float = 0.1,
        qkv_bias: bool = False,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        initializer: str = "gpt2",
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        bos_token_id: int | None = 50256,
        eos_token_id: int | list[int] | None = 50256,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        # A training speed setting that configs saved by older gptlite carry: it never belonged to the model.
        kwargs.pop("fast_dropout", None)
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.emb_dim = emb_dim
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.drop_rate = drop_rate
        self.qkv_bias = qkv_bias
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.initializer = initializer
        self.use_cache = use_cache
        _check_types(
            {"tie_word_embeddings": tie_word_embeddings, "bos_token_id": bos_token_id,
             "eos_token_id": eos_token_id, "pad_token_id": pad_token_id, **vars(self)}
        )
        self.validate_architecture()
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **kwargs,
        )

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> GPTLiteConfig:
        """`PretrainedConfig.from_dict`; a bad field read by AutoConfig (which passes `name_or_path`) names the file."""
        try:
            return super().from_dict(config_dict, **kwargs)
        except ValueError as error:
            if kwargs.get("name_or_path") is None:
                raise
            raise _naming_the_file(error, kwargs["name_or_path"]) from None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> GPTLiteConfig:
        """`PretrainedConfig.from_pretrained`; a bad field names the config file."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except ValueError as error:
            if str(error).startswith("GPTLiteConfig."):
                raise _naming_the_file(error, pretrained_model_name_or_path) from None
            raise

    def validate_architecture(self) -> None:
        """Reject impossible shapes, naming the field and its value."""
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"GPTLiteConfig.{name} must be a positive integer, got {value!r}")
        if self.emb_dim % self.n_heads != 0:
            raise ValueError(
                f"GPTLiteConfig.emb_dim={self.emb_dim} is not divisible by n_heads={self.n_heads}: "
                f"each head needs emb_dim / n_heads dimensions"
            )
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"GPTLiteConfig.drop_rate must be in [0, 1), got {self.drop_rate!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"GPTLiteConfig.layer_norm_eps must be positive, got {self.layer_norm_eps!r}")
        if self.initializer not in INITIALIZERS:
            raise ValueError(f"GPTLiteConfig.initializer must be one of {INITIALIZERS}, got {self.initializer!r}")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPTLiteConfig:
        """The book's GPT-2 sizes: `gpt2-small`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`.

        All use context 1024, `qkv_bias=True` and tied embeddings, like OpenAI's weights; keyword
        arguments override any field (for example `drop_rate=0.0`).
        """
        key = _PRESET_ALIASES.get(name, name)
        if key not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(_PRESETS)}")
        fields = {**_PRESETS[key], "context_length": 1024, "qkv_bias": True, "tie_word_embeddings": True}
        return cls(**{**fields, **overrides})


__all__ = ["ARCHITECTURE_FIELDS", "INITIALIZERS", "PRESET_FIELDS", "GPTLiteConfig", "preset_names"]


def preset_names() -> list[str]:
    """Every name :meth:`GPTLiteConfig.from_preset` takes: the book's four sizes and their aliases."""
    return sorted({*_PRESETS, *_PRESET_ALIASES})
