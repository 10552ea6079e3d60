"""Wall time of a book-exact run beside the book's own code, one after the other in this process.

    python -m benchmarks.bench_book                      # appendix D's D.4 run (135 steps)
    python -m benchmarks.bench_book --recipe book-ch5    # chapter 5's run (90 steps)

Both sides train the book's 124M model on ../shared/data/the-verdict.txt when it is there, else on gptlite's
built-in `the-verdict` (downloaded once into the cache), or on --data, with the same seed
and print the same lines; the book's side is the copy of the listing in reference/book_loop.py with
the book's GPTModel (reference/book_gpt.py). The two runs take minutes each, so they run once each, book
first, rather than alternating; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import torch

from gptlite.downloads import DownloadError
from gptlite.tokenization import get_tokenizer
from gptlite.training.builtin_data import builtin_text
from gptlite.training.cli import main as gptlite_train
from reference.book_loop import run_book_appendix_d, run_book_chapter5

VERDICT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "the-verdict.txt"
BOOK_124M = {"vocab_size": 50257, "context_length": 256, "emb_dim": 768, "n_heads": 12, "n_layers": 12,
             "drop_rate": 0.1, "qkv_bias": False}


def run_book(recipe: str, text: str) -> list[float]:
    tokenizer = get_tokenizer()
    runner = run_book_appendix_d if recipe == "book-appendix-d" else run_book_chapter5
    with contextlib.redirect_stdout(io.StringIO()):
        results = runner(text, dict(BOOK_124M), tokenizer)
    return results[1]  # validation losses


def run_gptlite(recipe: str, data: Path, folder: Path) -> str:
    flags = ["--recipe", recipe, "--data", str(data), "--cache-dir", str(folder / "cache"),
             "--output-dir", str(folder / "run")]
    if recipe == "book-appendix-d":
        flags.append("--book-exact")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        gptlite_train(flags)
    return printed.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=["book-appendix-d", "book-ch5"], default="book-appendix-d")
    parser.add_argument("--data", type=Path, default=None, help="the book's the-verdict.txt")
    args = parser.parse_args(argv)
    if args.data is None:
        try:
            args.data = VERDICT if VERDICT.exists() else builtin_text("the-verdict")
        except DownloadError as err:
            raise SystemExit(str(err)) from None
    if not args.data.exists():
        raise SystemExit(f"{args.data} does not exist: pass --data PATH to the book's the-verdict.txt")
    text = args.data.read_text(encoding="utf-8")
    print(f"{args.recipe} on {args.data}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    start = time.perf_counter()
    book_val = run_book(args.recipe, text)
    book_s = time.perf_counter() - start
    print(f"book's own code:   {book_s / 60:5.1f} min  (last val loss {book_val[-1]:.3f})", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        out = run_gptlite(args.recipe, args.data, Path(folder))
        ours_s = time.perf_counter() - start
    evaluations = [line for line in out.splitlines() if line.startswith("Ep ")]
    print(f"gptlite book-exact: {ours_s / 60:5.1f} min  ({evaluations[-1].strip()})")
    print(f"book / gptlite wall time: {book_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
