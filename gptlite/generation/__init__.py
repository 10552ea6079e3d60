"""Text generation from a gptlite model: the library behind `gptlite-generate` (its command line is
:mod:`gptlite.generation.cli`) and training's samples."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, TextStreamer

from ..modeling_gptlite import GPTLiteForCausalLM
from ..tokenization import get_hf_tokenizer

__all__ = ["check_generation_options", "generate_text", "load_tokenizer"]


def load_tokenizer(model_name_or_path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The tokenizer saved beside a model, or gptlite's offline GPT-2 tokenizer when there is none."""
    if Path(model_name_or_path).is_dir() and not (Path(model_name_or_path) / "tokenizer_config.json").exists():
        return get_hf_tokenizer()
    try:
        return AutoTokenizer.from_pretrained(model_name_or_path)
    except OSError:
        # A Hub repo or folder without tokenizer files: gptlite models all speak GPT-2's BPE.
        return get_hf_tokenizer()


def check_generation_options(
    max_new_tokens: int, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> None:
    """Refuse values `generate` would misread (NaN temperature as greedy, top-k 0 as no top-k), naming the flag."""
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"--temperature must be a finite number >= 0 (0 decodes greedily), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"--top-k must be >= 1 when given (leave it out for no top-k), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1] (1 keeps every token), got {top_p}")


def generate_text(
    model: GPTLiteForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    max_new_tokens: int = 50,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stream: bool = False,
    notice: Callable[[str], None] | None = None,
) -> str:
    """Continue `prompt`: greedy when `temperature` is 0 (the book's default), else sampled.

    Returns the prompt followed by its continuation, stopping early at `<|endoftext|>`. An empty prompt
    starts from `<|endoftext|>`, as GPT-2 was trained to begin a document. A prompt that fills the model's
    context is refused; one that leaves less room than `max_new_tokens` gets the tokens that fit.
    `notice` (if given) is told, in one line, about the empty prompt and about fewer tokens than asked.

    Raises:
        ValueError: naming the flag, for out-of-range options, a prompt too long for the context, or token
            ids the model's vocabulary does not have.
    """
    check_generation_options(max_new_tokens, temperature, top_k, top_p)
    if seed is not None:
        torch.manual_seed(seed)
    if prompt:
        inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    else:
        start = model.config.bos_token_id if model.config.bos_token_id is not None else tokenizer.bos_token_id
        if start is None:
            raise ValueError("--prompt is empty and the model has no bos_token_id to start from")
        if notice:
            notice(f"the prompt is empty: starting from {tokenizer.decode([start])!r} (token {start}), as GPT-2 does")
        ids = torch.tensor([[start]], device=model.device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    n_prompt, context = inputs["input_ids"].shape[1], model.config.context_length
    if int(inputs["input_ids"].max()) >= model.config.vocab_size:
        raise ValueError(
            f"the prompt has token id {int(inputs['input_ids'].max())}, beyond the model's vocab_size of "
            f"{model.config.vocab_size}: the tokenizer does not belong to this model"
        )
    room = context - n_prompt
    if room < 1:
        raise ValueError(
            f"--prompt has {n_prompt} tokens, which leaves no room in the model's context_length of {context}; "
            f"shorten it to at most {context - 1} tokens"
        )
    if max_new_tokens > room and notice:
        notice(f"generating {room} new tokens, not {max_new_tokens}: the {n_prompt}-token prompt leaves room for "
               f"{room} in the model's context_length of {context}")
    sampling = temperature > 0
    options = {"do_sample": sampling, "max_new_tokens": min(max_new_tokens, room)}
    if sampling:
        # generation_config defaults (top_k=50) would silently apply; pass exactly what was asked.
        options.update(temperature=temperature, top_k=top_k or 0, top_p=top_p if top_p is not None else 1.0)
    streamer = TextStreamer(tokenizer, skip_prompt=False) if stream else None
    with torch.inference_mode():
        output = model.generate(**inputs, **options, streamer=streamer, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(output[0], skip_special_tokens=True)
