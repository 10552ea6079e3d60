"""`gptlite-convert`: GPT-2 checkpoints (Hugging Face, OpenAI) and the book's .pth in, plain GPT-2 out.

    gptlite-convert from-hf gpt2 out/gpt2-lite --verify
    gptlite-convert from-openai 124M out/gpt2-lite
    gptlite-convert from-book model.pth out/book --preset gpt2-small
    gptlite-convert to-hf out/gpt2-lite out/gpt2-plain

Each subcommand calls the function of the same name in `gptlite.conversion` with the same arguments.
Exit status (:mod:`gptlite.cli_runner`, as every gptlite command): 0 written; 2 usage error (bad flags, OUT
refused, a SRC that is not there, a model kind gptlite does not take); 1 the conversion failed (a damaged
checkpoint, CRC error, failed --verify, offline download, disk full), and OUT was left as it was; 130 / 143
interrupted (Ctrl-C / SIGTERM), OUT as it was.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from ..cli_runner import Reworded, describe, run_command
from ..errors import InputFileError, Interrupted, UsageError, one_line
from ..folders import FolderRefused, FolderWriteError
from . import book, export, hf, openai
from .common import DTYPE_CHOICES, ConversionResult
from .storage import ConversionError, FlagError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptlite-convert", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, src: str, src_help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument(src, metavar=src.upper(), help=src_help)
        sub.add_argument("out", metavar="OUT", help="output folder")
        sub.add_argument("--dtype", choices=DTYPE_CHOICES, help="weights dtype (default: the source's)")
        sub.add_argument("--verify", action="store_true",
                         help="run source and result on the same tokens; fail (and write nothing) if the largest "
                              "logit difference exceeds the dtype's tolerance")
        sub.add_argument("--overwrite", action="store_true",
                         help="replace OUT whole even if it holds something other than a previous output of this "
                              "command (its other files are deleted)")
        return sub

    sub = command("from-hf", "Hugging Face GPT-2 checkpoint -> gptlite", "src",
                  "local folder, or a Hub id (gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, ...)")
    sub.add_argument("--cache-dir", help="Hugging Face cache for Hub downloads")
    sub = command("from-openai", "OpenAI's TensorFlow GPT-2 release -> gptlite (no TensorFlow needed)", "src",
                  "folder with checkpoint, hparams.json, model.ckpt.*; or 124M/355M/774M/1558M to download")
    sub.add_argument("--cache-dir", help="where OpenAI downloads are kept (default ~/.cache/gptlite)")
    sub = command("from-book", "the book's model.pth -> gptlite", "pth",
                  "torch.save(model.state_dict()) or chapter 5's {'model_state_dict', ...}")
    which = sub.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", help="gpt2-small, gpt2-medium, gpt2-large or gpt2-xl")
    which.add_argument("--config", help="the book's config dict as JSON (inline or a file)")
    command("to-hf", "gptlite -> plain GPT2LMHeadModel folder (loads without trust_remote_code)", "src",
            "gptlite folder")
    return parser


def _run(args: argparse.Namespace) -> ConversionResult:
    common = {"dtype": args.dtype, "verify": args.verify, "overwrite": args.overwrite}
    if args.command == "from-hf":
        return hf.from_hf(args.src, args.out, cache_dir=args.cache_dir, **common)
    if args.command == "from-openai":
        return openai.from_openai(args.src, args.out, cache_dir=args.cache_dir, **common)
    if args.command == "from-book":
        return book.from_book(args.pth, args.out, preset=args.preset, config=args.config, **common)
    return export.to_hf(args.src, args.out, **common)


def _folder_identity(path: Path) -> tuple[int, int] | None:
    # The swap renames a new folder onto OUT, so OUT's inode says whether it happened.
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def main(argv: list[str] | None = None) -> int:
    """Entry point of `gptlite-convert`; returns the exit status (0 ok, 1 failed, 2 usage, 130/143 interrupted)."""
    args = _parser().parse_args(argv)  # exits 2 on a bad flag
    return run_command(f"gptlite-convert {args.command}", lambda: _convert(args))


def _convert(args: argparse.Namespace) -> None:
    out = Path(args.out)
    # Every failure happens before the new folder is swapped in, so whatever was at OUT is still there.
    unchanged = f"{out} was left as it was" if out.exists() else f"{out} was not created"
    before = _folder_identity(out)
    start = time.perf_counter()
    try:
        result = _run(args)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM raised as Interrupted
        by = f" by {signal.Signals(err.signum).name}" if isinstance(err, Interrupted) else ""
        # A signal can land after the swap, while the command finishes: then OUT is the new folder, whole.
        state = unchanged if _folder_identity(out) == before else f"{out} had already been written whole"
        raise Reworded(err, f"interrupted{by}; {state}") from None
    except (FolderRefused, FolderWriteError, FlagError):
        raise  # their messages say what is wrong, and what is intact
    except ConversionError as err:
        if isinstance(err, UsageError):  # a model kind gptlite does not take
            raise Reworded(err, f"{describe(err)} ({unchanged})") from None
        # A checkpoint that is there but cannot be read or used as it is: a broken input, as in gptlite-generate.
        raise InputFileError(f"{one_line(err)} ({unchanged})") from None
    except Exception as err:  # downloads, the disk, a missing SRC; a bug still gets one line
        # The Hub's messages span lines ("Got: ConnectError ...\nAn error happened ..."): one line here.
        raise Reworded(err, f"{describe(err)} ({unchanged})") from None
    _report(result, time.perf_counter() - start)


def _report(result: ConversionResult, seconds: float) -> None:
    config = result.config
    print(
        f"wrote {result.out_dir} ({config.model_type}, {config.num_hidden_layers} layers, "
        f"{config.hidden_size} wide, vocab {config.vocab_size}, {str(result.dtype).removeprefix('torch.')}) "
        f"in {seconds:.1f} s"
    )
    if result.max_logit_diff is not None:
        print(
            f"verify: largest logit difference between source and result: {result.max_logit_diff:.3g} "
            f"(within the {str(result.dtype).removeprefix('torch.')} tolerance {result.tolerance:.3g})"
        )


if __name__ == "__main__":
    sys.exit(main())
