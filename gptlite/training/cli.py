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
import json
import os
import shlex
import signal
import sys
from pathlib import Path

from accelerate import PartialState

from gptlite.cli_runner import Reworded, run_command
from gptlite.loading import model_folder, read_model_config
from gptlite.training.checkpointing import latest_checkpoint
from gptlite.training.config import MIXED_PRECISIONS, SECTIONS, TrainConfig
from gptlite.training.data import DataConfig
from gptlite.training.evaluation import evaluate_model
from gptlite.training.flags import add_flags
from gptlite.training.loop import train
from gptlite.training.outputs import push_run
from gptlite.training.recipes import RECIPES, build_config
from gptlite.training.resume import finished_message, resolve_settings
from gptlite.training.run_folder import read_run_record
from gptlite.training.stopping import TrainingStopped

__all__ = ["build_eval_parser", "build_parser", "eval_main", "main"]

# The help's group of each part of the settings.
_TITLES = {"data": "data", "model": "model", "optim": "optimisation", "eval": "monitoring",
           "run": "checkpoints, outputs and the run"}


def build_parser() -> argparse.ArgumentParser:
    """The ``gptlite-train`` parser. Unset flags are absent from the result, so they never override a file."""
    defaults = build_config().to_dict()
    parser = argparse.ArgumentParser(
        prog="gptlite-train",
        description="Train a gptlite model with Accelerate. With no arguments: the main job, a small GPT "
        "trained on the Python documentation that ships with CPython, saved in runs/default.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--recipe", choices=list(RECIPES), help="built-in settings to start from (default: default)")
    parser.add_argument("--config", help="YAML or JSON file of settings; flags override it, it overrides the recipe")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings as JSON and exit")
    for name, part in SECTIONS.items():
        add_flags(parser.add_argument_group(_TITLES[name]), part, defaults)
    return parser


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
    # Bad settings or data found while starting (tiny corpus, refused folder, checkpoint of another
    # architecture), a full disk, a divergence: the runner's one line and status. A signal says what is left.
    try:
        train(config)
    except TrainingStopped as stop:
        line = (f"stopped by {signal.Signals(stop.signum).name} after optimizer step {stop.global_step} of "
                f"{stop.total_steps} and saved {stop.checkpoint}; continue with: "
                f"{_resume_command(parser.prog, config.run.output_dir)}")
        raise Reworded(stop, line if _is_main_process() else None) from None
    except KeyboardInterrupt as err:  # Ctrl-C (or a second signal) outside a step: nothing more is saved
        signum = getattr(err, "signum", signal.SIGINT)
        line = None
        if _is_main_process():
            line = f"interrupted by {signal.Signals(signum).name}; {_what_is_left(config, parser.prog)}"
        raise Reworded(err, line) from None


def _finished(parser: argparse.ArgumentParser, config: TrainConfig, finished: str) -> None:
    """A finished run: say so, or (with --push-to-hub) push what it saved, which is how a failed push is retried."""
    if config.run.push_to_hub is None:
        print(f"{parser.prog}: {finished}")
        return
    push_run(config.run.output_dir, config)  # a failed push: the runner's one line


def _is_main_process() -> bool:
    return PartialState().is_main_process


def _resume_command(prog: str, output_dir: str) -> str:
    """The command that continues this run: its folder alone, which records every setting (run.json)."""
    flags = shlex.join(["--resume-from", "latest", "--output-dir", str(output_dir)])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by accelerate launch: its options are not ours to see
        return f"the same accelerate launch command with the flags {flags}"
    return f"{prog} {flags}"


def _what_is_left(config: TrainConfig, prog: str) -> str:
    out = Path(config.run.output_dir)
    record = read_run_record(out) if out.is_dir() else None
    latest = latest_checkpoint(out, record["run_id"]) if record else None
    if latest is None:
        return "nothing of this run was saved"
    return f"its newest checkpoint is {latest}; continue with: {_resume_command(prog, config.run.output_dir)}"


# What gptlite-eval's data flags mean there: the model fixes the windows' length, and the whole corpus is scored.
_EVAL_NOTES = {
    "context_length": "Window length (default: the model's).",
    "train_ratio": "Training share of the corpus, for --split train/validation.",
}


def build_eval_parser() -> argparse.ArgumentParser:
    """The ``gptlite-eval`` parser: the model, the data flags of ``gptlite-train`` and how much to score."""
    parser = argparse.ArgumentParser(
        prog="gptlite-eval",
        description="Loss and perplexity of a model on a corpus, cut into the windows training uses.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("model", help="a folder written by gptlite-train / save_pretrained, or a Hub id")
    add_flags(parser.add_argument_group("data"), DataConfig, {"context_length": None}, notes=_EVAL_NOTES,
              skip=("shuffle_buffer",))
    group = parser.add_argument_group("evaluation")
    group.add_argument("--split", choices=["all", "train", "validation"], default="all",
                       help="all windows, or the training / validation part that --train-ratio makes (default: all)")
    group.add_argument("--batch-size", type=int, default=8, help="windows per batch (default: 8)")
    group.add_argument("--max-batches", type=int, default=None, help="evaluate at most this many batches")
    group.add_argument("--mixed-precision", choices=list(MIXED_PRECISIONS), default=None, help="autocast dtype")
    group.add_argument("--json", action="store_true", default=False, help="print the result as JSON")
    return parser


def eval_main(argv: list[str] | None = None) -> None:
    """``gptlite-eval MODEL --data ...``: print the loss and perplexity."""
    parser = build_eval_parser()
    args = vars(parser.parse_args(argv))
    as_json = args.pop("json")
    how = {key: args.pop(key) for key in ("split", "batch_size", "max_batches", "mixed_precision")}
    model = args.pop("model")

    def evaluate() -> None:
        if "context_length" not in args:  # the model's own
            args["context_length"] = read_model_config(model_folder(model))[1].context_length
        result = evaluate_model(model, DataConfig(**args), **how)
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
