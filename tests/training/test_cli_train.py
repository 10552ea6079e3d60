"""``gptlite-train`` / ``python -m gptlite.training`` and ``gptlite-eval``: settings, recipes, errors, a real run."""

from __future__ import annotations

import json
import math
from importlib.metadata import entry_points

import pytest
import torch
from trainkit import config_flags, run, subprocess_env, tiny_config, train_command, write_corpus

from gptlite.generation import main as generate_main
from gptlite.training.cli import eval_main, main
from gptlite.training.recipes import build_config


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


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
    assert (model.initializer, ch5.attn_implementation) == ("book", "eager")
    assert (ch5.stride, ch5.batch_size, ch5.epochs, ch5.peak_lr, ch5.weight_decay) == (256, 2, 10, 4e-4, 0.1)
    assert (ch5.eval_freq, ch5.eval_iter, ch5.grad_clip, ch5.seed, ch5.book_exact) == (5, 1, None, 123, True)
    assert {ch5.lr_schedule(100).lr(s) for s in range(100)} == {4e-4}  # constant
    d = build_config("book-appendix-d")
    schedule = d.lr_schedule(100)
    assert (d.epochs, schedule.warmup_steps, schedule.initial_lr, schedule.min_lr) == (15, 20, 1e-5, 1e-5)
    assert schedule.lr(0) == 1e-5 and schedule.lr(20) == pytest.approx(5e-4) and schedule.lr(99) < 2e-5
    assert (d.grad_clip, d.clip_mode, d.eval_iter, d.book_exact) == (1.0, "after-warmup", 1, False)
    assert not build_config().book_exact  # the default path is untouched


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
        (["--emb-dim", "30", "--n-heads", "4"], "--emb-dim must be divisible by --n-heads=4"),
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


def test_module_cli_trains_with_trackers_then_eval_and_generate_use_the_result(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=1200)
    # 9 steps with --eval-freq 4: evaluations after steps 0, 4 and 8, the last one over the whole validation split.
    config = tiny_config(tmp_path, corpus, epochs=1, eval_freq=4, eval_iter=1000, report_to=["tensorboard", "trackio"])
    env = subprocess_env(tmp_path) | {"TRACKIO_DIR": str(tmp_path / "trackio")}
    done = run(train_command(*config_flags(config)), env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "run"
    assert "Ep 1 (Step 000000)" in done.stdout and "Saved the model, tokenizer, history.json" in done.stdout
    assert "training:" in done.stderr and "tok_s=" in done.stderr  # the progress bar
    assert list((out / "logs").rglob("events.out.tfevents.*")) and list((tmp_path / "trackio").glob("*.db"))
    history = json.loads((out / "history.json").read_text())
    assert history["step"] == [0, 4, 8] and len(history["lr"]) == 9

    eval_main([str(out), "--data", str(corpus), "--split", "validation", "--cache-dir", config.cache_dir,
               "--batch-size", "3", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["loss"] == pytest.approx(history["val_loss"][-1], abs=1e-5)  # same windows, any batch size
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    eval_main([str(out), "--data", str(corpus), "--cache-dir", config.cache_dir, "--max-batches", "2"])
    assert "perplexity" in capsys.readouterr().out

    generate_main([str(out), "--prompt", "the for", "--max-new-tokens", "4"])
    assert capsys.readouterr().out.startswith("the for")

    with pytest.raises(SystemExit) as exit_info:
        eval_main([str(tmp_path / "no-model"), "--data", str(corpus)])
    assert exit_info.value.code == 2 and "gptlite-eval: error:" in capsys.readouterr().err
