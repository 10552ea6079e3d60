"""The Accelerate loop in one process: outputs, history, accumulation, resume, tiny corpora, --init-from."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gptlite.generation import generate_text, load_tokenizer
from gptlite.modeling_gptlite import GPTLiteForCausalLM
from gptlite.training.checkpointing import list_checkpoints, load_trainer_state
from gptlite.training.loop import train
from gptlite.training.monitoring import History, Progress
from tests.training.conftest import (
    max_abs_difference,
    tiny_config,
    weights,
    write_corpus,
)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def steps_per_epoch(run_dir) -> int:
    return load_trainer_state(list_checkpoints(run_dir)[-1]).steps_per_epoch


def test_run_writes_model_tokenizer_history_plots_and_checkpoints(tmp_path, corpus, capsys):
    config = tiny_config(tmp_path, corpus, epochs=2, eval_freq=3, checkpoint_every=4, keep_checkpoints=2)
    result = train(config)
    out = tmp_path / "run"

    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "history.json", "loss.png", "lr.png", "train_config.json"):
        assert (out / name).is_file(), name
    per_epoch = steps_per_epoch(out)
    total = 2 * per_epoch
    assert per_epoch >= 8 and result.global_step == total

    saved = json.loads((out / "history.json").read_text())
    assert saved["dataset"] == str(corpus.resolve())  # named in model cards (gptlite.hub)
    history = History.from_dict(saved)
    # The book's global_step, step 0 included, and the last step: the final losses are the saved model's.
    assert history.step == sorted({*range(0, total, 3), total - 1})
    tokens_per_step = config.optim.batch_size * config.data.context_length
    assert history.tokens_seen == [(s + 1) * tokens_per_step for s in history.step]
    assert result.tokens_seen == total * tokens_per_step
    assert history.epoch == pytest.approx([(s + 1) / per_epoch for s in history.step])
    schedule = config.optim.lr_schedule(total)
    assert history.lr == pytest.approx([schedule.lr(s) for s in range(total)])
    assert len(history.step_loss) == total
    assert all(math.isfinite(v) for v in history.train_loss + history.val_loss)
    assert history.train_loss[-1] < history.train_loss[0] - 1.0 and history.val_loss[-1] < history.val_loss[0] - 1.0

    # The last two checkpoints are kept: the epoch-end one of the last epoch is the newest.
    kept = list_checkpoints(out)
    saved = sorted({*range(4, total, 4), per_epoch, total})
    assert [p.name for p in kept] == [f"checkpoint-{s}" for s in saved[-2:]]
    final_state = load_trainer_state(kept[-1])
    assert (final_state.global_step, final_state.epoch, final_state.step_in_epoch) == (total, 2, 0)
    assert final_state.history["step"] == history.step

    printed = capsys.readouterr().out
    assert "Ep 1 (Step 000000): Train loss" in printed and "Val perplexity" in printed
    assert printed.count("the for") >= 2  # one sample after each epoch

    model = GPTLiteForCausalLM.from_pretrained(out)
    assert model.config.emb_dim == 32 and model.config.context_length == 32
    text = generate_text(model, load_tokenizer(out), "the for", max_new_tokens=5)
    assert text.startswith("the for") and len(text) > len("the for")


def test_accumulation_and_batch_size_give_the_same_training(tmp_path, corpus):
    # The windows are drawn in the same order whatever the batch size, so batch 4 == 2 batches of 2.
    # eval_iter above the number of batches: both evaluate the whole validation split.
    one = train(tiny_config(tmp_path / "a", corpus, batch_size=4, grad_accum=1, max_steps=6, eval_iter=1000))
    two = train(tiny_config(tmp_path / "b", corpus, batch_size=2, grad_accum=2, max_steps=6, eval_iter=1000))
    assert two.history.step_loss == pytest.approx(one.history.step_loss, abs=1e-5)
    assert two.history.val_loss == pytest.approx(one.history.val_loss, abs=1e-5)
    assert two.tokens_seen == one.tokens_seen
    assert max_abs_difference(weights(tmp_path / "a" / "run"), weights(tmp_path / "b" / "run")) < 1e-5


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, corpus, monkeypatch, capsys):
    # Dropout on and a tied head: the RNG states and shared tensors must survive the checkpoint.
    settings = {"epochs": 2, "drop_rate": 0.1, "tie_word_embeddings": True, "checkpoint_every": 3, "eval_freq": 4}
    full = train(tiny_config(tmp_path / "full", corpus, **settings))
    capsys.readouterr()

    end_step = Progress.end_step

    def crash_after_step_7(self, global_step, *args, **kwargs):
        end_step(self, global_step, *args, **kwargs)
        if global_step == 7:  # inside the first epoch, after checkpoint-6
            raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "end_step", crash_after_step_7)
    config = tiny_config(tmp_path / "cut", corpus, **settings)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(Progress, "end_step", end_step)
    out = tmp_path / "cut" / "run"
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-3", "checkpoint-6"]
    assert 0 < load_trainer_state(out / "checkpoints" / "checkpoint-6").step_in_epoch < steps_per_epoch(out)

    config.run.resume_from = "latest"
    resumed = train(config)
    assert "Resumed from" in capsys.readouterr().out and resumed.resumed_from.name == "checkpoint-6"
    for key, values in full.history.to_dict().items():
        assert resumed.history.to_dict()[key] == pytest.approx(values), key
    diff = max_abs_difference(weights(tmp_path / "full" / "run"), weights(out))
    assert diff <= 1e-6, diff


def test_max_steps_stops_inside_an_epoch_and_resuming_a_finished_run_does_nothing(tmp_path, corpus, capsys):
    config = tiny_config(tmp_path, corpus, max_steps=3, eval_freq=100)
    result = train(config)
    out = tmp_path / "run"
    assert result.global_step == 3 and len(result.history.lr) == 3 and result.history.step == [0, 2]  # and the last
    state = load_trainer_state(out / "checkpoints" / "checkpoint-3")
    assert (state.epoch, state.step_in_epoch, state.total_steps) == (0, 3, 3)
    before = weights(out)
    config.run.resume_from = "latest"
    capsys.readouterr()
    again = train(config)
    assert again.global_step == 3 and again.history.to_dict() == result.history.to_dict()
    printed = capsys.readouterr().out
    assert "at optimizer step 3 of 3" in printed and "training at" not in printed  # no "0 tokens/s"
    assert max_abs_difference(before, weights(out)) == 0.0


def test_resume_refuses_other_batch_settings(tmp_path, corpus):
    train(tiny_config(tmp_path, corpus, max_steps=2))
    with pytest.raises(ValueError, match="--batch-size 4, this run has 2"):
        train(tiny_config(tmp_path, corpus, max_steps=2, batch_size=2, resume_from="latest"))
    with pytest.raises(FileNotFoundError, match="--resume-from .*nowhere"):
        train(tiny_config(tmp_path, corpus, resume_from=str(tmp_path / "nowhere")))


@pytest.mark.parametrize(
    ("n_words", "overrides", "flag"),
    [
        (24, {}, "--context-length"),  # not even one window
        (84, {"train_ratio": 0.5}, "--batch-size"),  # one training window: fewer than one batch of 4
        (600, {"grad_accum": 8}, "--grad-accum"),  # 4 training batches, but a step takes 8
    ],
)
def test_tiny_corpus_errors_name_the_setting_to_change(tmp_path, n_words, overrides, flag):
    corpus = write_corpus(tmp_path / "tiny.txt", n_words=n_words)
    with pytest.raises(ValueError, match=flag):
        train(tiny_config(tmp_path, corpus, **{"batch_size": 4, **overrides}))


def test_streaming_trains_and_evaluates_from_a_document_stream(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(10):  # every 10th document (the last) validates
        write_corpus(folder / f"doc{i}.txt", n_words=300, seed=i)
    result = train(tiny_config(tmp_path, folder, streaming=True, max_steps=4, eval_freq=3))
    assert result.global_step == 4 and result.history.step == [0, 3]
    assert all(math.isfinite(v) for v in result.history.train_loss + result.history.val_loss)
    state = load_trainer_state(tmp_path / "run" / "checkpoints" / "checkpoint-4")
    assert (state.steps_per_epoch, state.step_in_epoch) == (0, 4)


def test_start_context_must_fit_the_context(tmp_path, corpus):
    with pytest.raises(ValueError, match="--start-context"):
        train(tiny_config(tmp_path, corpus, start_context="word " * 40))


def test_init_from_continues_a_trained_model(tmp_path, corpus):
    first = train(tiny_config(tmp_path / "a", corpus, epochs=2))
    again = train(tiny_config(tmp_path / "b", corpus, max_steps=1, peak_lr=1e-6, init_from=str(tmp_path / "a" / "run"),
                              emb_dim=64, n_heads=4))  # the architecture comes from the saved model
    assert again.history.train_loss[0] == pytest.approx(first.history.train_loss[-1], abs=0.3)
    assert GPTLiteForCausalLM.from_pretrained(tmp_path / "b" / "run").config.emb_dim == 32
    with pytest.raises(ValueError, match="--context-length 64 exceeds the context_length 32 of --init-from"):
        train(tiny_config(tmp_path / "c", corpus, context_length=64, init_from=str(tmp_path / "a" / "run")))


def test_bf16_autocast_trains_on_cpu(tmp_path, corpus):
    result = train(tiny_config(tmp_path, corpus, mixed_precision="bf16", max_steps=3))
    assert all(math.isfinite(v) for v in result.history.step_loss)
    assert result.history.step_loss[-1] < result.history.step_loss[0]
    assert weights(tmp_path / "run")["model.tok_emb.weight"].dtype == torch.float32  # autocast, fp32 master weights


def test_tensorboard_gets_the_metrics(tmp_path, corpus):
    pytest.importorskip("tensorboard")
    train(tiny_config(tmp_path, corpus, max_steps=2, report_to=["tensorboard"]))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert {"train/loss", "val/loss", "val/perplexity", "lr", "tokens_per_second"} <= set(accumulator.Tags()["scalars"])
    assert [e.step for e in accumulator.Scalars("lr")] == [1, 2]


def test_tf32_is_switched_on_for_cuda_only():
    from gptlite.training.runtime import use_tf32

    before = torch.get_float32_matmul_precision()
    try:
        use_tf32(torch.device("cpu"), True)
        assert torch.get_float32_matmul_precision() == before  # CPU matmuls keep full fp32
        use_tf32(torch.device("cuda"), True)  # a device object only: no GPU is needed to name one
        assert torch.get_float32_matmul_precision() == "high"
        use_tf32(torch.device("cuda"), False)
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)
