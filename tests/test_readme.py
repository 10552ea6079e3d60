"""The README's commands stay runnable as written: every `gptlite-*` line of its shell blocks parses, with values
its parser accepts, and the runs it shows write to folders of their own, so the blocks run top to bottom."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from gptlite.conversion.cli import _parser as convert_parser
from gptlite.generation.cli import build_parser as generate_parser
from gptlite.training.cli import build_eval_parser
from gptlite.training.cli import build_parser as train_parser
from gptlite.training.recipes import build_config

README = Path(__file__).resolve().parents[1] / "README.md"
PARSERS = {"gptlite-generate": generate_parser, "gptlite-convert": convert_parser, "gptlite-eval": build_eval_parser}


def readme_commands() -> list[list[str]]:
    """Every gptlite command of the README's bash blocks as argv (`accelerate launch ... -m gptlite.training`
    counts as gptlite-train), with continuation lines joined and comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:2] == ["accelerate", "launch"]:
                argv = ["gptlite-train", *argv[argv.index("gptlite.training") + 1 :]]
            if argv and argv[0].startswith("gptlite-"):
                commands.append(argv)
    return commands


def _train_settings(argv: list[str]) -> dict:
    args = vars(train_parser().parse_args(argv))  # only the flags given
    args.pop("print_config", None)
    return args


def test_the_readme_shows_every_command():
    programs = {argv[0] for argv in readme_commands()}
    assert programs == {"gptlite-train", "gptlite-generate", "gptlite-convert", "gptlite-eval"}


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda argv: " ".join(argv)[:80])
def test_each_readme_command_parses(argv, capsys):
    program, flags = argv[0], argv[1:]
    if program != "gptlite-train":
        PARSERS[program]().parse_args(flags)  # an unknown flag or a refused value exits 2
        return
    args = _train_settings(flags)
    recipe, config_file = args.pop("recipe", None), args.pop("config", None)
    if config_file is None and args.get("resume_from") is None:
        build_config(recipe, None, args)  # every value checked as the run would check it (no file is read)


def test_the_runs_the_readme_shows_write_to_folders_of_their_own():
    outputs = []
    for program, *flags in readme_commands():
        if program == "gptlite-train":
            args = _train_settings(flags)
            if args.get("resume_from") is None:  # a resume continues its run's folder on purpose
                outputs.append(args.get("output_dir") or "runs/default")
        elif program == "gptlite-convert":
            outputs.append(convert_parser().parse_args(flags).out)
    assert len(outputs) == len(set(outputs)), sorted(outputs)
