"""``gptlite-train`` and ``gptlite-eval``: the command lines of :func:`~gptlite.training.loop.train` and
:func:`~gptlite.training.evaluation.evaluate_model`.

Every :class:`~gptlite.training.config.TrainConfig` field is a flag (``emb_dim`` -> ``--emb-dim``) and a
``--config`` file key. Precedence: the recipe (``--recipe``, default ``default``) < the file < the flags.
Several processes: ``accelerate launch --multi_gpu --num_processes N -m gptlite.training ...`` (this
also works on a machine without GPUs, where the processes train on CPU).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import sys
from collections.abc import Callable
from typing import Any

from gptlite.downloads import DownloadError
from gptlite.training.config import TrainConfig, flag
from gptlite.training.recipes import RECIPES, build_config, coerce, field_kind

__all__ = ["build_eval_parser", "build_parser", "eval_main", "main"]

_SECTIONS = {
    "data": "data",
    "preset": "model",
    "batch_size": "optimisation",
    "eval_freq": "monitoring",
    "output_dir": "checkpoints and outputs",
    "seed": "run",
}


@functools.cache
def _field_docs() -> dict[str, str]:
    """The docstring under each TrainConfig field (the one source of the flags' help)."""
    try:
        tree = ast.parse(inspect.getsource(TrainConfig))
    except (OSError, TypeError):  # no source (e.g. a frozen build): flags just lack help
        return {}
    docs, body = {}, tree.body[0].body
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def _converter(name: str) -> Callable[[str], Any]:
    is_list = field_kind(name)[2]

    def convert(text: str) -> Any:  # argparse calls it once per item of a list flag
        try:
            value = coerce(name, [text] if is_list else text, flag(name))
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value[0] if is_list else value

    convert.__name__ = name
    return convert


def build_parser() -> argparse.ArgumentParser:
    """The ``gptlite-train`` parser. Unset flags are absent from the result, so they never override a file."""
    defaults = build_config().to_dict()
    parser = argparse.ArgumentParser(
        prog="gptlite-train",
        description="Train a gptlite model with Accelerate. With no arguments: the main job, a small GPT "
        "trained on the Python documentation that ships with CPython, saved in runs/default.",
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--recipe", choices=list(RECIPES), help="built-in settings to start from (default: default)")
    parser.add_argument("--config", help="YAML or JSON file of settings; flags override it, it overrides the recipe")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings as JSON and exit")
    group = parser
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SECTIONS:
            group = parser.add_argument_group(_SECTIONS[f.name])
        kind, _, is_list = field_kind(f.name)
        help_text = _field_docs().get(f.name, "") + f" (default: {defaults[f.name]!r})"
        help_text = help_text.replace("%", "%%")
        if kind is bool:
            group.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, help=help_text)
        else:
            nargs = "+" if is_list else None
            group.add_argument(flag(f.name), type=_converter(f.name), nargs=nargs, metavar=f.name.upper(),
                               help=help_text)
    return parser


def _exit_on_user_error(parser: argparse.ArgumentParser, err: Exception) -> None:
    message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> None:
    """``gptlite-train [FLAGS]``: resolve the settings, then :func:`~gptlite.training.loop.train`."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    recipe, config_file = args.pop("recipe", None), args.pop("config", None)
    print_config = args.pop("print_config", False)
    try:
        config = build_config(recipe, config_file, args)
    except (ValueError, FileNotFoundError) as err:
        _exit_on_user_error(parser, err)
    if print_config:
        print(json.dumps(config.to_dict(), indent=1))
        return
    from gptlite.training.loop import train

    try:
        train(config)
    except DownloadError as err:  # offline and not cached (--data the-verdict): exit 1 with the line saying why
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    except (ValueError, KeyError, OSError) as err:
        # Bad settings or data found while starting (tiny corpus, missing file or --init-from model, ...):
        # a message, not a traceback.
        _exit_on_user_error(parser, err)


def build_eval_parser() -> argparse.ArgumentParser:
    """The ``gptlite-eval`` parser (the arguments of :func:`~gptlite.training.evaluation.evaluate_model`)."""
    parser = argparse.ArgumentParser(
        prog="gptlite-eval",
        description="Loss and perplexity of a model on a corpus, cut into the windows training uses.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="a folder written by gptlite-train / save_pretrained, or a Hub id")
    parser.add_argument("--data", nargs="+", default=None, help="text files, folders or globs (none: built-in corpus)")
    parser.add_argument("--dataset", default=None, help="Hugging Face Hub dataset instead of files")
    parser.add_argument("--dataset-config", default=None, help="configuration (subset) of the Hub dataset")
    parser.add_argument("--dataset-split", default="train", help="split of the Hub dataset")
    parser.add_argument("--text-column", default="text", help="column holding the text in tables and datasets")
    parser.add_argument("--context-length", type=int, default=None, help="window length (default: the model's)")
    parser.add_argument("--stride", type=int, default=None, help="step between windows (default: the length)")
    parser.add_argument("--split", choices=["all", "train", "validation"], default="all",
                        help="all windows, or the training / validation part that --train-ratio makes")
    parser.add_argument("--train-ratio", type=float, default=0.9, help="training share for --split train/validation")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per batch")
    parser.add_argument("--max-batches", type=int, default=None, help="evaluate at most this many batches")
    parser.add_argument("--cache-dir", default=None, help="folder of the token cache")
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default=None, help="autocast dtype")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def eval_main(argv: list[str] | None = None) -> None:
    """``gptlite-eval MODEL --data ...``: print the loss and perplexity."""
    parser = build_eval_parser()
    args = vars(parser.parse_args(argv))
    as_json = args.pop("json")
    from gptlite.training.evaluation import evaluate_model

    try:
        result = evaluate_model(**args)
    except DownloadError as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    except (ValueError, KeyError, OSError) as err:
        _exit_on_user_error(parser, err)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    if as_json:
        print(json.dumps(result))
    else:
        print(f"loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}  "
              f"({result['tokens']:,} tokens in {result['batches']} batches)")
    sys.stdout.flush()
