"""gptlite-convert: each subcommand end to end, exit codes, and error messages on stderr."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptlite import GPTLiteConfig, GPTLiteForCausalLM
from gptlite.conversion.cli import main
from gptlite.generation.cli import main as generate_main
from tests.conversion.conftest import OPENAI_TINY, tiny_gpt2


def test_console_script_is_declared():
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    scripts = pyproject.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert 'gptlite-convert = "gptlite.conversion.cli:main"' in scripts.splitlines()


def test_from_hf_then_to_hf_with_verify(tmp_path, capsys):
    tiny_gpt2(tied=False).save_pretrained(tmp_path / "hf")
    capsys.readouterr()
    assert main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "lite"), "--verify"]) == 0
    out, err = capsys.readouterr()
    assert "Loading weights" not in err and "Writing model shards" not in err  # transformers' own bars
    assert re.search(r"wrote .*lite \(gptlite, 2 layers, 32 wide, vocab 100, float32\)", out)
    diff = float(re.search(r"largest logit difference between source and result: (\S+)", out).group(1))
    assert diff <= 1e-5

    args = ["to-hf", str(tmp_path / "lite"), str(tmp_path / "gpt2"), "--dtype", "float16", "--verify"]
    assert main(args) == 0
    assert "(gpt2, 2 layers, 32 wide, vocab 100, float16)" in capsys.readouterr().out


def test_from_openai(tmp_path, capsys):
    assert main(["from-openai", str(OPENAI_TINY), str(tmp_path / "lite"), "--dtype", "bfloat16"]) == 0
    assert "vocab 80, bfloat16" in capsys.readouterr().out
    assert GPTLiteForCausalLM.from_pretrained(tmp_path / "lite").dtype == torch.bfloat16


def test_from_book(tmp_path, capsys):
    # The book's parameter names are gptlite's, so a gptlite state dict stands in for model.pth.
    config = {"vocab_size": 50, "context_length": 8, "emb_dim": 16, "n_heads": 2, "n_layers": 1}
    torch.save(GPTLiteForCausalLM(GPTLiteConfig(**config)).state_dict(), tmp_path / "model.pth")
    args = ["from-book", str(tmp_path / "model.pth"), str(tmp_path / "lite"), "--config", json.dumps(config)]
    assert main(args) == 0
    assert "vocab 50" in capsys.readouterr().out


def test_refusals_go_to_stderr_with_exit_status_2(tmp_path, capsys):
    # A model kind gptlite does not take, and a source that is not there: usage errors, as in gptlite-generate.
    tiny_gpt2(activation_function="relu").save_pretrained(tmp_path / "hf")
    assert main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "lite")]) == 2
    err = capsys.readouterr().err
    assert "gptlite-convert from-hf: error:" in err and "config.json: activation_function is 'relu'" in err

    assert main(["from-openai", str(tmp_path / "missing"), str(tmp_path / "lite")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def _generate(argv: list[str], capsys) -> tuple[int, str]:
    try:
        generate_main(argv)
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize("refusal", ["no such folder", "another model_type", "a GPT-2 option gptlite lacks"])
def test_a_refusal_gets_the_status_gptlite_generate_gives_it(refusal, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = tmp_path / "source"
    if refusal == "another model_type":
        tiny_gpt2().save_pretrained(source)
        config = json.loads((source / "config.json").read_text())
        (source / "config.json").write_text(json.dumps(config | {"model_type": "llama"}))
    elif refusal == "a GPT-2 option gptlite lacks":
        tiny_gpt2(activation_function="relu").save_pretrained(source)
    capsys.readouterr()
    generated, generate_err = _generate([str(source), "--prompt", "Hi"], capsys)
    converted = main(["from-hf", str(source), str(tmp_path / "out")])
    convert_err = capsys.readouterr().err
    assert generated == converted == 2, (generate_err, convert_err)
    assert "gptlite-convert from-hf: error:" in convert_err and "Traceback" not in convert_err


def test_usage_errors_exit_2(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["from-book", "model.pth", str(tmp_path / "lite")])  # needs --preset or --config
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["from-hf", "gpt2", str(tmp_path / "lite"), "--dtype", "int8"])
    assert exit_info.value.code == 2


def test_offline_hub_id(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["from-hf", "gpt2", str(tmp_path / "lite"), "--cache-dir", str(tmp_path / "cache")]) == 1
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err


def test_an_unreachable_hub_is_one_line(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def unreachable(*args, **kwargs):  # the Hub's own message, newline included, when the network is down
        raise huggingface_hub.errors.LocalEntryNotFoundError(
            "Got: ConnectError: [Errno -2] Name or service not known\nAn error happened while trying to locate the "
            "files on the Hub. Please check your internet connection and try again.")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["from-hf", "gpt2", str(tmp_path / "lite")]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("gptlite-convert from-hf: error: cannot fetch 'gpt2': the Hub cannot be reached")
    assert "known An error happened" in line and line.endswith(f"({tmp_path / 'lite'} was not created)")


def _convert(args: list[str], capsys) -> tuple[int, str]:
    status = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("gptlite-convert")]
    assert len(lines) == 1, err
    return status, lines[0]


@pytest.mark.parametrize("command", ["from-hf", "to-hf"])
@pytest.mark.parametrize("how", ["wrong shape", "truncated", "truncated header"])
def test_a_damaged_source_gives_one_line_naming_file_and_tensor(command, how, tmp_path, capsys):
    source = tmp_path / "source"
    tiny_gpt2(tied=False).save_pretrained(tmp_path / "hf")
    if command == "from-hf":
        shutil.copytree(tmp_path / "hf", source)
    else:
        assert main(["from-hf", str(tmp_path / "hf"), str(source)]) == 0
        capsys.readouterr()
    weights = source / "model.safetensors"
    file = re.escape(str(weights))
    if how == "wrong shape":
        tensors = load_file(weights)
        name = next(n for n in sorted(tensors) if n.endswith(("h.0.attn.c_proj.weight", "0.att.out_proj.weight")))
        tensors[name] = tensors[name][:, :-1].contiguous()
        save_file(tensors, weights, metadata={"format": "pt"})
        expected = rf"{file}: tensor {re.escape(name)} has shape \[32, 31\], but config\.json .*needs \[32, 32\]"
    elif how == "truncated":
        raw = weights.read_bytes()
        weights.write_bytes(raw[: len(raw) * 3 // 4])
        expected = rf"{file}: not a readable safetensors file \(truncated: tensor \S+ ends at data byte \d+"
    else:
        weights.write_bytes(weights.read_bytes()[:100])
        expected = rf"{file}: not a readable safetensors file \(.*header"
    status, line = _convert([command, str(source), str(tmp_path / "out")], capsys)
    assert status == 1
    assert re.search(expected, line), line
    assert line.endswith(f"({tmp_path / 'out'} was not created)") and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, culprit", [
    (["--preset", "gpt3"], "--preset: unknown preset 'gpt3'"),
    (["--config", "missing.json"], "--config missing.json: neither inline JSON nor a readable JSON file"),
    (["--config", "{not json"], "--config: not valid JSON"),
    (["--config", '{"n_heads": 5, "emb_dim": 16}'], "--config: "),
])
def test_bad_option_values_are_usage_errors(args, culprit, tmp_path, capsys):
    torch.save({"tok_emb.weight": torch.zeros(2, 2)}, tmp_path / "model.pth")
    status, line = _convert(["from-book", str(tmp_path / "model.pth"), str(tmp_path / "out"), *args], capsys)
    assert status == 2
    assert line.startswith(f"gptlite-convert from-book: error: {culprit}")
    assert not (tmp_path / "out").exists()


def test_every_subcommand_takes_overwrite(capsys):
    for command in ["from-hf", "from-openai", "from-book", "to-hf"]:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--overwrite" in capsys.readouterr().out
