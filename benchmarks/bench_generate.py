"""Greedy generation throughput: gptlite's `generate` against GPT2LMHeadModel's, same shape, one process.

    python -m benchmarks.bench_generate [--new-tokens 200] [--batch-sizes 1 8] [--rounds 3]

Both sides run the same `model.generate(input_ids, max_new_tokens=N, do_sample=False)` call on the same
prompts at the book's 124M shape (context 1024 so that 200 new tokens fit), in fp32 and, where the CPU
multiplies bf16 natively, with bf16 weights. The two sides' calls alternate, `--rounds` times each, and
each figure is the median call: a shared machine whose speed drifts slows both sides alike.

At batch 1 decoding is bound by reading every weight once per token. Between the generate calls the same run
times one pass over exactly those bytes (a sum over each weight matrix, bias and LayerNorm tensor), and prints
each side's tokens/s as a share of that weight-read bound.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import Measurement, gpt_pair, peak_memory, ratio_text, rotated
from gptlite.conversion.common import gpt2_tensors_to_gptlite
from gptlite.speedups import speed_up
from gptlite.speedups.decoding import packed_weight_bytes
from gptlite.training.runtime import keep_freed_memory
from gptlite.training.throughput import cpu_has_native_bf16

THEIRS = "transformers GPT2LMHeadModel"


def decode_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors one decoding step reads in full: every Linear's and LayerNorm's parameters, each once.

    The token embedding counts only as the tied output head (a step reads one row of it otherwise), and the
    position embedding not at all.
    """
    seen, tensors = set(), []
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) or list(module.children()):
            continue
        for param in module.parameters(recurse=False):
            if param.data_ptr() not in seen:
                seen.add(param.data_ptr())
                tensors.append(param.detach())
    return tensors


def weight_read_seconds(tensors: list[torch.Tensor]) -> float:
    """One timed pass over the bytes of `tensors`, read as float32 (torch's fastest streaming reduction)."""
    views = [t.view(torch.float32) if t.dtype == torch.bfloat16 and t.shape[-1] % 2 == 0 else t for t in tensors]
    start = time.perf_counter()
    for view in views:
        view.sum()
    return time.perf_counter() - start


def measure_interleaved(
    sides: dict[str, torch.nn.Module], prompts: torch.Tensor, new_tokens: int, rounds: int
) -> tuple[list[Measurement], dict[str, torch.Tensor], dict[str, list[float]]]:
    """`rounds` timed generate calls per side, alternating (the order rotates), each followed by timed passes
    over the weights (under the key "weight read"); then memory, untimed."""
    options = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}
    short = {**options, "max_new_tokens": 8, "min_new_tokens": 8}
    names = list(sides)
    outputs, seconds = {}, {name: [] for name in names}
    weights = decode_weights(next(iter(sides.values())))
    reads = []
    with torch.inference_mode():
        for model in sides.values():
            model.eval()
            model.generate(prompts, **short)  # warm-up
        for round_index in range(rounds):
            for name in rotated(names, round_index):
                start = time.perf_counter()
                outputs[name] = sides[name].generate(prompts, **options)
                if prompts.is_cuda:
                    torch.cuda.synchronize()
                seconds[name].append(time.perf_counter() - start)
                reads.extend(weight_read_seconds(weights) for _ in range(3))
        measured = []
        for name in names:
            # Memory in one more call, untimed: the sampler takes malloc's locks and would slow the timed one.
            with peak_memory() as memory:
                sides[name].generate(prompts, **options)
            generated = (outputs[name].shape[1] - prompts.shape[1]) * prompts.shape[0]
            measured.append(Measurement(name, generated / statistics.median(seconds[name]), memory["peak"] / 2**20))
    seconds["weight read"] = reads
    return measured, outputs, seconds


def matched_pair(context_length: int = 1024, **shape):
    """gptlite and GPT2LMHeadModel, 124M unless ``shape`` says otherwise (context 1024: 200 new tokens fit),
    with the same weights."""
    ours, theirs = gpt_pair(context_length=context_length, drop_rate=0.0, **shape)
    # Same weights, so the two must also produce the same tokens: a cheap correctness check on the benchmark.
    theirs_sd = theirs.state_dict()
    converted = dict(gpt2_tensors_to_gptlite(ours.config, lambda name: theirs_sd[name]))
    ours.load_state_dict(converted, strict=False)
    return speed_up(ours), theirs  # as gptlite-generate decodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3, help="timed generate calls per side")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {torch.backends.cpu.get_cpu_capability()}"
    )
    keep_freed_memory(torch.device("cpu"))  # process-wide, so it helps both sides alike
    ours, theirs = matched_pair()
    dtypes = [torch.float32] + ([torch.bfloat16] if cpu_has_native_bf16() else [])
    for dtype in dtypes:
        ours.to(dtype)
        theirs.to(dtype)
        for batch_size in args.batch_sizes:
            torch.manual_seed(batch_size)
            prompts = torch.randint(0, 50257, (batch_size, args.prompt_tokens))
            theirs_name, ours_name = (f"{side} {str(dtype)[6:]} b{batch_size}" for side in (THEIRS, "gptlite"))
            measured, outputs, seconds = measure_interleaved(
                {theirs_name: theirs, ours_name: ours}, prompts, args.new_tokens, args.rounds
            )
            for m in measured:
                print(m.row(), flush=True)
            if batch_size == 1:
                bound = 1 / statistics.median(seconds["weight read"])  # tokens/s if a step only read the weights
                shares = ", ".join(f"{m.name.split()[0]} {100 * m.tokens_per_s / bound:.0f}%" for m in measured)
                print(f"{str(dtype)[6:]} batch 1 weight-read bound: {bound:.1f} tokens/s; reached: {shares}")
            print(f"gptlite's weights packed for decoding: {packed_weight_bytes() / 2**20:.0f} MB beside the model")
            same = "identical tokens" if torch.equal(outputs[ours_name], outputs[theirs_name]) else "TOKENS DIFFER"
            print(
                f"{str(dtype)[6:]} batch {batch_size}: gptlite / transformers = "
                f"{ratio_text(seconds[ours_name], seconds[theirs_name])}, {same}",
                flush=True,
            )


if __name__ == "__main__":
    main()
