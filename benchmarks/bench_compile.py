"""torch.compile on CPU: gptlite-train's --compile step and static-cache greedy decoding, compiled over eager.

    python -m benchmarks.bench_compile [--rounds 8]

A small model (emb 256, 4 layers, 4 heads, context 128). Training: forward, backward and a fused AdamW step
on batches of 8, an eager and a compiled copy of the same weights (`nn.Module.compile`, what --compile does),
their steps alternating. Decoding: 64 greedy tokens from a 16-token prompt with a static cache, eager
against the forward transformers' generate compiles (inductor), alternating. Ratios are compiled speed over
eager speed (median of rounds, and the range over the rounds); compile time is excluded by warm-up rounds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformers.generation import CompileConfig

from benchmarks.bench_train import make_step, timed
from gptlite import GPTLiteConfig, GPTLiteForCausalLM
from gptlite.speedups import speed_up


def ratio(eager: list[float], compiled: list[float]) -> str:
    pairs = [e / c for e, c in zip(eager, compiled)]
    return f"{statistics.median(eager) / statistics.median(compiled):.2f}x (rounds {min(pairs):.2f}-{max(pairs):.2f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = GPTLiteConfig(vocab_size=50257, context_length=128, emb_dim=256, n_heads=4, n_layers=4, drop_rate=0.0)
    eager = speed_up(GPTLiteForCausalLM(config), training=True)  # the fused loss, as gptlite-train trains
    compiled = copy.deepcopy(eager)
    compiled.compile()
    batches = [torch.randint(0, 50257, (8, 128)) for _ in range(args.rounds + 2)]
    steps = {"eager": make_step(eager.train(), "fp32"), "compiled": make_step(compiled.train(), "fp32")}
    start = time.perf_counter()
    steps["compiled"](batches[0])
    print(f"training: first compiled step (compiles) {time.perf_counter() - start:.1f} s", flush=True)
    for name in steps:
        steps[name](batches[1])
    seconds = {"eager": [], "compiled": []}
    for i, ids in enumerate(batches[2:]):
        for name in (["eager", "compiled"] if i % 2 == 0 else ["compiled", "eager"]):
            seconds[name].append(timed(steps[name], ids))
    print(f"training step, compiled / eager speed: {ratio(seconds['eager'], seconds['compiled'])}; "
          f"eager median {statistics.median(seconds['eager']) * 1e3:.0f} ms", flush=True)

    model = eager.eval()
    prompt = torch.randint(0, 50257, (1, 16))
    kwargs = {"max_new_tokens": 64, "do_sample": False, "eos_token_id": None, "pad_token_id": 0,
              "cache_implementation": "static"}
    compile_config = CompileConfig(fullgraph=True)
    compile_config._compile_all_devices = True  # generate compiles on CUDA only unless told to
    sides = {"eager": {"disable_compile": True}, "compiled": {"compile_config": compile_config}}
    outputs = {}
    with torch.no_grad():
        start = time.perf_counter()
        outputs["compiled"] = model.generate(prompt, **kwargs, **sides["compiled"])
        print(f"decoding: first compiled generate (compiles) {time.perf_counter() - start:.1f} s", flush=True)
        outputs["eager"] = model.generate(prompt, **kwargs, **sides["eager"])
        assert torch.equal(outputs["eager"], outputs["compiled"]), "compiled tokens differ from eager"
        seconds = {"eager": [], "compiled": []}
        for i in range(args.rounds):
            for name in (["eager", "compiled"] if i % 2 == 0 else ["compiled", "eager"]):
                start = time.perf_counter()
                model.generate(prompt, **kwargs, **sides[name])
                seconds[name].append(time.perf_counter() - start)
    print(f"static-cache greedy decoding, compiled / eager speed: {ratio(seconds['eager'], seconds['compiled'])}; "
          f"eager median {64 / statistics.median(seconds['eager']):.0f} tok/s", flush=True)


if __name__ == "__main__":
    main()
