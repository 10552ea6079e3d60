"""gptlite.speedups.speed_up: modules and the forward swapped on a loaded model, the book's maths and files kept."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from gptlite.modeling_gptlite import GELU
from gptlite.speedups import speed_up
from gptlite.speedups.attention import FAST_DROPOUT_ATTENTION
from gptlite.speedups.decoding import DecodingLinear
from gptlite.speedups.dropout import FastDropout
from gptlite.speedups.kernels import FusedGELU
from tests.conftest import TINY, randomize_, tiny_model

REMOTE_CODE = {"configuration_gptlite.py", "modeling_gptlite.py", "compat.py"}


def _module_types(model: nn.Module) -> set[type]:
    return {type(module) for module in model.modules()}


def test_for_training_it_swaps_dropout_gelu_and_attention_in_place():
    model = tiny_model(drop_rate=0.1).train()
    head = model.out_head.weight
    speed_up(model, training=True)
    types = _module_types(model)
    assert FastDropout in types and nn.Dropout not in types
    assert FusedGELU in types and GELU not in types
    assert model.config._attn_implementation == FAST_DROPOUT_ATTENTION
    assert model.out_head.weight is head and model.training


def test_the_training_settings_can_keep_torchs_dropout_and_aten_gelu():
    model = speed_up(tiny_model(drop_rate=0.1).train(), training=True, fast_dropout=False, fused_gelu=False)
    types = _module_types(model)
    assert nn.Dropout in types and FastDropout not in types and GELU in types
    assert model.config._attn_implementation == "sdpa"


def test_eager_attention_chosen_by_the_user_stays_eager():
    model = tiny_model(drop_rate=0.1)
    model.set_attn_implementation("eager")
    assert speed_up(model, training=True).config._attn_implementation == "eager"


@pytest.mark.parametrize("targets", ["labels", "shift_labels"])
def test_the_fused_loss_equals_the_plain_loss_and_gradients_without_logits(targets):
    plain = tiny_model().train()
    randomize_(plain)
    fast = tiny_model().train()
    fast.load_state_dict(plain.state_dict())
    speed_up(fast, training=True)
    ids = torch.randint(0, TINY["vocab_size"], (3, 21))
    kwargs = {targets: ids if targets == "labels" else torch.randint(0, TINY["vocab_size"], (3, 21))}
    want, got = plain(ids, **kwargs), fast(ids, **kwargs)
    assert want.logits is not None and got.logits is None
    assert abs(want.loss.item() - got.loss.item()) < 1e-5
    want.loss.backward()
    got.loss.backward()
    fast_params = dict(fast.named_parameters())
    for name, param in plain.named_parameters():
        assert (param.grad - fast_params[name].grad).abs().max().item() < 1e-5, name


def test_without_labels_the_sped_up_model_gives_the_same_logits_and_greedy_tokens():
    plain = tiny_model()
    randomize_(plain)
    fast = tiny_model()
    fast.load_state_dict(plain.state_dict())
    speed_up(fast)
    ids = torch.randint(0, TINY["vocab_size"], (2, 7))
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, fast(ids).logits)
        options = {"max_new_tokens": 6, "do_sample": False, "attention_mask": torch.ones_like(ids)}
        assert torch.equal(plain.generate(ids, **options), fast.generate(ids, **options))


def test_for_decoding_every_linear_shares_its_parameters_and_ties_stay_tied():
    model = tiny_model(tie_word_embeddings=True)
    n_linears = sum(type(m) is nn.Linear for m in model.modules())
    weights = {id(m.weight) for m in model.modules() if type(m) is nn.Linear}
    speed_up(model)
    swapped = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(swapped) == n_linears and all(type(m) is DecodingLinear for m in swapped)
    assert {id(m.weight) for m in swapped} == weights
    assert model.out_head.weight is model.model.tok_emb.weight
    assert not model.training


@pytest.mark.parametrize("training", [True, False])
def test_a_sped_up_model_saves_the_books_model_and_nothing_else(tmp_path, training):
    plain = tiny_model(drop_rate=0.1)
    randomize_(plain)
    plain.save_pretrained(tmp_path / "plain")
    fast = tiny_model(drop_rate=0.1)
    fast.load_state_dict(plain.state_dict())
    speed_up(fast, training=training).save_pretrained(tmp_path / "fast")
    files = {p.name for p in (tmp_path / "fast").iterdir()}
    assert files == {p.name for p in (tmp_path / "plain").iterdir()}
    assert {name for name in files if name.endswith(".py")} == REMOTE_CODE
    configs = [json.loads((tmp_path / side / "config.json").read_text()) for side in ("plain", "fast")]
    assert configs[0] == configs[1]
    for name in REMOTE_CODE:
        assert (tmp_path / "fast" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
    weights = [load_file(tmp_path / side / "model.safetensors") for side in ("plain", "fast")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
