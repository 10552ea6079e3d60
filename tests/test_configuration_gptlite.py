import json

import pytest

from gptlite import GPTLiteConfig
from reference.book_gpt import GPT_CONFIG_124M


def test_book_dict_is_accepted_unchanged_and_defaults_are_the_books():
    assert GPTLiteConfig(**GPT_CONFIG_124M).to_dict() == GPTLiteConfig().to_dict()
    config = GPTLiteConfig()
    for key, value in GPT_CONFIG_124M.items():
        assert getattr(config, key) == value, key
    assert config.tie_word_embeddings is False
    assert config.layer_norm_eps == 1e-5
    assert config.initializer_range == 0.02
    assert config.bos_token_id == config.eos_token_id == 50256
    assert config.model_type == "gptlite"


def test_attribute_map_reads_and_writes_the_books_fields():
    config = GPTLiteConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, max_position_embeddings=99)
    assert (config.emb_dim, config.n_heads, config.n_layers, config.context_length) == (64, 4, 3, 99)
    assert config.n_positions == 99
    config.hidden_size = 128
    assert config.emb_dim == 128
    saved = json.loads(config.to_json_string())
    assert "emb_dim" in saved and "hidden_size" not in saved


@pytest.mark.parametrize(
    ("name", "emb_dim", "n_layers", "n_heads"),
    [
        ("gpt2-small", 768, 12, 12),
        ("gpt2-medium", 1024, 24, 16),
        ("gpt2-large", 1280, 36, 20),
        ("gpt2-xl", 1600, 48, 25),
    ],
)
def test_presets_are_the_books_model_configs(name, emb_dim, n_layers, n_heads):
    config = GPTLiteConfig.from_preset(name)
    assert (config.emb_dim, config.n_layers, config.n_heads) == (emb_dim, n_layers, n_heads)
    assert config.context_length == 1024 and config.qkv_bias and config.tie_word_embeddings
    assert GPTLiteConfig.from_preset(name, drop_rate=0.0).drop_rate == 0.0


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="gpt2-medium"):
        GPTLiteConfig.from_preset("gpt3")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"emb_dim": 100, "n_heads": 12}, "emb_dim=100 is not divisible by n_heads=12"),
        ({"n_layers": 0}, "n_layers must be a positive integer, got 0"),
        ({"vocab_size": -5}, "vocab_size must be a positive integer, got -5"),
        ({"context_length": 0}, "context_length"),
        ({"drop_rate": 1.0}, r"drop_rate must be in \[0, 1\), got 1.0"),
        ({"drop_rate": -0.1}, "drop_rate"),
        ({"initializer": "xavier"}, "initializer"),
    ],
)
def test_invalid_values_name_the_field_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTLiteConfig(**kwargs)


def test_json_round_trip(tmp_path):
    config = GPTLiteConfig(emb_dim=48, n_heads=3, n_layers=2, drop_rate=0.0, qkv_bias=True, initializer="book")
    config.save_pretrained(tmp_path)
    loaded = GPTLiteConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
