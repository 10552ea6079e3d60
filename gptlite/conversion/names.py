"""The one table of parameter names that every conversion direction reads.

Each row pairs gptlite's (the book's) parameter name(s) with the GPT-2 parameter they come from, as
Hugging Face's `GPT2LMHeadModel` and OpenAI's TensorFlow release name it. `{}` stands for the block
index. Two layouts differ from a copy:
- `transpose`: GPT-2 stores projections as `Conv1D` weights, (in, out); `nn.Linear` wants (out, in).
- three gptlite names: GPT-2 fuses query, key and value into one `c_attn` projection whose output
  dimension is [q | k | v]; gptlite has three separate projections.

The gptlite names are the book's `GPTModel` names. Inside `GPTLiteForCausalLM` the trunk sits under `model.`
(`GPTLiteModel`) and only `out_head` is at the top (saved as `lm_head.weight` when untied): `state_dict_name`,
`file_name` and `book_name` translate at that one boundary, so the book's files, older gptlite folders (trunk at the
top, head as `out_head.weight`) and new ones all read through this table.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..modeling_gptlite import HEAD_IN_FILES

__all__ = [
    "TABLE", "Row", "book_name", "file_name", "from_gptlite_layout", "rows", "state_dict_name", "to_gptlite_layout"
]

# Where GPTLiteForCausalLM keeps GPTLiteModel (its `base_model_prefix`).
_TRUNK_PREFIX = "model."


def state_dict_name(name: str) -> str:
    """The book's (the table's) name -> its name in `GPTLiteForCausalLM.state_dict()`."""
    if name.startswith("out_head.") or name.startswith(_TRUNK_PREFIX):
        return name
    return _TRUNK_PREFIX + name


def book_name(name: str) -> str:
    """A `GPTLiteForCausalLM` state-dict or file name (or an older gptlite folder's) -> the book's name."""
    if name == HEAD_IN_FILES:
        return "out_head.weight"
    return name.removeprefix(_TRUNK_PREFIX)


def file_name(name: str) -> str:
    """A `GPTLiteForCausalLM` state-dict name -> its name in a saved file (the untied head is `lm_head.weight`)."""
    return HEAD_IN_FILES if name == "out_head.weight" else name


@dataclass(frozen=True)
class Row:
    """One GPT-2 tensor and the gptlite tensor(s) it becomes."""

    hf: str  # GPT2LMHeadModel's state-dict name
    openai: str | None  # the variable in OpenAI's checkpoint; None where OpenAI has no tensor
    gptlite: str | tuple[str, ...]  # one name, or query/key/value for the fused c_attn

    def __post_init__(self) -> None:
        if isinstance(self.gptlite, str):
            object.__setattr__(self, "gptlite", (self.gptlite,))

    @property
    def transpose(self) -> bool:
        """GPT-2's Conv1D projections (c_attn, c_proj, c_fc) store weights as (in, out)."""
        return ".c_" in self.hf and self.hf.endswith(".weight")

    def format(self, layer: int) -> Row:
        """The row with `{}` replaced by a block index."""
        openai = None if self.openai is None else self.openai.format(layer)
        return Row(self.hf.format(layer), openai, tuple(name.format(layer) for name in self.gptlite))


_QKV = ("trf_blocks.{}.att.W_query", "trf_blocks.{}.att.W_key", "trf_blocks.{}.att.W_value")

TABLE: tuple[Row, ...] = (
    #   Hugging Face GPT-2                    OpenAI                     gptlite
    Row("transformer.wte.weight",             "model/wte",               "tok_emb.weight"),
    Row("transformer.wpe.weight",             "model/wpe",               "pos_emb.weight"),
    Row("transformer.h.{}.ln_1.weight",       "model/h{}/ln_1/g",        "trf_blocks.{}.norm1.scale"),
    Row("transformer.h.{}.ln_1.bias",         "model/h{}/ln_1/b",        "trf_blocks.{}.norm1.shift"),
    Row("transformer.h.{}.attn.c_attn.weight", "model/h{}/attn/c_attn/w", tuple(f"{n}.weight" for n in _QKV)),
    Row("transformer.h.{}.attn.c_attn.bias",  "model/h{}/attn/c_attn/b", tuple(f"{n}.bias" for n in _QKV)),
    Row("transformer.h.{}.attn.c_proj.weight", "model/h{}/attn/c_proj/w", "trf_blocks.{}.att.out_proj.weight"),  # noqa: E501
    Row("transformer.h.{}.attn.c_proj.bias",  "model/h{}/attn/c_proj/b", "trf_blocks.{}.att.out_proj.bias"),
    Row("transformer.h.{}.ln_2.weight",       "model/h{}/ln_2/g",        "trf_blocks.{}.norm2.scale"),
    Row("transformer.h.{}.ln_2.bias",         "model/h{}/ln_2/b",        "trf_blocks.{}.norm2.shift"),
    Row("transformer.h.{}.mlp.c_fc.weight",   "model/h{}/mlp/c_fc/w",    "trf_blocks.{}.ff.layers.0.weight"),
    Row("transformer.h.{}.mlp.c_fc.bias",     "model/h{}/mlp/c_fc/b",    "trf_blocks.{}.ff.layers.0.bias"),
    Row("transformer.h.{}.mlp.c_proj.weight", "model/h{}/mlp/c_proj/w",  "trf_blocks.{}.ff.layers.2.weight"),
    Row("transformer.h.{}.mlp.c_proj.bias",   "model/h{}/mlp/c_proj/b",  "trf_blocks.{}.ff.layers.2.bias"),
    Row("transformer.ln_f.weight",            "model/ln_f/g",            "final_norm.scale"),
    Row("transformer.ln_f.bias",              "model/ln_f/b",            "final_norm.shift"),
    # OpenAI's GPT-2 always ties the output head to wte, so it has no variable of its own.
    Row("lm_head.weight",                     None,                      "out_head.weight"),
)


def rows(n_layers: int, *, head: bool) -> Iterator[Row]:
    """The table for a model with `n_layers` blocks, in state-dict order.

    Args:
        n_layers: number of transformer blocks; rows with `{}` are repeated for each.
        head: include `out_head.weight` (False when the head is tied to the token embedding).
    """
    for row in TABLE:
        if row.hf == "lm_head.weight" and not head:
            continue
        if "{}" in row.hf:
            yield from (row.format(i) for i in range(n_layers))
        else:
            yield row


def to_gptlite_layout(row: Row, tensor: torch.Tensor) -> list[torch.Tensor]:
    """GPT-2 tensor (Hugging Face's layout) -> gptlite tensor(s), contiguous, in `row.gptlite` order."""
    if row.transpose:
        tensor = tensor.t()  # Conv1D (in, out) -> Linear (out, in)
    # After the transpose the fused output dimension [q | k | v] is dim 0 for weights and biases alike.
    parts = tensor.chunk(len(row.gptlite), dim=0) if len(row.gptlite) > 1 else (tensor,)
    return [part.contiguous() for part in parts]


def from_gptlite_layout(row: Row, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """gptlite tensor(s) in `row.gptlite` order -> the GPT-2 tensor in Hugging Face's layout, contiguous."""
    tensor = torch.cat(list(tensors), dim=0) if len(tensors) > 1 else tensors[0]  # (3·e, e) for q/k/v
    if row.transpose:
        tensor = tensor.t()
    return tensor.contiguous()
