"""``gptlite-train`` and ``gptlite-eval``: the command lines of :func:`~gptlite.training.loop.train` and
:func:`~gptlite.training.evaluation.evaluate_model`.

Every :class:`~gptlite.training.config.TrainConfig` field is a flag (``emb_dim`` -> ``--emb-dim``) and a
``--config`` file key. Precedence: the recipe (``--recipe``, default ``default``) < the file < the flags.
With ``--resume-from``, the resumed run's recorded settings take the recipe's place and the file and flags
may change only some of them (:mod:`gptlite.training.resume`).
Several processes: ``accelerate launch --multi_gpu --num_processes N -m gptlite.training ...`` (this
also works on a machine without GPUs, where the processes train on CPU).

Exit codes: 0 done; 2 a usage error (bad flags or settings, a refused output folder, a checkpoint that
does not fit the run or its data, a tracker that is not installed); 1 a run-time failure (disk full, an output
folder that cannot be written, a damaged checkpoint, a run that diverged); 130 / 143 stopped by SIGINT /
SIGTERM. Each failure is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import os
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptlite.cli_runner import Reworded, run_command
from gptlite.training.config import TrainConfig, flag
from gptlite.training.recipes import RECIPES, build_config, coerce, field_kind
from gptlite.training.resume import finished_message, resolve_settings

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
        help_text = _help_text(f.name, defaults[f.name])
        if kind is bool:
            group.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, help=help_text)
        else:
            nargs = "+" if is_list else None
            group.add_argument(flag(f.name), type=_converter(f.name), nargs=nargs, metavar=f.name.upper(),
                               help=help_text)
    return parser


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)", left out where X says nothing (None, [], False) or the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, [], False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _help_text(name: str, default: Any) -> str:
    """A field's docstring, and its default unless that is nothing to show (None, []) or the text says it already."""
    text = _field_docs().get(name, "")
    if default not in (None, []) and "(default:" not in text:
        text += f" (default: {default!r})"
    return text.replace("%", "%%")


def main(argv: list[str] | None = None) -> None:
    """``gptlite-train [FLAGS]``: resolve the settings, then :func:`~gptlite.training.loop.train`."""
    # The runner gives every failure one line and its status (gptlite.errors). SIGTERM outside the loop (while
    # tokenizing, saving) unwinds like Ctrl-C, so temporary folders and the lock go away; inside the loop
    # train() handles both signals itself.
    if status := run_command("gptlite-train", lambda: _train_main(sys.argv[1:] if argv is None else list(argv))):
        raise SystemExit(status)


def _train_main(argv: list[str]) -> None:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    recipe, config_file = args.pop("recipe", None), args.pop("config", None)
    print_config = args.pop("print_config", False)
    config, resumed = resolve_settings(recipe, config_file, args)
    finished = finished_message(config, resumed) if resumed is not None else None
    if print_config:
        print(json.dumps(config.to_dict(), indent=1))
        return
    if finished is not None:  # nothing to train; exit 0 so that a script resuming until done stops cleanly
        if _is_main_process():
            _finished(parser, config, finished)
        return
    from gptlite.training.loop import train
    from gptlite.training.stopping import TrainingStopped

    # Bad settings or data found while starting (tiny corpus, refused folder, checkpoint of another
    # architecture), a full disk, a divergence: the runner's one line and status. A signal says what is left.
    try:
        train(config)
    except TrainingStopped as stop:
        line = (f"stopped by {signal.Signals(stop.signum).name} after optimizer step {stop.global_step} of "
                f"{stop.total_steps} and saved {stop.checkpoint}; continue with: "
                f"{_resume_command(parser.prog, config.output_dir)}")
        raise Reworded(stop, line if _is_main_process() else None) from None
    except KeyboardInterrupt as err:  # Ctrl-C (or a second signal) outside a step: nothing more is saved
        signum = getattr(err, "signum", signal.SIGINT)
        line = None
        if _is_main_process():
            line = f"interrupted by {signal.Signals(signum).name}; {_what_is_left(config, parser.prog)}"
        raise Reworded(err, line) from None


def _finished(parser: argparse.ArgumentParser, config, finished: str) -> None:
    """A finished run: say so, or (with --push-to-hub) push what it saved, which is how a failed push is retried."""
    if config.push_to_hub is None:
        print(f"{parser.prog}: {finished}")
        return
    from gptlite.training.outputs import push_run

    push_run(config.output_dir, config)  # a failed push: the runner's one line


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _resume_command(prog: str, output_dir: str) -> str:
    """The command that continues this run: its folder alone, which records every setting (run.json)."""
    flags = shlex.join(["--resume-from", "latest", "--output-dir", str(output_dir)])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by accelerate launch: its options are not ours to see
        return f"the same accelerate launch command with the flags {flags}"
    return f"{prog} {flags}"


def _what_is_left(config, prog: str) -> str:
    from gptlite.training.checkpointing import latest_checkpoint
    from gptlite.training.run_folder import read_run_record

    out = Path(config.output_dir)
    record = read_run_record(out) if out.is_dir() else None
    latest = latest_checkpoint(out, record["run_id"]) if record else None
    if latest is None:
        return "nothing of this run was saved"
    return f"its newest checkpoint is {latest}; continue with: {_resume_command(prog, config.output_dir)}"


def build_eval_parser() -> argparse.ArgumentParser:
    """The ``gptlite-eval`` parser (the arguments of :func:`~gptlite.training.evaluation.evaluate_model`)."""
    parser = argparse.ArgumentParser(
        prog="gptlite-eval",
        description="Loss and perplexity of a model on a corpus, cut into the windows training uses.",
        formatter_class=_DefaultsHelpFormatter,
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

    def evaluate() -> None:
        from accelerate import PartialState

        from gptlite.training.evaluation import evaluate_model

        result = evaluate_model(**args)
        if not PartialState().is_main_process:
            return
        if as_json:
            print(json.dumps(result))
        else:
            print(f"loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}  "
                  f"({result['tokens']:,} tokens in {result['batches']} batches)")
        sys.stdout.flush()

    if status := run_command(parser.prog, evaluate):
        raise SystemExit(status)
