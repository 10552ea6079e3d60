"""``gptlite-train --compile`` and compiled generation with a static cache: the same numbers as eager."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM
from transformers.generation import CompileConfig

from gptlite import GPTLiteConfig, GPTLiteForCausalLM
from gptlite.training.loop import train
from tests.training.conftest import max_abs_difference, reset_accelerate, tiny_config, weights, write_corpus


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    reset_accelerate()


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # each test compiles from scratch, whatever ran before
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_training_has_eagers_losses_and_saves_clean_names(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=2400)
    # No dropout (tiny_config's drop_rate is 0): compiled dropout draws other random numbers than eager's.
    settings = {"max_steps": 6, "eval_freq": 3, "eval_iter": 2, "fast_dropout": False}
    eager = train(tiny_config(tmp_path / "eager", corpus, **settings))
    compiled = train(tiny_config(tmp_path / "compiled", corpus, compile=True, **settings))
    assert len(compiled.history.step_loss) == 6
    # fp32: compiled kernels fuse and reorder sums, so the losses agree to rounding, not bit for bit.
    assert compiled.history.step_loss == pytest.approx(eager.history.step_loss, abs=1e-4)
    assert compiled.history.val_loss == pytest.approx(eager.history.val_loss, abs=1e-4)
    assert max_abs_difference(weights(tmp_path / "compiled" / "run"), weights(tmp_path / "eager" / "run")) < 1e-4

    run = tmp_path / "compiled" / "run"
    with safe_open(run / "model.safetensors", "pt") as saved:
        names = set(saved.keys())
    with safe_open(tmp_path / "eager" / "run" / "model.safetensors", "pt") as saved:
        assert names == set(saved.keys())
    assert not any("_orig_mod" in name for name in names)
    loaded = AutoModelForCausalLM.from_pretrained(run)  # every tensor found: from_pretrained would warn otherwise
    ids = torch.randint(0, loaded.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "eager" / "run")
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, reference(ids).logits, atol=1e-3)


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_compiled_static_cache_generation_equals_eager_greedy(backend):
    torch.manual_seed(0)
    config = GPTLiteConfig(vocab_size=96, context_length=48, emb_dim=32, n_heads=4, n_layers=2)
    model = GPTLiteForCausalLM(config).eval()
    ids = torch.randint(0, 96, (2, 5), generator=torch.Generator().manual_seed(1))
    kwargs = {"max_new_tokens": 12, "do_sample": False, "eos_token_id": None, "pad_token_id": 0}
    # generate compiles the forward itself for a static cache; on CPU only when asked to (_compile_all_devices).
    # backend "eager" checks that dynamo captures one graph; "inductor" is what users get.
    compile_config = CompileConfig(fullgraph=True, backend=backend)
    compile_config._compile_all_devices = True
    with torch.no_grad():
        eager = model.generate(ids, **kwargs)
        static = model.generate(ids, cache_implementation="static", compile_config=compile_config, **kwargs)
    assert hasattr(model, "_compiled_call"), "generate did not compile the forward"
    assert torch.equal(static, eager)
