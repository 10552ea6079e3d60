"""Text generation from a saved gptlite model: the `gptlite-generate` command and its Python twin."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, TextStreamer

from .modeling_gptlite import GPTLiteForCausalLM
from .tokenization import get_hf_tokenizer


def load_tokenizer(model_name_or_path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The tokenizer saved beside a model, or gptlite's offline GPT-2 tokenizer when there is none."""
    if Path(model_name_or_path).is_dir() and not (Path(model_name_or_path) / "tokenizer_config.json").exists():
        return get_hf_tokenizer()
    try:
        return AutoTokenizer.from_pretrained(model_name_or_path)
    except OSError:
        # A Hub repo or folder without tokenizer files: gptlite models all speak GPT-2's BPE.
        return get_hf_tokenizer()


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
) -> str:
    """Continue `prompt`: greedy when `temperature` is 0 (the book's default), else sampled.

    Returns the prompt followed by its continuation, stopping early at `<|endoftext|>`.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if seed is not None:
        torch.manual_seed(seed)
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    room = model.config.context_length - inputs["input_ids"].shape[1]
    if room < 1:
        raise ValueError(
            f"the prompt has {inputs['input_ids'].shape[1]} tokens, which leaves no room in the model's "
            f"context_length of {model.config.context_length}"
        )
    sampling = temperature > 0
    options = {"do_sample": sampling, "max_new_tokens": min(max_new_tokens, room)}
    if sampling:
        # generation_config defaults (top_k=50) would silently apply; pass exactly what was asked.
        options.update(temperature=temperature, top_k=top_k or 0, top_p=top_p if top_p is not None else 1.0)
    streamer = TextStreamer(tokenizer, skip_prompt=False) if stream else None
    with torch.inference_mode():
        output = model.generate(**inputs, **options, streamer=streamer, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(output[0], skip_special_tokens=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptlite-generate", description=generate_text.__doc__)
    parser.add_argument("model", help="a folder written by save_pretrained / gptlite-train, or a Hub id")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    parser.add_argument("--top-k", type=int, default=None, help="sample only among the k likeliest tokens")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if (args.top_k is not None or args.top_p is not None) and args.temperature == 0:
        build_parser().error("--top-k/--top-p only apply when sampling: also pass --temperature > 0")
    model = GPTLiteForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(args.device)
    tokenizer = load_tokenizer(args.model)
    text = generate_text(
        model,
        tokenizer,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stream=args.stream,
    )
    if not args.stream:
        print(text)


if __name__ == "__main__":
    main()
