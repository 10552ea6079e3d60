"""Book-exact mode: the book's chapter-5 loop (``--recipe book-ch5``) and appendix D's D.4 loop (``--recipe
book-appendix-d --book-exact``), random draw for random draw, printing the book's lines and samples."""

from __future__ import annotations

import json

import pytest

from gptlite.tokenization import get_tokenizer
from gptlite.training.book_exact import check_book_exact
from gptlite.training.cli import main
from gptlite.training.loop import train
from gptlite.training.recipes import build_config
from reference.book_loop import run_book_appendix_d, run_book_chapter5
from tests.conftest import SHARED_DATA
from tests.training.conftest import write_corpus

# The book's chapter-5 listing (eval_iter 1): validation loss at steps 0, 5, ..., 85.
BOOK_VAL_LOSSES = [9.933, 8.339, 7.048, 6.616, 6.600, 6.348, 6.278, 6.226, 6.160,
                   6.179, 6.141, 6.134, 6.233, 6.238, 6.242, 6.293, 6.393, 6.452]
BOOK_CH5_SAMPLES = [  # after each of the 10 epochs (ch05.ipynb, as printed)
    'Every effort moves you,,,,,,,,,,,,.                                     ',
    ('Every effort moves you, and, and, and, and, and, and, and, and, and, and, and, and, and, and, an'
     'd, and, and, and, and, and, and, and,, and, and,'),
    'Every effort moves you, and I had been.                                            ',
    ('Every effort moves you know the                          "I he had the donkey and I had the and '
     'I had the donkey and down the room, I had'),
    ('Every effort moves you know it was not that the picture--I had the fact by the last I had been--'
     'his, and in the            "Oh, and he said, and down the room, and in'),
    ('Every effort moves you know," was one of the picture. The--I had a little of a little: "Yes, and'
     ' in fact, and in the picture was, and I had been at my elbow and as his pictures, and down the r'
     'oom, I had'),
    ('Every effort moves you know," was one of the picture for nothing--I told Mrs.  "I was no--as! Th'
     'e women had been, in the moment--as Jack himself, as once one had been the donkey, and were, and'
     ' in his'),
    ('Every effort moves you know," was one of the axioms he had been the tips of a self-confident mou'
     'stache, I felt to see a smile behind his close grayish beard--as if he had the donkey. "stronges'
     't," as his'),
    ('Every effort moves you?"  "Yes--quite insensible to the irony. She wanted him vindicated--and by'
     ' me!"  He laughed again, and threw back the window-curtains, I had the donkey. "There were days '
     'when I'),
    ('Every effort moves you know," was one of the axioms he laid down across the Sevres and silver of'
     ' an exquisitely appointed luncheon-table, when, on a later day, I had again run over from Monte '
     'Carlo; and Mrs. Gis'),
]

BOOK_D4_LOSSES = [  # (step, train loss, val loss) of all 27 lines D.4 prints
    (0, 10.934, 10.939), (5, 9.151, 9.461), (10, 7.949, 8.184),
    (15, 6.362, 6.876), (20, 5.851, 6.607), (25, 5.750, 6.634),
    (30, 5.225, 6.944), (35, 4.304, 6.512), (40, 3.736, 6.383),
    (45, 2.395, 6.244), (50, 2.948, 6.279), (55, 2.316, 6.169),
    (60, 1.003, 6.343), (65, 0.860, 6.348), (70, 1.117, 6.375),
    (75, 0.367, 6.498), (80, 0.289, 6.612), (85, 0.263, 6.700),
    (90, 0.151, 6.788), (95, 0.097, 6.805), (100, 0.081, 6.832),
    (105, 0.089, 6.900), (110, 0.045, 6.911), (115, 0.047, 6.903),
    (120, 0.038, 6.907), (125, 0.040, 6.912), (130, 0.041, 6.915),
]
_D4_SAMPLE_FROM_EPOCH_10 = (
    'Every effort moves you?"  "Yes--quite insensible to the irony. She wanted him vindicated--and by'
    ' me!"  He laughed again, and threw back his head to look up at the sketch of the donkey. "There '
    'were days when I'
)
BOOK_D4_SAMPLES = [  # after each of the 15 epochs (appendix-D.ipynb as the book printed it)
    'Every effort moves you,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,',
    'Every effort moves you,,,,,,,,,,,,,,,,,,, the,,,,,,,,, the,,,,,,,,,,, the,,,,,,,,',
    ('Every effort moves you. "I"I and I had to the to the to the and the of the to the of the to Gisb'
     'urn, and the of the the of the of the to the to the of the of the of the to the of'),
    'Every effort moves you know   "--and--and--I                 ", and, and, and, and I had been, and, and " it.   ',
    ('Every effort moves you know the picture to have the picture--his--his, the donkey of a little: "'
     'strong, with a little of the donkey, in the picture--as, with a little of his painting, the donk'
     'ey, the donkey, with a little'),
    ('Every effort moves you?"     I, and he had a little the in a flash that he was a little the fact'
     ", and in the picture. Gisburn's my unexpected discovery; and as I had the picture--the. He was h"
     'is'),
    ('Every effort moves you?"  "Yes--I glanced after him, so inevitably the last word. Gisburn\'s past'
     '! The women had been his pictures I remember getting off a prodigious phrase about the honour be'
     "ing _mine_--because he didn't say"),
    ('Every effort moves you?" "I that my hostess was "interesting": on that point I could have given '
     'Miss Croft the fact, and Mrs. "I must have Jack himself, I had again run over from Monte Carlo; '
     'and Mrs. Gis'),
    ('Every effort moves you?" " on--forming, as it were, so inevitably the background of the house." '
     ' " went on groping and muddling; then I looked at the donkey again. I may be pardoned the bull--'
     'that I found'),
    *[_D4_SAMPLE_FROM_EPOCH_10] * 6,  # the same greedy continuation after each of epochs 10 to 15
]
TINY = {"emb_dim": 32, "n_layers": 2, "n_heads": 2, "context_length": 32, "stride": 32}
BOOK_TINY = {"vocab_size": 50257, "context_length": 32, "emb_dim": 32, "n_heads": 2, "n_layers": 2, "drop_rate": 0.1,
             "qkv_bias": False}


def printed_lines(text: str) -> list[str]:
    """What a run printed: its evaluation lines and samples, without the progress bar and the summary."""
    return [line for line in text.splitlines() if line.startswith(("Ep ", "Every effort moves you"))]


def test_book_exact_equals_the_books_loop_on_a_small_model(tmp_path, capsys):
    """Same windows, same initial weights, same shuffles, same dropout masks: the same losses as the book's code."""
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=800)
    config = build_config("book-ch5", overrides={**TINY, "data": [str(corpus)], "epochs": 2, "sample_tokens": 5,
                                                 "cache_dir": str(tmp_path / "cache"),
                                                 "output_dir": str(tmp_path / "run")})
    result = train(config)
    book_cfg = {"vocab_size": 50257, "context_length": 32, "emb_dim": 32, "n_heads": 2, "n_layers": 2,
                "drop_rate": 0.1, "qkv_bias": False}
    train_losses, val_losses, tokens_seen, step_losses, samples = run_book_chapter5(
        corpus.read_text(encoding="utf-8"), book_cfg, get_tokenizer(), num_epochs=2, sample_tokens=5
    )
    history = result.history
    assert len(history.train_loss) == len(train_losses) >= 4
    assert history.step == list(range(0, 5 * len(train_losses), 5))
    assert history.tokens_seen == tokens_seen
    assert history.train_loss == pytest.approx(train_losses, abs=1e-4)
    assert history.val_loss == pytest.approx(val_losses, abs=1e-4)
    assert history.step_loss == pytest.approx(step_losses, abs=1e-4)
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "history.json").is_file()
    # The sample after each epoch, printed as the book prints it: starting with the start context.
    printed = [line for line in printed_lines(capsys.readouterr().out) if not line.startswith("Ep ")]
    assert printed == samples and len(samples) == 2 and samples[0].startswith("Every effort moves you")


def test_book_exact_appendix_d_equals_the_books_d4_loop_on_a_small_model(tmp_path, capsys):
    """Warmup, cosine, clipping after warmup as printed, AdamW's default peak: the D.4 listing's numbers and lines."""
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=800)
    # A tiny model's gradient norms stay below the listing's 1.0: clip at 0.05 so that clipping happens.
    config = build_config("book-appendix-d", overrides={
        **TINY, "book_exact": True, "grad_clip": 0.05, "data": [str(corpus)], "epochs": 3, "sample_tokens": 5,
        "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "run")})
    assert (config.optim.peak_lr, config.optim.clip_mode, config.optim.schedule) == (1e-3, "book-d4", "cosine")
    result = train(config)
    gptlite_out = printed_lines(capsys.readouterr().out)
    book_out = []
    train_losses, val_losses, tokens_seen, lrs, step_losses, samples = run_book_appendix_d(
        corpus.read_text(encoding="utf-8"), BOOK_TINY, get_tokenizer(), n_epochs=3, sample_tokens=5,
        log=book_out.append, max_norm=0.05)
    history = result.history
    warmup = int(0.2 * len(lrs))
    assert warmup >= 2 and len(lrs) > warmup + 2  # warmup, the unclipped first step after it, clipped steps
    assert history.lr == lrs  # the very floats the listing sets before each step
    assert history.step_loss == pytest.approx(step_losses, abs=1e-4)
    assert history.tokens_seen == tokens_seen
    assert history.train_loss == pytest.approx(train_losses, abs=1e-4)
    assert history.val_loss == pytest.approx(val_losses, abs=1e-4)
    assert len(samples) == 3
    # The same lines: "Ep 1 (Iter 000000): Train loss ..., Val loss ..." and, after each epoch, the sample.
    assert gptlite_out == book_out
    assert gptlite_out[0].startswith("Ep 1 (Iter 000000): Train loss ")


def test_clipping_from_the_first_step_after_warmup_is_a_different_run(tmp_path):
    """The D.4 test above can tell the printed ``>`` from the repository's later ``>=``: clipping changes the run."""
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=800)
    losses = {}
    for mode in ("book-d4", "after-warmup"):
        config = build_config("book-appendix-d", overrides={
            **TINY, "book_exact": True, "clip_mode": mode, "grad_clip": 0.05, "data": [str(corpus)], "epochs": 3,
            "sample_tokens": 1,
            "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / mode)})
        losses[mode] = train(config).history.step_loss
    warmup = int(0.2 * len(losses["book-d4"]))
    assert losses["book-d4"][: warmup + 1] == losses["after-warmup"][: warmup + 1]
    assert losses["book-d4"][warmup + 1] != losses["after-warmup"][warmup + 1]


def test_book_exact_final_numbers_are_the_saved_models_and_a_failed_start_leaves_no_folder(tmp_path, capsys):
    from gptlite.training.cli import eval_main

    corpus = write_corpus(tmp_path / "corpus.txt", n_words=800)
    flags = ["--recipe", "book-ch5", "--emb-dim", "32", "--n-layers", "2", "--n-heads", "2", "--context-length",
             "32", "--stride", "32", "--epochs", "1", "--sample-tokens", "1", "--cache-dir", str(tmp_path / "cache")]
    main([*flags, "--data", str(corpus), "--output-dir", str(tmp_path / "run")])
    printed = capsys.readouterr().out
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    steps = len(history["step_loss"])
    assert steps % 5 != 1 and history["step"][-1] < steps - 1  # the listing's last evaluation is an earlier step's
    eval_main([str(tmp_path / "run"), "--data", str(corpus), "--split", "validation", "--cache-dir",
               str(tmp_path / "cache"), "--batch-size", "2", "--max-batches", "1", "--json"])
    saved_model_loss = json.loads(capsys.readouterr().out)["loss"]
    assert f"final validation loss {saved_model_loss:.3f}" in printed
    assert f"after optimizer step {steps} of {steps}, on the first 1 validation batch(es) of --batch-size 2" in printed

    with pytest.raises(SystemExit) as exit_info:  # the data is found missing after the folder was taken
        main([*flags, "--data", str(tmp_path / "missing.txt"), "--output-dir", str(tmp_path / "new")])
    assert exit_info.value.code == 2 and not (tmp_path / "new").exists()


def test_book_appendix_d_recipe_keeps_its_modern_path():
    modern, exact = build_config("book-appendix-d"), build_config("book-appendix-d", overrides={"book_exact": True})
    assert (modern.run.book_exact, modern.optim.peak_lr, modern.optim.clip_mode) == (False, 5e-4, "after-warmup")
    assert (exact.run.book_exact, exact.optim.peak_lr, exact.optim.clip_mode) == (True, 1e-3, "book-d4")
    # Flags still win over what --book-exact sets.
    assert build_config("book-appendix-d", overrides={"book_exact": True, "peak_lr": 5e-4}).optim.peak_lr == 5e-4
    # Both book recipes train on the book's text unless told otherwise.
    assert build_config("book-ch5").data.data == modern.data.data == ["the-verdict"]
    assert build_config("book-ch5", overrides={"dataset": "wikitext"}).data.data == []


@pytest.mark.parametrize(
    ("overrides", "processes", "named"),
    [
        ({}, 2, "2 processes"),
        ({"grad_accum": 2}, 1, "--grad-accum 2"),
        ({"attn_implementation": "sdpa"}, 1, "--attn-implementation sdpa"),
        ({"checkpoint_every": 10}, 1, "--checkpoint-every"),
        ({"compile": True}, 1, "--compile"),
    ],
)
def test_book_exact_refuses_what_the_book_has_no_counterpart_for(overrides, processes, named):
    with pytest.raises(ValueError, match=named):
        check_book_exact(build_config("book-ch5", overrides=overrides), processes)


@pytest.mark.slow
@pytest.mark.all_cores
def test_book_ch5_reproduces_the_books_chapter5_run(tmp_path, capsys):
    verdict = SHARED_DATA / "the-verdict.txt"
    if not verdict.exists():
        pytest.skip(f"{verdict} not present")
    config = build_config("book-ch5", overrides={"data": [str(verdict)], "cache_dir": str(tmp_path / "cache"),
                                                 "output_dir": str(tmp_path / "run")})
    history = train(config).history
    printed = printed_lines(capsys.readouterr().out)
    assert history.step == list(range(0, 90, 5))
    val = history.val_loss
    assert len(val) == len(BOOK_VAL_LOSSES) == 18
    assert [round(v, 3) for v in val[:4]] == BOOK_VAL_LOSSES[:4]
    assert all(abs(v - book) <= 0.01 for v, book in zip(val, BOOK_VAL_LOSSES)), list(zip(val, BOOK_VAL_LOSSES))
    # The training loss at step 0 over the first eval_iter shuffled batches: 9.897 for 1 batch (measured with
    # reference/book_loop.py too); the book prints 9.781 ... 0.391, the mean over 5 (--eval-iter 5),
    # which leaves the validation losses unchanged (one validation batch, the same random draws).
    first = {1: 9.897, 5: 9.781}[config.eval.eval_iter]
    assert history.train_loss[0] == pytest.approx(first, abs=0.05)
    assert history.train_loss[-1] < 1.0
    # The chapter's own lines, and the sample after each epoch word for word (eval_iter changes no draw, so
    # the book's samples, printed with --eval-iter 5, are those of this run too).
    evaluations = [line for line in printed if line.startswith("Ep ")]
    assert evaluations[0] == f"Ep 1 (Step 000000): Train loss {history.train_loss[0]:.3f}, Val loss 9.933"
    assert [line for line in printed if not line.startswith("Ep ")] == BOOK_CH5_SAMPLES


@pytest.mark.slow
@pytest.mark.all_cores
def test_book_appendix_d_book_exact_reproduces_the_books_d4_run(tmp_path, capsys):
    """``gptlite-train --recipe book-appendix-d --book-exact``: D.4's 27 printed lines and 15 samples."""
    verdict = SHARED_DATA / "the-verdict.txt"
    if not verdict.exists():
        pytest.skip(f"{verdict} not present")
    main(["--recipe", "book-appendix-d", "--book-exact", "--data", str(verdict),
          "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    printed = printed_lines(out)
    history = json.loads((tmp_path / "run" / "history.json").read_text(encoding="utf-8"))
    assert history["step"] == [step for step, _, _ in BOOK_D4_LOSSES]
    assert history["lr"][0] == 1e-5 and max(history["lr"]) == history["lr"][27] == pytest.approx(1e-3)  # AdamW default
    # Every evaluation line as the listing prints it, with history.json's numbers.
    assert [line for line in printed if line.startswith("Ep ")] == [
        f"Ep {step // 9 + 1} (Iter {step:06d}): Train loss {t:.3f}, Val loss {v:.3f}"
        for step, t, v in zip(history["step"], history["train_loss"], history["val_loss"])]
    # The book's numbers: to the printed 3 decimals (within one unit of the last printed digit where this
    # CPU's float rounding differs from the book's machine: the book's own code here prints 5.751 for 5.750).
    for (step, book_train, book_val), t, v in zip(BOOK_D4_LOSSES, history["train_loss"], history["val_loss"]):
        assert abs(t - book_train) <= 0.0015 and abs(v - book_val) <= 0.0015, (step, t, v)
    assert [(round(t, 3), round(v, 3)) for t, v in zip(history["train_loss"][:5], history["val_loss"][:5])] == [
        (t, v) for _, t, v in BOOK_D4_LOSSES[:5]]
    assert [line for line in printed if not line.startswith("Ep ")] == BOOK_D4_SAMPLES
    print(out.splitlines()[-1])  # "135 optimizer steps, ...; this book-exact run of appendix D's loop took ..."
