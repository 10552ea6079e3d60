"""The output folder of a conversion: what may be replaced, and the refusals that keep inputs and other data safe.

A conversion is written into a hidden sibling of the output folder (`gptlite.folders.atomic_folder`) and
swapped into place only once config, weights, tokenizer and remote code are complete, fsynced and (with
`--verify`) checked; this module decides beforehand whether the output folder may be replaced at all.

A non-empty output folder is replaced only when it is a previous output of the same kind, that is:
- its config.json is JSON whose `model_type` is the kind's (`gptlite` for from-hf, from-openai, from-book;
  `gpt2` for to-hf), and
- it holds nothing but files a conversion or `save_pretrained` writes there (`MODEL_FILES`, sharded
  weights `model-*-of-*.safetensors`, and for gptlite the two remote-code files): no subfolder, no
  other file. A training run's folder (train_config.json, checkpoints/) or a README written by hand is
  therefore never replaced without `--overwrite`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from ..folders import check_output_folder

__all__ = ["MODEL_FILES", "check_conversion_output", "is_previous_output"]

MODEL_FILES = frozenset({
    "config.json", "generation_config.json",
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    "added_tokens.json",
})
_REMOTE_CODE = {
    # The model's code, and the CPU speed-up files that gptlite copied beside it before they left the model.
    "gptlite": frozenset(
        {"configuration_gptlite.py", "modeling_gptlite.py", "compat.py", "fast_cpu.py", "cpu_kernels.py",
         "decode_linear.py"}
    ),
    "gpt2": frozenset(),
}
_SHARD = re.compile(r"^(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)$")
_DESCRIBE = {
    "gptlite": "a gptlite model folder (config.json model_type 'gptlite' and only model files)",
    "gpt2": "a plain GPT-2 model folder (config.json model_type 'gpt2' and only model files)",
}


def is_previous_output(folder: Path, model_type: str) -> bool:
    """Whether `folder` holds a model folder of `model_type` and nothing else (see the module docstring)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict) or config.get("model_type") != model_type:
        return False
    allowed = MODEL_FILES | _REMOTE_CODE[model_type]
    return all(
        path.is_file() and not path.is_symlink() and (path.name in allowed or _SHARD.match(path.name))
        for path in folder.iterdir()
    )


def check_conversion_output(
    out: str | os.PathLike[str],
    model_type: str,
    inputs: Iterable[str | os.PathLike[str] | None],
    overwrite: bool = False,
) -> Path:
    """The output folder as a Path, or `FolderRefused` (a usage error) naming it.

    Refused: the output is an input or contains one, is a file, or is a non-empty folder that is not a
    previous output of `model_type` (unless `overwrite`: then it is replaced whole, files the conversion
    does not write included).
    """
    return check_output_folder(
        out,
        inputs=[path for path in inputs if path is not None],
        is_previous_output=lambda folder: is_previous_output(folder, model_type),
        overwrite=overwrite,
        describe=_DESCRIBE[model_type],
    )
