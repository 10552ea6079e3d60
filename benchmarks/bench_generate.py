"""Greedy generation throughput: gptlite's `generate` against GPT2LMHeadModel's, same shape, one process.

    python -m benchmarks.bench_generate [--new-tokens 200] [--batch-sizes 1 8]

Both sides run the same `model.generate(input_ids, max_new_tokens=N, do_sample=False)` call on the same
prompts at the book's 124M shape (context 1024 so that 200 new tokens fit), in fp32 and, where the CPU
multiplies bf16 natively, with bf16 weights.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import Measurement, gpt124m_pair, peak_memory
from gptlite.conversion.common import gpt2_tensors_to_gptlite
from gptlite.training.loop import keep_freed_memory
from gptlite.training.throughput import cpu_has_native_bf16


def measure(name: str, model, prompts: torch.Tensor, new_tokens: int) -> Measurement:
    model.eval()
    options = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        short = {**options, "max_new_tokens": 8, "min_new_tokens": 8}
        model.generate(prompts, **short)  # warm-up
        start = time.perf_counter()
        out = model.generate(prompts, **options)
        elapsed = time.perf_counter() - start
        # Memory in one more call, untimed: the sampler takes malloc's locks and would slow the timed one.
        with peak_memory() as memory:
            model.generate(prompts, **options)
    generated = (out.shape[1] - prompts.shape[1]) * prompts.shape[0]
    return Measurement(name, generated / elapsed, memory["peak"] / 2**20), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {torch.backends.cpu.get_cpu_capability()}"
    )
    keep_freed_memory(torch.device("cpu"))  # process-wide, so it helps both sides alike
    ours, theirs = gpt124m_pair(context_length=1024, drop_rate=0.0)
    # Same weights, so the two must also produce the same tokens: a cheap correctness check on the benchmark.
    theirs_sd = theirs.state_dict()
    converted = dict(gpt2_tensors_to_gptlite(ours.config, lambda name: theirs_sd[name]))
    ours.load_state_dict(converted, strict=False)
    dtypes = [torch.float32] + ([torch.bfloat16] if cpu_has_native_bf16() else [])
    for dtype in dtypes:
        ours.to(dtype)
        theirs.to(dtype)
        for batch_size in args.batch_sizes:
            torch.manual_seed(batch_size)
            prompts = torch.randint(0, 50257, (batch_size, args.prompt_tokens))
            results = {}
            for side, model in (("transformers GPT2LMHeadModel", theirs), ("gptlite", ours)):
                m, out = measure(f"{side} {str(dtype)[6:]} b{batch_size}", model, prompts, args.new_tokens)
                results[side] = (m, out)
                print(m.row(), flush=True)
            (mine, my_out), (base, base_out) = results["gptlite"], results["transformers GPT2LMHeadModel"]
            same = "identical tokens" if torch.equal(my_out, base_out) else "TOKENS DIFFER"
            print(
                f"{str(dtype)[6:]} batch {batch_size}: gptlite / transformers = "
                f"{mine.tokens_per_s / base.tokens_per_s:.2f}x ({same})",
                flush=True,
            )


if __name__ == "__main__":
    main()
