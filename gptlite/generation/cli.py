"""`gptlite-generate MODEL --prompt TEXT`: continue a prompt with a saved gptlite model (or a GPT-2 folder, or a
Hub id). Exit status: 0 done; 2 a bad flag or model path, a model gptlite cannot run; 1 a broken model file;
130 / 143 interrupted (:mod:`gptlite.cli_runner`)."""

from __future__ import annotations

import argparse
import sys

import torch

from ..cli_runner import run_command
from ..errors import UsageError, one_line
from ..loading import load_model
from ..speedups import speed_up
from . import check_generation_options, generate_text, load_tokenizer

__all__ = ["build_parser", "main"]

PROG = "gptlite-generate"


def build_parser() -> argparse.ArgumentParser:
    """The ``gptlite-generate`` parser (the arguments of :func:`~gptlite.generation.generate_text`)."""
    parser = argparse.ArgumentParser(prog=PROG, description=generate_text.__doc__.split("\n\n")[0])
    parser.add_argument(
        "model", help="a gptlite folder (save_pretrained / gptlite-train), a plain GPT-2 folder, or a Hub id"
    )
    parser.add_argument("--prompt", required=True, help="text to continue (empty: start from <|endoftext|>)")
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    parser.add_argument("--top-k", type=int, default=None, help="sample only among the k likeliest tokens")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def _notice(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _run(args: argparse.Namespace) -> None:
    check_generation_options(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    model = load_model(args.model, dtype=getattr(torch, args.dtype))
    try:
        model = speed_up(model.to(args.device))
    except (RuntimeError, AssertionError) as err:  # no such device on this machine (e.g. cuda without a GPU)
        raise UsageError(f"--device {args.device}: {one_line(err)}") from None
    tokenizer = load_tokenizer(args.model)
    text = generate_text(
        model,
        tokenizer,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stream=args.stream,
        notice=_notice,
    )
    if not args.stream:
        print(text)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `gptlite-generate`: exits 2 for a bad flag or model path, 1 for a broken model file."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.top_k is not None or args.top_p is not None) and args.temperature == 0:
        parser.error("--top-k/--top-p only apply when sampling: also pass --temperature > 0")
    if status := run_command(PROG, lambda: _run(args)):
        raise SystemExit(status)


if __name__ == "__main__":
    main()
