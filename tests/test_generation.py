import io
import json
import os
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, TextStreamer, pipeline

from gptlite import GPTLiteConfig, GPTLiteForCausalLM
from gptlite.generation import generate_text
from gptlite.generation.cli import main
from gptlite.tokenization import get_hf_tokenizer
from tests.conftest import TINY, randomize_, run_in_process, tiny_model, to_gpt2


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


def test_a_static_cache_still_refuses_decoding_past_the_context(pair):
    model, _ = pair
    prompt = torch.randint(0, TINY["vocab_size"], (1, 5))
    with pytest.raises(ValueError, match="exceeds the model's context_length"):
        model.generate(prompt, max_new_tokens=TINY["context_length"], do_sample=False, eos_token_id=None,
                       cache_implementation="static")


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


# -- gptlite-generate on every kind of model folder, and one line for every bad input -------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory, gpt2_vocab_model):
    """A gptlite folder and a plain GPT-2 folder (GPT2LMHeadModel.save_pretrained) over GPT-2's vocabulary."""
    root = tmp_path_factory.mktemp("models")
    gpt2_vocab_model.save_pretrained(root / "lite")
    torch.manual_seed(6)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()
    randomize_(gpt2)
    gpt2.save_pretrained(root / "gpt2")
    return root, gpt2


def test_console_script_is_the_command_line_module():
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    scripts = pyproject.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert 'gptlite-generate = "gptlite.generation.cli:main"' in scripts.splitlines()


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of gptlite-generate, asserting that nothing printed a traceback."""
    return run_in_process(capsys, main, *argv)


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_cli_runs_the_real_weights_of_a_plain_gpt2_folder(folders, capsys):
    root, gpt2 = folders
    code, out, err = run_cli(capsys, str(root / "gpt2"), "--prompt", "Every effort moves you", "--max-new-tokens", "8")
    assert code == 0
    assert f"{root / 'gpt2'} is a GPT-2 folder (model_type gpt2): converted to gptlite in memory" in err
    tokenizer = get_hf_tokenizer()
    ids = tokenizer("Every effort moves you", return_tensors="pt").input_ids
    expected = gpt2.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert out.strip() == tokenizer.decode(expected[0], skip_special_tokens=True).strip()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
        (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
        (["--temperature", "nan"], "--temperature must be a finite number >= 0 (0 decodes greedily), got nan"),
        (["--temperature", "1", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--temperature", "1", "--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--temperature", "1", "--top-p", "-1"], "--top-p must be in (0, 1]"),
        (["--temperature", "1", "--top-k", "0"], "--top-k must be >= 1 when given"),
    ],
    ids=["max-new-tokens-0", "temperature-negative", "temperature-nan", "top-p-1.5", "top-p-0", "top-p-neg", "top-k-0"],
)
def test_cli_refuses_bad_generation_flags_in_one_line(folders, capsys, flags, message):
    root, _ = folders
    code, out, err = run_cli(capsys, str(root / "lite"), "--prompt", "Hi", *flags)
    assert code == 2 and message in one_error_line(err) and out == ""


def test_cli_starts_an_empty_prompt_from_endoftext_as_gpt2_does(folders, gpt2_vocab_model, capsys):
    root, _ = folders
    code, out, err = run_cli(capsys, str(root / "lite"), "--prompt", "", "--max-new-tokens", "5")
    assert code == 0 and "the prompt is empty: starting from '<|endoftext|>' (token 50256), as GPT-2 does" in err
    assert "Loading weights" not in err  # transformers' own bar: no flash between gptlite's lines
    expected = gpt2_vocab_model.generate(torch.tensor([[50256]]), max_new_tokens=5, do_sample=False)
    assert out.rstrip("\n") == get_hf_tokenizer().decode(expected[0], skip_special_tokens=True)


def test_cli_refuses_a_prompt_longer_than_the_context_naming_both_lengths(folders, capsys):
    root, _ = folders
    code, _, err = run_cli(capsys, str(root / "lite"), "--prompt", " ".join(["word"] * 70))
    assert code == 2
    assert "--prompt has 70 tokens, which leaves no room in the model's context_length of 64" in one_error_line(err)


def test_cli_says_when_the_context_leaves_fewer_new_tokens_than_asked(folders, capsys):
    root, _ = folders
    code, out, err = run_cli(capsys, str(root / "lite"), "--prompt", " ".join(["word"] * 60), "--max-new-tokens", "10")
    assert code == 0 and "generating 4 new tokens, not 10: the 60-token prompt leaves room for 4" in err


@pytest.mark.parametrize("name", ["{root}/no-such-folder", "no-such-model-anywhere"], ids=["path", "hub-id"])
def test_cli_says_a_missing_path_is_neither_a_folder_nor_on_the_hub(folders, capsys, monkeypatch, name):
    root, _ = folders
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(root / "empty-hf-home"))
    code, _, err = run_cli(capsys, name.format(root=root), "--prompt", "Hi")
    assert code == 2 and "is neither a folder nor reachable on the Hub" in one_error_line(err)


def broken_copy(root, kind, tmp_path, edit) -> str:
    folder = tmp_path / kind
    shutil.copytree(root / kind, folder)
    edit(folder)
    return str(folder)


def truncate_weights(folder):
    weights = folder / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 100)


def reshape_tensor(name, shape):
    def edit(folder):
        tensors = load_file(folder / "model.safetensors")
        tensors[name] = torch.zeros(shape)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})

    return edit


@pytest.mark.parametrize(
    ("kind", "edit", "message"),
    [
        ("lite", truncate_weights, "model.safetensors: not a readable safetensors file"),
        ("gpt2", truncate_weights, "model.safetensors: not a readable safetensors file"),
        ("lite", reshape_tensor("model.trf_blocks.0.norm1.scale", (31,)),
         "tensor model.trf_blocks.0.norm1.scale has shape [31], but"),
        ("gpt2", reshape_tensor("transformer.h.1.ln_2.bias", (31,)),
         "tensor transformer.h.1.ln_2.bias has shape [31], but"),
    ],
    ids=["truncated-gptlite", "truncated-gpt2", "shape-gptlite", "shape-gpt2"],
)
def test_cli_names_the_broken_file_or_tensor(folders, capsys, tmp_path, kind, edit, message):
    root, _ = folders
    code, out, err = run_cli(capsys, broken_copy(root, kind, tmp_path, edit), "--prompt", "Hi")
    line = one_error_line(err)
    assert code == 1 and message in line and out == ""
    if "shape" in message:
        assert "needs [32]" in line
    assert "Loading weights" not in err and "MISSING" not in err  # no load report, no random weights


def test_cli_refuses_another_model_type_naming_it(folders, capsys, tmp_path):
    root, _ = folders

    def make_llama(folder):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {"model_type": "llama"}))

    code, _, err = run_cli(capsys, broken_copy(root, "lite", tmp_path, make_llama), "--prompt", "Hi")
    assert code == 2 and "model_type is 'llama'" in one_error_line(err)


def test_cli_ctrl_c_is_one_line_and_exit_130(folders, capsys, monkeypatch):
    root, _ = folders

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(GPTLiteForCausalLM, "generate", interrupted)
    code, out, err = run_cli(capsys, str(root / "lite"), "--prompt", "Hi")
    assert code == 130 and "gptlite-generate: error: interrupted (Ctrl-C)" in one_error_line(err)
