"""On a CUDA GPU: parity with transformers' GPT-2, generation, a bf16 training run and the datasheet peak.

Marked ``cuda``: skipped without a GPU (``tests/conftest.py``); ``python -m benchmarks.gpu`` runs them first.
"""

import pytest
import torch
from transformers import GPT2LMHeadModel

from tests.conftest import TINY, randomize_, tiny_model, to_gpt2

pytestmark = pytest.mark.cuda


def cuda_pair(dtype: torch.dtype = torch.float32):
    model = tiny_model(qkv_bias=True)
    randomize_(model)
    gpt2 = to_gpt2(model)
    return model.to("cuda", dtype), gpt2.to("cuda", dtype)


def test_logits_equal_transformers_gpt2_on_cuda():
    torch.backends.cuda.matmul.allow_tf32 = False  # full fp32: the same bound as on CPU
    model, gpt2 = cuda_pair()
    ids = torch.randint(0, TINY["vocab_size"], (2, 33), device="cuda")
    with torch.no_grad():
        ours, theirs = model(ids, labels=ids), gpt2(ids, labels=ids)
    assert (ours.logits - theirs.logits).abs().max().item() < 1e-4
    assert abs(ours.loss.item() - theirs.loss.item()) < 1e-4


def test_bf16_logits_close_to_fp32_on_cuda():
    model, _ = cuda_pair()
    ids = torch.randint(0, TINY["vocab_size"], (2, 33), device="cuda")
    with torch.no_grad():
        fp32 = model(ids).logits
        bf16 = model.to(torch.bfloat16)(ids).logits.float()
    scale = fp32.abs().max().item()
    assert (bf16 - fp32).abs().max().item() < 0.05 * scale


def test_greedy_generate_equals_transformers_on_cuda():
    model, gpt2 = cuda_pair()
    assert isinstance(gpt2, GPT2LMHeadModel)
    prompts = torch.randint(0, TINY["vocab_size"], (3, 5), device="cuda")
    options = {"max_new_tokens": 20, "do_sample": False, "eos_token_id": None, "pad_token_id": 0}
    with torch.no_grad():
        assert torch.equal(model.generate(prompts, **options), gpt2.generate(prompts, **options))


def test_bf16_training_run_on_cuda(tmp_path):
    from accelerate.state import AcceleratorState, GradientState

    from gptlite.training.config import TrainConfig
    from gptlite.training.loop import train

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the for statement is used to iterate over the elements of a sequence\n" * 300)
    config = TrainConfig.from_flat(dict(
        data=[str(corpus)], cache_dir=str(tmp_path / "c"), output_dir=str(tmp_path / "run"), emb_dim=64, n_layers=2,
        n_heads=2, context_length=32, batch_size=8, epochs=2, eval_freq=5, eval_iter=2, mixed_precision="bf16",
        sample_tokens=3, start_context="the", peak_lr=5e-3))
    try:
        result = train(config)
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    losses = result.history.step_loss
    assert all(loss == loss for loss in losses)  # no NaN
    assert losses[-1] < losses[0] - 1.0  # it learns the repeated sentence
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_datasheet_peak_knows_this_gpu():
    from gptlite.training.throughput import device_peak_flops

    peak, source = device_peak_flops(torch.device("cuda"), "bf16")
    assert "datasheet" in source, f"{torch.cuda.get_device_name()} is not in DATASHEET_PEAKS"
    assert peak > 1e13
