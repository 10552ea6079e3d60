"""OpenAI's original GPT-2 release (a TensorFlow checkpoint) to gptlite, without TensorFlow."""

from __future__ import annotations

from pathlib import Path

import torch

from ..folders import atomic_folder
from ..modeling_gptlite import GPTLiteForCausalLM
from .common import (
    ConversionResult,
    check_gpt2_source,
    expected_gpt2_shapes,
    gpt2_tensors_to_gptlite,
    meta_model,
    parse_dtype,
    write_gptlite,
)
from .configs import from_openai_hparams, to_gpt2_config
from .download import OPENAI_SIZES, openai_checkpoint
from .names import rows
from .output import check_conversion_output
from .storage import ConversionError
from .tf_bundle import TensorBundle, TensorBundleError
from .verify import gpt2_from_tensors, verify_gptlite

__all__ = ["OpenAICheckpoint", "from_openai"]


class OpenAICheckpoint:
    """OpenAI's variables, served under Hugging Face GPT-2 names and layout (via the name table).

    OpenAI's Conv1D kernels are [1, in, out] (a width-1 convolution); Hugging Face dropped the leading 1.
    """

    def __init__(self, folder: Path, n_layers: int):
        try:
            self.bundle = TensorBundle.from_directory(folder)
        except TensorBundleError as err:
            raise ConversionError(str(err)) from None
        self._openai = {row.hf: row.openai for row in rows(n_layers, head=False)}

    def openai_name(self, hf_name: str) -> str:
        return self._openai[hf_name]

    def shapes(self) -> dict[str, tuple[int, ...] | None]:
        """Hugging Face name -> shape in Hugging Face's layout, or None where the variable is missing."""
        shapes = {}
        for hf_name, name in self._openai.items():
            shape = self.bundle.entries[name].shape if name in self.bundle.entries else None
            shapes[hf_name] = shape[1:] if shape and len(shape) == 3 and shape[0] == 1 else shape
        return shapes

    def get(self, hf_name: str) -> torch.Tensor:
        name = self._openai[hf_name]
        try:
            array = self.bundle.read(name)
        except TensorBundleError as err:
            raise ConversionError(str(err)) from None
        return torch.from_numpy(array.reshape(array.shape[1:]) if array.ndim == 3 else array)


def resolve_openai_source(src: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local release folder as is; a size name (124M, 355M, 774M, 1558M) is downloaded if needed."""
    path = Path(src)
    if path.is_dir():
        return path
    if str(src) in OPENAI_SIZES:
        return openai_checkpoint(str(src), cache_dir)
    raise FileNotFoundError(f"{src} is not a folder, nor one of OpenAI's sizes ({', '.join(OPENAI_SIZES)})")


def from_openai(
    src: str | Path,
    out: str | Path,
    dtype: str | torch.dtype | None = None,
    verify: bool = False,
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert OpenAI's GPT-2 checkpoint folder (as their download script writes it) to a gptlite folder.

    Args:
        src: folder with `checkpoint`, `hparams.json`, `model.ckpt.index` and `model.ckpt.data-*`
            (encoder.json / vocab.bpe are not needed: gptlite ships GPT-2's BPE files), or a size to
            download: `124M`, `355M`, `774M`, `1558M`.
        out: output folder.
        dtype: `float32` (default, as released), `float16` or `bfloat16`.
        verify: compare logits with transformers' GPT-2 holding the same arrays.
        cache_dir: where downloads are kept (default ~/.cache/gptlite).
        overwrite: replace a non-empty `out` that is not a previous gptlite output (see `output.py`).

    The folder appears whole or not at all: it is written beside `out`, verified, and swapped into place.

    Raises:
        FolderRefused: `out` is (or contains) the source, or holds something other than a gptlite model.
        ConversionError: for a malformed or corrupted checkpoint (CRC-32C), missing or misshapen variables,
            and a failed verification (`VerificationFailed`).
        FolderWriteError: the disk filled up (or a write failed); a previous `out` is left as it was.
    """
    out = check_conversion_output(out, "gptlite", inputs=[src], overwrite=overwrite)
    folder = resolve_openai_source(src, cache_dir)
    check_conversion_output(out, "gptlite", inputs=[folder], overwrite=overwrite)  # a downloaded release
    config = from_openai_hparams(folder / "hparams.json")
    checkpoint = OpenAICheckpoint(folder, config.n_layers)
    expected = expected_gpt2_shapes(meta_model(GPTLiteForCausalLM, config, torch.float32))
    hint = f"hparams.json ({config.n_layers} layers, n_embd {config.emb_dim}, n_vocab {config.vocab_size})"
    check_gpt2_source(checkpoint.shapes(), expected, checkpoint.bundle.prefix, hint, checkpoint.openai_name)

    out_dtype = parse_dtype(dtype, default=torch.float32)
    result = ConversionResult(out, config, out_dtype)
    with atomic_folder(out) as tmp:
        write_gptlite(tmp, config, out_dtype, gpt2_tensors_to_gptlite(config, checkpoint.get))
        if verify:

            pairs = ((name, checkpoint.get(name)) for name in expected)
            reference = gpt2_from_tensors(to_gpt2_config(config), pairs)
            result.max_logit_diff, result.tolerance = verify_gptlite(reference, tmp, out_dtype, out)
    return result
