"""A run that diverges stops with one line and exit 1, keeps its good checkpoints and saves nothing from NaN weights;
the learning rates must be finite; gptlite-generate and gptlite-eval refuse a model whose weights are not finite."""

from __future__ import annotations

import pytest
import torch

from gptlite.generation.cli import main as generate_main
from gptlite.training.checkpointing import list_checkpoints
from gptlite.training.cli import eval_main, main
from tests.conftest import error_line, run_in_process
from tests.training.conftest import (
    config_flags,
    tiny_config,
    write_corpus,
)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def exit_of(capsys, command, argv) -> tuple[int, str]:
    """(exit status, stderr) of an in-process command, asserting that no traceback was printed."""
    code, _, err = run_in_process(capsys, command, *argv)
    return code, err


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus.txt", n_words=1200)


@pytest.mark.parametrize("flag", ["--peak-lr", "--initial-lr", "--min-lr", "--weight-decay", "--grad-clip"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_rates_must_be_finite(capsys, flag, value):
    code, err = exit_of(capsys, main, [flag, value, "--print-config"])
    assert code == 2 and f"{flag} must be a finite number" in error_line(err)


def test_a_huge_learning_rate_stops_at_the_first_nan_and_saves_nothing(tmp_path, corpus, capsys):
    config = tiny_config(tmp_path, corpus, peak_lr=1e30, checkpoint_every=1, max_steps=6, eval_freq=2)
    code, err = exit_of(capsys, main, config_flags(config))
    line = error_line(err)
    assert code == 1
    assert "training diverged: the training loss of the evaluation is nan after optimizer step 1 of 6" in line
    assert "lower --peak-lr (1e+30)" in line and "no checkpoint or model was saved" in line
    out = tmp_path / "run"
    assert not list_checkpoints(out) and not (out / "model.safetensors").exists()


@pytest.mark.parametrize(("grad_clip", "caught"), [(1.0, "the gradient norm"), (None, "the training loss")])
def test_a_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path, corpus, capsys, monkeypatch,
                                                                         grad_clip, caught):
    import gptlite.training.loop as loop

    real, calls = loop.token_loss_sum, []

    def nan_at_step_4(model, input_ids, target_ids):
        calls.append(1)
        loss_sum, count = real(model, input_ids, target_ids)
        return (loss_sum * float("nan") if len(calls) == 4 else loss_sum), count

    monkeypatch.setattr(loop, "token_loss_sum", nan_at_step_4)
    config = tiny_config(tmp_path, corpus, checkpoint_every=2, max_steps=8, eval_freq=100, grad_clip=grad_clip)
    code, err = exit_of(capsys, main, config_flags(config) + (["--grad-clip", "none"] if grad_clip is None else []))
    out = tmp_path / "run"
    line = error_line(err)
    assert code == 1 and f"{caught} is nan in optimizer step 4 of 8" in line  # clipping sees it before the step
    assert f"the last good checkpoint, {out / 'checkpoints' / 'checkpoint-2'}, is kept" in line
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"] and not (out / "model.safetensors").exists()


def test_nan_weights_are_never_checkpointed(tmp_path, corpus, capsys, monkeypatch):
    import gptlite.training.loop as loop

    real = loop.Loop.train_step

    def poisons_a_weight_at_step_3(self, batches):
        real(self, batches)
        if self.state.global_step == 3:
            with torch.no_grad():
                self.session.accelerator.unwrap_model(self.session.model).out_head.weight[0, 0] = float("inf")

    monkeypatch.setattr(loop.Loop, "train_step", poisons_a_weight_at_step_3)
    config = tiny_config(tmp_path, corpus, checkpoint_every=1, max_steps=6, eval_freq=100)
    code, err = exit_of(capsys, main, config_flags(config))
    line = error_line(err)
    assert code == 1 and "tensor out_head.weight holds NaN or infinite values after optimizer step 3 of 6" in line
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-1", "checkpoint-2"]


@pytest.fixture
def nan_model(tmp_path):
    from gptlite import GPTLiteConfig, GPTLiteForCausalLM

    model = GPTLiteForCausalLM(GPTLiteConfig(context_length=32, emb_dim=32, n_heads=2, n_layers=2))
    with torch.no_grad():
        model.model.trf_blocks[1].ff.layers[0].weight[3, 4] = float("nan")
    model.save_pretrained(tmp_path / "nan-model")
    return tmp_path / "nan-model"


def test_generate_and_eval_refuse_weights_that_are_not_finite(tmp_path, corpus, nan_model, capsys):
    message = f"{nan_model}: tensor model.trf_blocks.1.ff.layers.0.weight holds NaN or infinite values"
    code, err = exit_of(capsys, generate_main, [str(nan_model), "--prompt", "the for", "--max-new-tokens", "2"])
    assert code == 1 and message in error_line(err) and "gptlite-generate: error:" in error_line(err)
    code, err = exit_of(capsys, eval_main, [str(nan_model), "--data", str(corpus), "--cache-dir", str(tmp_path / "c")])
    assert code == 1 and message in error_line(err) and "gptlite-eval: error:" in error_line(err)
