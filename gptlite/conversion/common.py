"""What the three importers share: checking a GPT-2 checkpoint against the table and writing gptlite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PretrainedConfig, PreTrainedModel

from ..configuration_gptlite import GPTLiteConfig
from ..modeling_gptlite import GPTLiteForCausalLM
from ..tokenization import save_tokenizer
from .names import book_name, file_name, from_gptlite_layout, rows, state_dict_name, to_gptlite_layout
from .storage import ConversionError, FlagError, RenamedSource, TensorSource, write_safetensors

__all__ = [
    "ConversionResult",
    "book_named",
    "check_gptlite_source",
    "check_gpt2_source",
    "gpt2_tensors_to_gptlite",
    "expected_gpt2_shapes",
    "meta_model",
    "parse_dtype",
    "save_streaming",
    "write_gptlite",
]

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
DTYPE_CHOICES = ("float32", "float16", "bfloat16")


@dataclass
class ConversionResult:
    """What a conversion wrote.

    Attributes:
        out_dir: the folder `from_pretrained` loads.
        config: the written model's config (`GPTLiteConfig`, or `GPT2Config` for `to_hf`).
        dtype: dtype of the written weights.
        max_logit_diff: with `verify=True`, the largest |logit difference| between source and result.
        tolerance: with `verify=True`, the largest difference accepted for `dtype` (see `verify.py`).
    """

    out_dir: Path
    config: PretrainedConfig
    dtype: torch.dtype
    max_logit_diff: float | None = None
    tolerance: float | None = None


def parse_dtype(dtype: str | torch.dtype | None, default: torch.dtype, flag: str = "--dtype") -> torch.dtype:
    """`None` -> `default`; a torch dtype or one of float32/float16/bfloat16 (or fp32/fp16/bf16)."""
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise FlagError(f"{flag}: unsupported dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}")


def meta_model(
    model_class: type[PreTrainedModel], config: PretrainedConfig, dtype: torch.dtype
) -> PreTrainedModel:
    """The model built on the meta device: names, shapes and tying, but no memory."""
    with torch.device("meta"):
        model = model_class(config)
    return model.to(dtype)


def expected_gpt2_shapes(model: GPTLiteForCausalLM) -> dict[str, tuple[int, ...]]:
    """GPT-2 (Hugging Face layout) name -> shape that a checkpoint for this gptlite model must have."""
    params = {book_name(name): tensor for name, tensor in model.state_dict().items()}
    return {
        row.hf: tuple(from_gptlite_layout(row, [params[name] for name in row.gptlite]).shape)
        for row in rows(model.config.n_layers, head=not model.config.tie_word_embeddings)
    }


def gpt2_tensors_to_gptlite(
    config: GPTLiteConfig, get_gpt2: Callable[[str], torch.Tensor]
) -> Iterator[tuple[str, torch.Tensor]]:
    """gptlite (name, tensor) pairs, converted one GPT-2 tensor at a time.

    `get_gpt2(hf_name)` returns a tensor in Hugging Face's GPT-2 layout (Conv1D weights (in, out)).
    """
    for row in rows(config.n_layers, head=not config.tie_word_embeddings):
        yield from zip(row.gptlite, to_gptlite_layout(row, get_gpt2(row.hf)))


def save_streaming(
    model: PreTrainedModel,
    out_dir: Path,
    tensors: Iterator[tuple[str, torch.Tensor]],
    name_in_file: Callable[[str], str] = str,
) -> None:
    """`save_pretrained`'s folder for a meta-device `model`, with weights streamed into model.safetensors.

    `save_pretrained` writes config.json, generation_config.json and (for gptlite) the remote-code files;
    the weights go to the same single `model.safetensors` it would write, under the names `name_in_file` gives the
    state-dict names (as its save_pretrained does): a tied parameter is stored once, under its first name.
    """
    specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:  # tied parameters are one object
            seen.add(id(tensor))
            specs[name_in_file(name)] = (tuple(tensor.shape), tensor.dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, state_dict={})
    write_safetensors(out_dir / "model.safetensors", specs, tensors, metadata={"format": "pt"})


def write_gptlite(
    out_dir: str | Path,
    config: GPTLiteConfig,
    dtype: torch.dtype,
    tensors: Iterator[tuple[str, torch.Tensor]],
) -> Path:
    """Write a complete gptlite folder: weights, config, remote code and the GPT-2 tokenizer files."""

    out_dir = Path(out_dir)
    named = ((file_name(state_dict_name(name)), tensor) for name, tensor in tensors)  # the trunk under `model.`
    save_streaming(meta_model(GPTLiteForCausalLM, config, dtype), out_dir, named, file_name)
    save_tokenizer(out_dir, model_max_length=config.context_length)
    return out_dir


def check_gpt2_source(
    found: dict[str, tuple[int, ...] | None],
    expected: dict[str, tuple[int, ...]],
    where: Path | Callable[[str], Path],
    hint: str,
    label: Callable[[str], str] = str,
) -> None:
    """Every expected GPT-2 tensor present with its shape (Hugging Face layout).

    `found[name]` is None (or absent) when the tensor is missing; `label(name)` is how the source names it,
    and `where(name)` the file that holds it (or `where` itself for a one-file source).
    """
    file_of = where if callable(where) else lambda name: where
    for name, shape in expected.items():
        actual = found.get(name)
        if actual is None:
            raise ConversionError(f"{file_of(name)}: tensor {label(name)} is missing")
        if tuple(actual) != shape:
            raise ConversionError(
                f"{file_of(name)}: tensor {label(name)} has shape {list(actual)}, but {hint} needs {list(shape)}"
            )


def book_named(source: TensorSource) -> TensorSource:
    """A gptlite folder's or model's tensors under the book's names, whether its trunk is under `model.` or not."""
    return RenamedSource(source, book_name)


def check_gptlite_source(
    config: GPTLiteConfig,
    source: TensorSource,
    described_by: str,
    hint: Callable[[str], str] = lambda name: "",
    extra_reason: str = "",
) -> list[str]:
    """Every tensor of the gptlite model `config` describes, with its shape, and nothing else.

    Names are the book's (the table's): a gptlite folder's source is read through `book_named`.

    Returns the names to read. The book's `att.mask` buffers are ignored (gptlite builds masks on the
    fly), and so is a saved copy of a tied head. `hint(name)` may add advice to an error about `name`;
    `extra_reason` ends the error about an unexpected tensor.
    """
    with torch.device("meta"):  # names and shapes, no memory
        model = GPTLiteForCausalLM(config)
    expected = {book_name(name): tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name for name in source.names() if not name.endswith(".att.mask")}
    in_file = getattr(source, "file_name", lambda name: name)  # messages name the tensor as the file does
    if config.tie_word_embeddings:
        expected.pop("out_head.weight")
        found.discard("out_head.weight")
    for name, shape in expected.items():
        if name not in found:
            raise ConversionError(f"{source.path}: tensor {name} is missing{hint(name)}")
        if source.shape(name) != shape:
            raise ConversionError(
                f"{source.file_of(name)}: tensor {in_file(name)} has shape {list(source.shape(name))}, "
                f"but {described_by} needs {list(shape)}"
            )
    extra = sorted(found - set(expected))
    if extra:
        raise ConversionError(
            f"{source.file_of(extra[0])}: tensor {in_file(extra[0])} is not part of the model {described_by} describes"
            f"{hint(extra[0])} ({len(extra)} unexpected tensors){extra_reason}"
        )
    return list(expected)
