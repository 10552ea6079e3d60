import io
from contextlib import redirect_stdout

import pytest
import torch
from transformers import TextStreamer, pipeline

from gptlite import GPTLiteConfig, GPTLiteForCausalLM
from gptlite.generation import generate_text, main
from gptlite.tokenization import get_hf_tokenizer
from tests.reference_models import TINY, randomize_, tiny_model, to_gpt2


@pytest.fixture(scope="module")
def pair():
    """A random gptlite model and transformers' GPT-2 holding the same weights."""
    torch.manual_seed(1)
    model = tiny_model(qkv_bias=True)
    randomize_(model)
    return model, to_gpt2(model)


@pytest.mark.parametrize(
    "options",
    [
        {"do_sample": False},
        {"do_sample": True, "temperature": 0.8, "top_k": 0},
        {"do_sample": True, "temperature": 1.3, "top_k": 20},
        {"do_sample": True, "top_p": 0.9, "top_k": 0},
        {"do_sample": False, "num_beams": 3},
        {"do_sample": True, "num_beams": 2, "top_k": 10},
    ],
    ids=["greedy", "temperature", "top_k", "top_p", "beam", "beam-sample"],
)
def test_generate_equals_transformers_gpt2_token_for_token(pair, options):
    model, gpt2 = pair
    prompt = torch.randint(0, TINY["vocab_size"], (2, 6))
    results = []
    for m in (model, gpt2):
        torch.manual_seed(42)
        results.append(m.generate(prompt, max_new_tokens=25, eos_token_id=None, pad_token_id=0, **options))
    assert results[0].shape == (2, 31)
    assert torch.equal(results[0], results[1])


def test_generation_with_cache_equals_without(pair):
    model, _ = pair
    prompt = torch.randint(0, TINY["vocab_size"], (3, 4))
    for options in ({"do_sample": False}, {"num_beams": 3}, {"do_sample": True, "top_k": 5}):
        outputs = []
        for use_cache in (True, False):
            torch.manual_seed(3)
            outputs.append(model.generate(prompt, max_new_tokens=20, eos_token_id=None, use_cache=use_cache, **options))
        assert torch.equal(*outputs), options


def test_each_generation_step_processes_one_new_token(pair):
    model, _ = pair
    seen = []
    handle = model.get_input_embeddings().register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    try:
        model.generate(torch.randint(0, TINY["vocab_size"], (1, 7)), max_new_tokens=6, do_sample=False)
    finally:
        handle.remove()
    assert seen == [7, 1, 1, 1, 1, 1]


def test_static_cache_equals_dynamic(pair):
    model, _ = pair
    prompt = torch.randint(0, TINY["vocab_size"], (2, 5))
    dynamic = model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None)
    static = model.generate(
        prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, cache_implementation="static"
    )
    assert torch.equal(dynamic, static)


def test_left_padded_batch_yields_what_each_prompt_yields_alone(pair):
    model, _ = pair
    prompts = [torch.randint(1, TINY["vocab_size"], (n,)) for n in (3, 9, 6)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = p
        mask[row, width - len(p) :] = 1
    batch = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=15, do_sample=False, eos_token_id=None)
    for row, p in enumerate(prompts):
        alone = model.generate(p[None], max_new_tokens=15, do_sample=False, eos_token_id=None)
        assert torch.equal(batch[row, width:], alone[0, len(p) :]), row


def test_generation_stops_at_eos(pair):
    model, _ = pair
    prompt = torch.randint(0, TINY["vocab_size"], (1, 4))
    free = model.generate(prompt, max_new_tokens=15, do_sample=False, eos_token_id=None)
    eos = int(free[0, 7])  # the 4th generated token
    stopped = model.generate(prompt, max_new_tokens=15, do_sample=False, eos_token_id=eos)
    first = (free[0, 4:] == eos).nonzero()[0].item() + 4
    assert torch.equal(stopped[0], free[0, : first + 1])


@pytest.fixture(scope="module")
def gpt2_vocab_model():
    torch.manual_seed(5)
    config = GPTLiteConfig(context_length=64, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.0)
    return GPTLiteForCausalLM(config).eval()


def test_text_streamer_prints_the_generated_text(gpt2_vocab_model):
    tokenizer = get_hf_tokenizer()
    inputs = tokenizer("Every effort moves you", return_tensors="pt")
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        output = gpt2_vocab_model.generate(
            **inputs, max_new_tokens=10, do_sample=False, streamer=TextStreamer(tokenizer), eos_token_id=None
        )
    assert buffer.getvalue().strip() == tokenizer.decode(output[0]).strip()
    assert buffer.getvalue().startswith("Every effort moves you")


def test_pipeline_text_generation(gpt2_vocab_model):
    tokenizer = get_hf_tokenizer(padding_side="left")
    generator = pipeline("text-generation", model=gpt2_vocab_model, tokenizer=tokenizer)
    prompts = ["Every effort moves you", "The for statement"]
    results = generator(prompts, max_new_tokens=8, do_sample=False, batch_size=2)
    for prompt, result in zip(prompts, results):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        alone = gpt2_vocab_model.generate(ids, max_new_tokens=8, do_sample=False)
        assert result[0]["generated_text"] == tokenizer.decode(alone[0], skip_special_tokens=True)


def test_generate_text_greedy_and_seeded_sampling(gpt2_vocab_model):
    tokenizer = get_hf_tokenizer()
    greedy = generate_text(gpt2_vocab_model, tokenizer, "Every effort moves you", max_new_tokens=8)
    assert greedy.startswith("Every effort moves you") and len(greedy) > len("Every effort moves you")
    sampled = [
        generate_text(gpt2_vocab_model, tokenizer, "Hello", max_new_tokens=8, temperature=1.0, top_k=40, seed=7)
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    with pytest.raises(ValueError, match="context_length of 64"):
        generate_text(gpt2_vocab_model, tokenizer, "word " * 70, max_new_tokens=1)


def test_cli_prints_the_text(gpt2_vocab_model, tmp_path, capsys):
    gpt2_vocab_model.save_pretrained(tmp_path)
    main([str(tmp_path), "--prompt", "Every effort moves you", "--max-new-tokens", "6"])
    printed = capsys.readouterr().out.strip()
    expected = generate_text(gpt2_vocab_model, get_hf_tokenizer(), "Every effort moves you", max_new_tokens=6)
    assert printed == expected
    main(
        [
            str(tmp_path),
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "5",
            "--temperature",
            "0.9",
            "--top-k",
            "5",
            "--top-p",
            "0.95",
            "--seed",
            "1",
        ]
    )
    first = capsys.readouterr().out
    main(
        [
            str(tmp_path),
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "5",
            "--temperature",
            "0.9",
            "--top-k",
            "5",
            "--top-p",
            "0.95",
            "--seed",
            "1",
        ]
    )
    assert capsys.readouterr().out == first and first.startswith("Hi")
