"""Past bf16: gptlite with torchao's int8 weight-only quantization against gptlite in bf16, greedy decoding.

    pip install torchao
    python -m benchmarks.bench_int8 [--new-tokens 100] [--rounds 3] [--compile]

int8 weights halve the bytes a decoding step reads again. torchao replaces each Linear's weight by an int8
tensor with per-channel scales; eager mode dequantizes on the fly, `--compile` lets inductor fuse that into the
product. Both sides generate the same prompt, calls alternating, figures are median calls; the tokens are
compared too (int8 rounding may change some).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from benchmarks.bench_generate import matched_pair
from benchmarks.common import ratio_text, rotated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the int8 model's forward")
    args = parser.parse_args()
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise SystemExit("this benchmark needs torchao: pip install torchao") from None
    import torchao

    print(f"torch {torch.__version__}, torchao {torchao.__version__}, {torch.get_num_threads()} threads")
    bf16, _ = matched_pair()
    bf16 = bf16.to(torch.bfloat16).eval()
    int8 = copy.deepcopy(bf16)
    quantize_(int8, Int8WeightOnlyConfig())
    if args.compile:
        int8.forward = torch.compile(int8.forward)
    sides = {"gptlite bf16": bf16, "gptlite int8 weight-only (torchao)": int8}
    prompt = torch.randint(0, 50257, (1, 8), generator=torch.Generator().manual_seed(0))
    options = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False}
    seconds, outputs = {name: [] for name in sides}, {}
    with torch.inference_mode():
        for model in sides.values():
            model.generate(prompt, **{**options, "max_new_tokens": 8, "min_new_tokens": 8})  # warm-up
        for round_index in range(args.rounds):
            for name in rotated(list(sides), round_index):
                start = time.perf_counter()
                outputs[name] = sides[name].generate(prompt, **options)
                seconds[name].append(time.perf_counter() - start)
    for name in sides:
        print(f"{name:<40} {args.new_tokens / statistics.median(seconds[name]):8.1f} tok/s")
    names = list(sides)
    same = (outputs[names[0]] == outputs[names[1]]).float().mean().item()
    print(f"int8 / bf16 = {ratio_text(seconds[names[1]], seconds[names[0]])}; {100 * same:.0f}% of tokens the same")


if __name__ == "__main__":
    main()
