"""``gptlite-train`` / ``python -m gptlite.training`` and ``gptlite-eval``: settings, recipes, errors, a real run."""

from __future__ import annotations

import json
import math
from importlib.metadata import entry_points

import pytest
import torch

from gptlite.configuration_gptlite import PRESET_FIELDS
from gptlite.generation.cli import main as generate_main
from gptlite.training.cli import eval_main, main
from gptlite.training.recipes import build_config
from tests.conftest import error_line, run_in_process
from tests.training.conftest import (
    config_flags,
    max_abs_difference,
    run,
    subprocess_env,
    tiny_config,
    train_command,
    weights,
    write_corpus,
)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def printed_config(capsys, *argv: str) -> dict:
    main([*argv, "--print-config"])
    return json.loads(capsys.readouterr().out)


def test_flags_override_the_config_file_which_overrides_the_recipe(tmp_path, capsys):
    settings = tmp_path / "run.yaml"
    # YAML 1.1 reads 1e-3 as a string: it must still become a float.
    settings.write_text("recipe: book-ch5\nbatch-size: 3\npeak_lr: 1e-3\nreport_to: tensorboard\n")
    config = printed_config(capsys, "--config", str(settings), "--batch-size", "5", "--no-qkv-bias")
    assert config["batch_size"] == 5  # flag over file
    assert config["peak_lr"] == 0.001 and config["report_to"] == ["tensorboard"]  # file over recipe
    assert config["emb_dim"] == 768 and config["epochs"] == 10 and config["schedule"] == "constant"  # the recipe
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps({"epochs": 3, "max_steps": None}))
    config = printed_config(capsys, "--config", str(as_json), "--recipe", "book-appendix-d", "--max-steps", "7")
    assert (config["epochs"], config["max_steps"], config["peak_lr"]) == (3, 7, 5e-4)


def test_no_arguments_is_the_default_recipe(capsys):
    config = printed_config(capsys)
    assert config["data"] == [] and config["output_dir"] == "runs/default"  # the built-in corpus
    assert config["start_context"] == "The for statement"


def test_book_recipes_have_the_books_settings():
    ch5 = build_config("book-ch5")
    model = ch5.model_config()
    assert (model.emb_dim, model.n_layers, model.n_heads, model.context_length) == (768, 12, 12, 256)
    assert (model.drop_rate, model.qkv_bias, model.tie_word_embeddings) == (0.1, False, False)
    assert (model.initializer, ch5.model.attn_implementation) == ("book", "eager")
    optim = ch5.optim
    assert (ch5.data.stride, optim.batch_size, optim.epochs, optim.peak_lr) == (256, 2, 10, 4e-4)
    assert (optim.weight_decay, optim.grad_clip, ch5.run.seed, ch5.run.book_exact) == (0.1, None, 123, True)
    assert (ch5.eval.eval_freq, ch5.eval.eval_iter) == (5, 1)
    assert {ch5.optim.lr_schedule(100).lr(s) for s in range(100)} == {4e-4}  # constant
    d = build_config("book-appendix-d")
    schedule = d.optim.lr_schedule(100)
    assert (d.optim.epochs, schedule.warmup_steps, schedule.initial_lr, schedule.min_lr) == (15, 20, 1e-5, 1e-5)
    assert schedule.lr(0) == 1e-5 and schedule.lr(20) == pytest.approx(5e-4) and schedule.lr(99) < 2e-5
    assert (d.optim.grad_clip, d.optim.clip_mode, d.eval.eval_iter, d.run.book_exact) == (1.0, "after-warmup", 1, False)
    assert not build_config().run.book_exact  # the default path is untouched


def test_a_preset_replaces_the_recipe_architecture_and_clashes_with_explicit_sizes(capsys):
    config = printed_config(capsys, "--recipe", "book-ch5", "--preset", "gpt2-medium")
    architecture = (config["preset"], config["emb_dim"], config["n_layers"], config["qkv_bias"])
    assert architecture == ("gpt2-medium", 1024, 24, True)
    assert build_config(overrides=config).model_config().n_layers == 24  # a printed config reads back as it was
    with pytest.raises(ValueError, match="--preset gpt2-medium fixes the architecture; drop --emb-dim 64"):
        build_config(overrides={"preset": "gpt2-medium", "emb_dim": 64})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "abc"], "--batch-size"),
        (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
        (["--emb-dim", "30", "--n-heads", "4"], "--emb-dim=30 is not divisible by --n-heads=4"),
        (["--mixed-precision", "fp8"], "--mixed-precision must be one of no, bf16, fp16"),
        (["--report-to", "nope"], "--report-to must be among"),
        (["--streaming"], "--streaming needs --max-steps"),
        (["--recipe", "nope"], "--recipe"),
        (["--config", "missing.yaml"], "--config file missing.yaml does not exist"),
    ],
)
def test_bad_settings_exit_with_a_message_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--print-config"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_states_each_default_once_and_only_a_real_one(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: [])" not in text
    assert "(default: --context-length, windows do not overlap)." in text and text.count("(default: ") >= 20
    assert "Width of the residual stream. (default: 128)" in text
    with pytest.raises(SystemExit):
        eval_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: False)" not in text and ") (default:" not in text
    assert "Window length (default: the model's)" in text and "windows per batch (default: 8)" in text


def test_unknown_config_file_key_names_the_file_and_the_key(tmp_path, capsys):
    settings = tmp_path / "bad.yaml"
    settings.write_text("emb_dim: 64\nlearning_rate: 0.1\n")
    with pytest.raises(SystemExit):
        main(["--config", str(settings), "--print-config"])
    err = capsys.readouterr().err
    assert str(settings) in err and "unknown setting 'learning_rate'" in err


def test_console_scripts_point_at_the_cli():
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts["gptlite-train"] == "gptlite.training.cli:main"
    assert scripts["gptlite-eval"] == "gptlite.training.cli:eval_main"


def test_tiny_corpus_is_a_clean_error_not_a_traceback(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "tiny.txt", n_words=24)
    with pytest.raises(SystemExit) as exit_info:
        main(config_flags(tiny_config(tmp_path, corpus)))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "gptlite-train: error: training split has" in err and "--context-length" in err
    assert not (tmp_path / "run").exists()  # a failed start leaves no folder, run.json or run.lock behind


@pytest.mark.slow  # a fresh Python process: ~4 s of imports
def test_module_cli_trains_with_trackers_then_eval_and_generate_use_the_result(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=1200)
    # 9 steps with --eval-freq 4: evaluations after steps 0, 4 and 8, the last one over the whole validation split.
    config = tiny_config(tmp_path, corpus, epochs=1, eval_freq=4, eval_iter=1000, report_to=["tensorboard", "trackio"])
    env = subprocess_env(tmp_path) | {"TRACKIO_DIR": str(tmp_path / "trackio")}
    done = run(train_command(*config_flags(config)), env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "run"
    assert "Ep 1 (Step 000000)" in done.stdout and "Saved the model, tokenizer and history.json" in done.stdout
    assert "training:" in done.stderr and "tok_s=" in done.stderr  # the progress bar
    assert list((out / "logs").rglob("events.out.tfevents.*")) and list((tmp_path / "trackio").glob("*.db"))
    history = json.loads((out / "history.json").read_text())
    assert history["step"] == [0, 4, 8] and len(history["lr"]) == 9

    eval_main([str(out), "--data", str(corpus), "--split", "validation", "--cache-dir", config.data.cache_dir,
               "--batch-size", "3", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["loss"] == pytest.approx(history["val_loss"][-1], abs=1e-5)  # same windows, any batch size
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    eval_main([str(out), "--data", str(corpus), "--cache-dir", config.data.cache_dir, "--max-batches", "2"])
    assert "perplexity" in capsys.readouterr().out

    generate_main([str(out), "--prompt", "the for", "--max-new-tokens", "4"])
    assert capsys.readouterr().out.startswith("the for")

    with pytest.raises(SystemExit) as exit_info:
        eval_main([str(tmp_path / "no-model"), "--data", str(corpus)])
    assert exit_info.value.code == 2 and "gptlite-eval: error:" in capsys.readouterr().err


# -- model folders for gptlite-eval and --init-from; one line and the exit status for every bad input -------------


def exit_of(capsys, command, argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of an in-process command, asserting that no traceback was printed."""
    return run_in_process(capsys, command, *argv)


@pytest.fixture
def gpt2_folder(tmp_path):
    """A GPT2LMHeadModel over GPT-2's vocabulary, every weight random (std 0.3): its loss is far from a fresh init's."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(3)
    model = GPT2LMHeadModel(GPT2Config(n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    model.save_pretrained(tmp_path / "gpt2")
    return tmp_path / "gpt2", model


def source_architecture_flags(config) -> list[str]:
    """The flags of `config` without its architecture flags: with --init-from, the source's architecture applies."""
    flags, skipping = [], False
    for item in config_flags(config):
        if item.startswith("--"):
            skipping = item.removeprefix("--no-").removeprefix("--").replace("-", "_") in PRESET_FIELDS
        if not skipping:
            flags.append(item)
    return flags


def gpt2_loss(model, corpus, tmp_path) -> float:
    """transformers' GPT-2 mean loss over the corpus's 32-token windows (what gptlite-eval must report)."""
    from gptlite.training.data import DataConfig, build_datasets

    windows, _ = build_datasets(DataConfig(data=[str(corpus)], context_length=32, train_ratio=1.0,
                                           cache_dir=str(tmp_path / "gpt2-cache")), shuffle=False)
    total, count = 0.0, 0
    with torch.no_grad():
        for input_ids, target_ids in torch.utils.data.DataLoader(windows, batch_size=8):
            logits = model(input_ids).logits.double()
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), target_ids.flatten(), reduction="sum")
            count += target_ids.numel()
    return float(total / count)


def test_eval_scores_the_real_weights_of_a_plain_gpt2_folder(tmp_path, gpt2_folder, capsys):
    folder, model = gpt2_folder
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=400)
    code, out, err = exit_of(capsys, eval_main, [str(folder), "--data", str(corpus), "--cache-dir",
                                                 str(tmp_path / "cache"), "--json"])
    assert code == 0 and f"{folder} is a GPT-2 folder (model_type gpt2): converted to gptlite in memory" in err
    assert json.loads(out)["loss"] == pytest.approx(gpt2_loss(model, corpus, tmp_path), abs=1e-4)


def broken_model(tmp_path, how: str):
    """A small gptlite folder with one defect: truncated weights, a wrongly shaped tensor, or a foreign model_type."""
    from safetensors.torch import load_file, save_file

    from gptlite import GPTLiteConfig, GPTLiteForCausalLM

    folder = tmp_path / how
    GPTLiteForCausalLM(GPTLiteConfig(context_length=32, emb_dim=32, n_heads=2, n_layers=2)).save_pretrained(folder)
    weights = folder / "model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[:-64])
    elif how == "shape":
        tensors = load_file(weights)
        tensors["model.trf_blocks.1.ff.layers.0.weight"] = torch.zeros(100, 32)
        save_file(tensors, weights, metadata={"format": "pt"})
    else:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {"model_type": how}))
    return folder


MODEL_DEFECTS = {
    "truncated": (1, "truncated/model.safetensors: not a readable safetensors file"),
    "shape": (1, "tensor model.trf_blocks.1.ff.layers.0.weight has shape [100, 32], but"),
    "llama": (2, "config.json: model_type is 'llama'"),
}


@pytest.mark.parametrize("how", list(MODEL_DEFECTS))
def test_eval_names_the_broken_model_file(tmp_path, capsys, how):
    status, message = MODEL_DEFECTS[how]
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=400)
    code, _, err = exit_of(capsys, eval_main, [str(broken_model(tmp_path, how)), "--data", str(corpus)])
    assert code == status and message in error_line(err) and "gptlite-eval: error:" in error_line(err)


def test_eval_missing_model_is_neither_a_folder_nor_on_the_hub(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=400)
    for name in (str(tmp_path / "nothing-here"), "no-such-hub-model"):
        code, _, err = exit_of(capsys, eval_main, [name, "--data", str(corpus)])
        assert code == 2 and f"{name} is neither a folder nor reachable on the Hub" in error_line(err)


def test_eval_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import gptlite.training.evaluation as evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "loss_sums", interrupted)
    folder = tmp_path / "lite"
    from gptlite import GPTLiteConfig, GPTLiteForCausalLM

    GPTLiteForCausalLM(GPTLiteConfig(context_length=32, emb_dim=32, n_heads=2, n_layers=2)).save_pretrained(folder)
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=400)
    code, _, err = exit_of(capsys, eval_main, [str(folder), "--data", str(corpus), "--cache-dir", str(tmp_path / "c")])
    assert code == 130 and "gptlite-eval: error: interrupted (Ctrl-C)" in error_line(err)


def test_init_from_a_gpt2_folder_trains_its_real_weights(tmp_path, gpt2_folder, capsys):
    folder, model = gpt2_folder
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=1200)
    config = tiny_config(tmp_path, corpus, init_from=str(folder), max_steps=1, peak_lr=1e-9, initial_lr=1e-9,
                         min_lr=1e-9, eval_freq=1, train_ratio=0.5)
    flags = source_architecture_flags(config)
    resolved = printed_config(capsys, *flags)  # --init-from fixes the architecture like a preset
    assert (resolved["emb_dim"], resolved["n_layers"], resolved["qkv_bias"], resolved["tie_word_embeddings"]) == (
        32, 2, True, True)
    code, out, err = exit_of(capsys, main, flags)
    assert code == 0 and f"{folder} is a GPT-2 folder (model_type gpt2): converted to gptlite in memory" in err
    # One step at lr 1e-9 moves no weight by more than ~1e-9: the run holds GPT-2's weights, under gptlite's names.
    from gptlite.loading import load_model

    source = load_model(folder, notice=lambda line: None).state_dict()
    trained = weights(tmp_path / "run")
    assert max_abs_difference(trained, {name: source[name] for name in trained}) < 1e-6
    code, out, _ = exit_of(capsys, eval_main, [str(tmp_path / "run"), "--data", str(corpus), "--cache-dir",
                                                str(tmp_path / "cache"), "--json"])
    assert json.loads(out)["loss"] == pytest.approx(gpt2_loss(model, corpus, tmp_path), abs=1e-4)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--n-layers", "4"], "--n-layers 4 contradicts --init-from {src}, which has n_layers 2"),
        (["--emb-dim", "64"], "--emb-dim 64 contradicts --init-from {src}, which has emb_dim 32"),
        (["--n-heads", "4"], "--n-heads 4 contradicts --init-from {src}, which has n_heads 2"),
        (["--no-qkv-bias"], "--qkv-bias False contradicts --init-from {src}, which has qkv_bias True"),
        (["--preset", "gpt2-small"], "--preset gpt2-small (emb_dim 768) contradicts --init-from {src}, which has "
                                     "emb_dim 32"),
        (["--context-length", "64"], "--context-length 64 exceeds the context_length 32 of --init-from {src}"),
    ],
    ids=["n-layers", "emb-dim", "n-heads", "qkv-bias", "preset", "context-length"],
)
def test_init_from_refuses_flags_that_contradict_the_source(gpt2_folder, capsys, flags, message):
    folder, _ = gpt2_folder
    code, _, err = exit_of(capsys, main, ["--init-from", str(folder), *flags, "--print-config"])
    assert code == 2 and message.format(src=folder) in error_line(err)


def test_init_from_accepts_flags_that_agree_and_recipe_sizes(gpt2_folder, capsys):
    folder, _ = gpt2_folder
    resolved = printed_config(capsys, "--init-from", str(folder), "--n-layers", "2", "--recipe", "book-appendix-d")
    assert (resolved["emb_dim"], resolved["n_layers"], resolved["context_length"]) == (32, 2, 32)


@pytest.mark.parametrize("how", list(MODEL_DEFECTS))
def test_init_from_a_broken_model_is_one_line(tmp_path, capsys, how):
    status, message = MODEL_DEFECTS[how]
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=1200)
    config = tiny_config(tmp_path, corpus, init_from=str(broken_model(tmp_path, how)), max_steps=1)
    code, _, err = exit_of(capsys, main, source_architecture_flags(config))
    assert code == status and message in error_line(err) and "gptlite-train: error:" in error_line(err)


@pytest.mark.parametrize(
    ("name", "content", "status", "message"),
    [
        ("bad.jsonl", b'{"text": "a"}\n{"text": \n', 1, "bad.jsonl, line 2: not valid JSON"),
        ("num.jsonl", b'{"text": "a"}\n{"text": 7}\n', 1, "num.jsonl, line 2: column 'text' holds 7 (a number)"),
        ("latin1.txt", b"caf\xe9\n" * 300, 1, "latin1.txt: not UTF-8 text: byte 0xe9 at byte offset 3 (line 1)"),
        ("missing.txt", None, 2, "missing.txt does not exist"),
    ],
    ids=["malformed-jsonl", "number-text", "not-utf8", "missing"],
)
def test_train_names_the_broken_data_file_and_exits_1_or_2(tmp_path, capsys, name, content, status, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    code, _, err = exit_of(capsys, main, config_flags(tiny_config(tmp_path, tmp_path / name)))
    assert code == status and message in error_line(err)


@pytest.mark.parametrize("streaming", [True, False])
def test_an_unreachable_hub_dataset_is_one_line_before_any_bar(tmp_path, capfd, monkeypatch, streaming):
    import logging

    import datasets

    def unreachable(*args, **kwargs):  # what datasets does offline: huggingface_hub retries, then gives up
        retries = logging.getLogger("huggingface_hub.utils._http")
        for attempt in range(1, 6):
            retries.warning("'[Errno -2] Name or service not known' thrown while requesting HEAD https://hf.co")
            retries.warning(f"Retrying in 1s [Retry {attempt}/5].")
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    out = tmp_path / "run"
    flags = ["--dataset", "wikitext", "--max-steps", "5", "--output-dir", str(out), "--cache-dir", str(tmp_path / "c")]
    with pytest.raises(SystemExit) as exit_info:
        main([*flags, "--streaming" if streaming else "--no-streaming"])
    assert exit_info.value.code == 1
    assert capfd.readouterr().err.splitlines() == [
        "gptlite-train: error: --dataset wikitext: Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError); "
        "retry online (with HF_HUB_OFFLINE unset), or train on local files with --data"]
    assert not out.exists()
