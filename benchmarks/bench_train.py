"""Training throughput: gptlite against transformers' GPT2LMHeadModel, same shape, same batches, one process.

    python -m benchmarks.bench_train [--batch-sizes 2 8] [--steps 4] [--no-end-to-end]

Each side runs forward (labels= loss), backward, gradient clipping and a fused AdamW step at the book's
124M setting (context 256, dropout 0.1), in fp32 and, where the CPU multiplies bf16 natively, with bf16
autocast; the ratio compares each side's best. Then `gptlite-train`'s own loop (Accelerate, data loader,
scheduler, logging) runs the same model on the built-in corpus and reports its steady-state tokens/s
(the first step and evaluations excluded). MFU is against the matmul peak measured in this same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from benchmarks.common import Measurement, gpt124m_pair, peak_memory
from gptlite.training.loop import keep_freed_memory
from gptlite.training.throughput import cpu_has_native_bf16, measure_matmul_peak, model_flops_per_token

THEIRS = "transformers GPT2LMHeadModel"
# A square product and the 124M model's own training shapes: the peak is the best of them.
PEAK_SHAPES = ((2048, 2048, 2048), (2048, 768, 3072), (2048, 3072, 768), (2048, 768, 768))


def matmul_peak_flops(dtype: torch.dtype) -> float:
    return measure_matmul_peak("cpu", dtype, PEAK_SHAPES, repeats=10, warmup=3)


def make_step(model, precision: str, fused_loss: bool):
    # Both sides get torch's fused AdamW (transformers' Trainer also defaults to it): the model is what differs.
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1, fused=True)
    autocast = precision == "bf16"

    def step(ids: torch.Tensor) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if fused_loss:
                loss = model(ids, labels=ids, return_logits=False).loss
            else:
                loss = model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def measure(
    name: str, model, precision: str, batches: list[torch.Tensor], warmup: int, fused_loss=False
) -> Measurement:
    model.train()
    step = make_step(model, precision, fused_loss)
    for ids in batches[:warmup]:
        step(ids)
    seconds = []
    for ids in batches[warmup:]:
        start = time.perf_counter()
        step(ids)
        seconds.append(time.perf_counter() - start)
    # Memory in one more step, untimed: the sampler takes malloc's locks and would slow the timed ones.
    with peak_memory() as memory:
        step(batches[-1])
    # The median step: one step slowed by a neighbour on the machine does not move it.
    return Measurement(name, batches[0].numel() / statistics.median(seconds), memory["peak"] / 2**20)


def end_to_end(precision: str, batch_size: int, steps: int) -> Measurement:
    """`gptlite-train` itself at the benchmark's shape: its steady-state tokens/s (memory is not sampled)."""
    from gptlite.training.config import TrainConfig
    from gptlite.training.loop import train

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            emb_dim=768, n_layers=12, n_heads=12, qkv_bias=True, tie_word_embeddings=True, drop_rate=0.1,
            context_length=256, batch_size=batch_size, max_steps=steps + 1, eval_freq=10**9, eval_iter=1,
            mixed_precision="bf16" if precision == "bf16" else "no", output_dir=out, sample_tokens=1,
        )
        result = train(config)
    return Measurement(f"gptlite-train {precision} b{batch_size}", result.tokens_per_second, float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--steps", type=int, default=4, help="measured steps per configuration")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--context-length", type=int, default=256)
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the gptlite-train measurement")
    args = parser.parse_args()
    torch.manual_seed(0)
    keep_freed_memory(torch.device("cpu"))  # process-wide, so it helps both sides alike

    precisions = ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]
    peak_dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    peak = matmul_peak_flops(peak_dtype)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; {str(peak_dtype)[6:]} matmul peak {peak / 1e12:.3f} TFLOP/s"
    )
    if not cpu_has_native_bf16():
        print("no native bf16 on this CPU (no AVX512-BF16/AMX): bf16 is emulated and skipped; MFU is against fp32")
    ours, theirs = gpt124m_pair(args.context_length)
    cfg = ours.config
    flops_per_token = model_flops_per_token(ours, args.context_length)

    measured: list[Measurement] = []

    def mfu(m: Measurement) -> Measurement:
        m.extra = f"MFU {m.tokens_per_s * flops_per_token / peak:.1%} (of the peak at start)"
        print(m.row(), flush=True)
        measured.append(m)
        return m

    for batch_size in args.batch_sizes:
        batches = [
            torch.randint(0, cfg.vocab_size, (batch_size, args.context_length)) for _ in range(args.warmup + args.steps)
        ]
        best = {}
        for side, model in ((THEIRS, theirs), ("gptlite", ours)):
            for precision in precisions:
                m = mfu(measure(f"{side} {precision} b{batch_size}", model, precision, batches, args.warmup,
                                fused_loss=side == "gptlite"))
                if m.tokens_per_s > best.get(side, Measurement("", 0, 0)).tokens_per_s:
                    best[side] = m
        ratio = best["gptlite"].tokens_per_s / best[THEIRS].tokens_per_s
        print(f"batch {batch_size}: gptlite best / transformers best = {ratio:.2f}x "
              f"({best['gptlite'].name} vs {best[THEIRS].name})", flush=True)
        if not args.no_end_to_end:
            e2e = mfu(end_to_end(precisions[-1], batch_size, args.steps))
            print(f"batch {batch_size}: gptlite-train {precisions[-1]} / transformers best = "
                  f"{e2e.tokens_per_s / best[THEIRS].tokens_per_s:.2f}x", flush=True)

    # The matmul peak of a shared 2-core VM moves with its neighbours (AMX units are shared by sibling
    # hyperthreads): measured again at the end, the higher figure is the fairer denominator.
    peak = max(peak, matmul_peak_flops(peak_dtype))
    print(f"\nMFU against the higher {str(peak_dtype)[6:]} matmul peak (start or end): {peak / 1e12:.3f} TFLOP/s")
    for m in measured:
        print(f"  {m.name:<44} MFU {m.tokens_per_s * flops_per_token / peak:.1%}")


if __name__ == "__main__":
    main()
