"""The classifiers on gptlite's trunk: the book's chapter-6 sequence classifier and a per-token classifier.

Parity is against transformers' own GPT-2 classifiers with the same weights; loading is from a causal-LM folder, as
chapter 6 starts from the pretrained model; training is transformers' Trainer on a tiny local set.
"""

import pytest
import torch
from transformers import GPT2ForSequenceClassification, GPT2ForTokenClassification

from gptlite import GPTLiteConfig, GPTLiteForCausalLM, GPTLiteForSequenceClassification, GPTLiteForTokenClassification
from tests.conftest import TINY, randomize_, tiny_model, to_gpt2

PAD = 0


def _classifiers(num_labels: int = 3, pad_token_id: int | None = PAD):
    """A random gptlite classifier and GPT-2's with the same trunk and head (GPT-2's head has no bias)."""
    lm = tiny_model()
    randomize_(lm)
    gpt2_lm = to_gpt2(lm)
    config = GPTLiteConfig(**TINY, num_labels=num_labels, pad_token_id=pad_token_id)
    ours = GPTLiteForSequenceClassification(config).eval()
    ours.model.load_state_dict(lm.model.state_dict())
    with torch.no_grad():
        ours.score.bias.zero_()
    gpt2_config = gpt2_lm.config
    gpt2_config.num_labels, gpt2_config.pad_token_id = num_labels, pad_token_id
    theirs = GPT2ForSequenceClassification(gpt2_config).eval()
    theirs.transformer.load_state_dict(gpt2_lm.transformer.state_dict())
    with torch.no_grad():
        theirs.score.weight.copy_(ours.score.weight)
    return ours, theirs


def _padded_batch(side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of 9, 5 and 2 real tokens (never the pad id), padded on `side`; and their attention mask."""
    lengths, width = (9, 5, 2), 9
    ids = torch.full((3, width), PAD)
    mask = torch.zeros(3, width, dtype=torch.long)
    for row, n in enumerate(lengths):
        span = slice(0, n) if side == "right" else slice(width - n, width)
        ids[row, span] = torch.randint(1, TINY["vocab_size"], (n,))
        mask[row, span] = 1
    return ids, mask


@pytest.mark.parametrize("side", ["right", "left"])
def test_sequence_logits_equal_gpt2s_classifier_on_padded_batches(side):
    ours, theirs = _classifiers()
    ids, mask = _padded_batch(side)
    # gptlite counts positions from the mask; GPT-2 is given the same positions (it would start every row at 0).
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        want = theirs(ids, attention_mask=mask, position_ids=positions).logits
        assert (ours(ids, attention_mask=mask).logits - want).abs().max().item() < 1e-5
        # Without the mask the padding id finds the last real tokens, as GPT-2 finds them.
        assert (ours(ids).logits - theirs(ids).logits).abs().max().item() < 1e-5


def test_each_row_is_classified_as_it_is_alone():
    ours, _ = _classifiers()
    ids, mask = _padded_batch("left")
    with torch.no_grad():
        batched = ours(ids, attention_mask=mask).logits
        for row in range(3):
            alone = ours(ids[row : row + 1, mask[row] == 1]).logits
            assert (batched[row] - alone[0]).abs().max().item() < 1e-5


def test_without_padding_information_the_last_position_is_read_as_in_the_book():
    ours, _ = _classifiers(pad_token_id=None)
    ids = torch.randint(1, TINY["vocab_size"], (2, 6))
    with torch.no_grad():
        hidden = ours.model(ids).last_hidden_state
        assert torch.allclose(ours(ids).logits, ours.score(hidden[:, -1, :]), atol=1e-6)  # the book's [:, -1, :]


def test_the_loss_is_cross_entropy_for_classes_and_mse_for_one_label():
    ours, _ = _classifiers()
    ids, mask = _padded_batch("right")
    labels = torch.tensor([0, 2, 1])
    out = ours(ids, attention_mask=mask, labels=labels)
    assert abs(out.loss.item() - torch.nn.functional.cross_entropy(out.logits, labels).item()) < 1e-6
    regression, _ = _classifiers(num_labels=1)
    target = torch.tensor([0.5, -1.0, 2.0])
    out = regression(ids, attention_mask=mask, labels=target)
    assert abs(out.loss.item() - torch.nn.functional.mse_loss(out.logits.squeeze(-1), target).item()) < 1e-6


def test_token_logits_equal_gpt2s_token_classifier():
    lm = tiny_model()
    randomize_(lm)
    gpt2_lm = to_gpt2(lm)
    ours = GPTLiteForTokenClassification(GPTLiteConfig(**TINY, num_labels=4)).eval()
    ours.model.load_state_dict(lm.model.state_dict())
    gpt2_lm.config.num_labels = 4
    theirs = GPT2ForTokenClassification(gpt2_lm.config).eval()
    theirs.transformer.load_state_dict(gpt2_lm.transformer.state_dict())
    with torch.no_grad():
        theirs.classifier.load_state_dict(ours.classifier.state_dict())
    ids = torch.randint(0, TINY["vocab_size"], (2, 11))
    labels = torch.randint(0, 4, (2, 11))
    labels[0, :3] = -100
    with torch.no_grad():
        out, want = ours(ids, labels=labels), theirs(ids, labels=labels)
    assert (out.logits - want.logits).abs().max().item() < 1e-5
    assert abs(out.loss.item() - want.loss.item()) < 1e-6


@pytest.mark.parametrize("initializer", ["gpt2", "book"])
@pytest.mark.parametrize("head", [GPTLiteForSequenceClassification, GPTLiteForTokenClassification])
def test_a_classifier_loads_its_trunk_from_a_causal_lm_folder_and_initialises_its_head(tmp_path, head, initializer):
    lm = GPTLiteForCausalLM(GPTLiteConfig(**TINY, initializer=initializer))
    randomize_(lm)
    lm.save_pretrained(tmp_path / "lm")
    model, info = head.from_pretrained(tmp_path / "lm", num_labels=2, output_loading_info=True)
    trunk = lm.model.state_dict()
    assert all(torch.equal(tensor, trunk[name]) for name, tensor in model.model.state_dict().items())
    new_head = model.score if head is GPTLiteForSequenceClassification else model.classifier
    assert new_head.weight.shape == (2, TINY["emb_dim"])
    assert new_head.weight.abs().sum() > 0 and torch.isfinite(new_head.weight).all()  # drawn, not left empty
    assert not info["unexpected_keys"]  # the LM's out_head is expected to be left behind


@pytest.mark.slow
def test_trainer_trains_the_book_recipe_and_the_classifier_round_trips(tmp_path):
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from gptlite.tokenization import get_hf_tokenizer

    tokenizer = get_hf_tokenizer()
    spam = ["win a free prize now", "claim your cash reward today", "you won a free holiday, call now"]
    ham = ["see you at lunch tomorrow", "the meeting moved to noon", "can you send me the notes"]
    rows = {"text": (spam + ham) * 4, "label": ([1] * 3 + [0] * 3) * 4}
    dataset = Dataset.from_dict(rows).map(lambda batch: tokenizer(batch["text"]), batched=True)
    config = GPTLiteConfig(emb_dim=32, n_layers=2, n_heads=2, context_length=32, drop_rate=0.0)
    GPTLiteForCausalLM(config).save_pretrained(tmp_path / "lm")
    model = GPTLiteForSequenceClassification.from_pretrained(tmp_path / "lm", num_labels=2)
    # Chapter 6: train only the last block, the final norm and the new head.
    model.requires_grad_(False)
    for module in (model.model.trf_blocks[-1], model.model.final_norm, model.score):
        module.requires_grad_(True)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=15, per_device_train_batch_size=6,
                             learning_rate=5e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4
    model.save_pretrained(tmp_path / "classifier")
    reloaded = GPTLiteForSequenceClassification.from_pretrained(tmp_path / "classifier").eval()
    batch = tokenizer(spam[:1] + ham[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model.eval()(**batch).logits, reloaded(**batch).logits)
        assert reloaded(**batch).logits.argmax(-1).tolist() == [1, 0, 0]
