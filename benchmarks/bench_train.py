"""Training throughput: gptlite against transformers' GPT2LMHeadModel, same shape, same batches, one process.

    python -m benchmarks.bench_train [--batch-sizes 2 8] [--rounds 4] [--no-end-to-end] [--matmul-bound]

Each side runs forward (labels= loss), backward, gradient clipping and a fused AdamW step at the book's
124M setting (context 256, dropout 0.1), gptlite's model built as gptlite-train builds it (fast dropout,
its attention, the fused GELU), in fp32 and, where the CPU multiplies bf16 natively, with bf16
autocast; the ratio compares each side's best. Then `gptlite-train`'s own loop (Accelerate, data loader,
scheduler, logging) runs the same model on the built-in corpus and reports its steady-state tokens/s
(the first step and evaluations excluded). MFU is against the matmul peak measured in this same run.

The steps of all sides alternate, round by round, and so do gptlite-train's steps with transformers' best
setting: a shared machine whose speed drifts slows both sides alike. Each figure is a median step; each
ratio also comes with its range over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from benchmarks.common import Measurement, gpt124m_pair, peak_memory, ratio_text, rotated
from gptlite.training.runtime import keep_freed_memory
from gptlite.training.throughput import cpu_has_native_bf16, measure_matmul_peak, model_flops_per_token

THEIRS = "transformers GPT2LMHeadModel"
# A square product and the 124M model's own training shapes: the peak is the best of them.
PEAK_SHAPES = ((2048, 2048, 2048), (2048, 768, 3072), (2048, 3072, 768), (2048, 768, 768))


def matmul_peak_flops(dtype: torch.dtype) -> float:
    return measure_matmul_peak("cpu", dtype, PEAK_SHAPES, repeats=10, warmup=3)


def make_step(model, precision: str):
    # Both sides get torch's fused AdamW (transformers' Trainer also defaults to it): the model is what differs.
    # (A gptlite model sped up for training computes this loss without logits: gptlite.speedups.)
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1, fused=True)
    autocast = precision == "bf16"
    device_type = next(model.parameters()).device.type

    def step(ids: torch.Tensor) -> float:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # also waits for a GPU to finish the step

    return step


def timed(step: Callable[[torch.Tensor], float], ids: torch.Tensor) -> float:
    start = time.perf_counter()
    step(ids)
    return time.perf_counter() - start


def measure_interleaved(
    sides: dict[str, tuple[torch.nn.Module, str]], batches: list[torch.Tensor], warmup: int
) -> tuple[list[Measurement], dict[str, list[float]]]:
    """One step of every side per round, in turn (the order rotates), on the same batches; then memory."""
    steps = {}
    for name, (model, precision) in sides.items():
        model.train()
        steps[name] = make_step(model, precision)
        for ids in batches[:warmup]:
            steps[name](ids)
    names = list(steps)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index, ids in enumerate(batches[warmup:]):
        for name in rotated(names, round_index):
            seconds[name].append(timed(steps[name], ids))
    measured = []
    for name in names:
        # Memory in one more step, untimed: the sampler takes malloc's locks and would slow the timed ones.
        with peak_memory() as memory:
            steps[name](batches[-1])
        # The median step: one step slowed by a neighbour on the machine does not move it.
        tokens_per_s = batches[0].numel() / statistics.median(seconds[name])
        measured.append(Measurement(name, tokens_per_s, memory["peak"] / 2**20))
    return measured, seconds


MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def operator_seconds(step: Callable[[torch.Tensor], float], ids: torch.Tensor) -> dict[str, float]:
    """One profiled step: the CPU time of each operator (compiled kernels included), in seconds."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(ids)
    seconds: dict[str, float] = {}
    for event in prof.key_averages():
        # A compiled kernel's name ends in its graph's hash: one name for all of them.
        name = "compiled kernels" if "CompiledFxGraph" in event.key else event.key
        seconds[name] = seconds.get(name, 0.0) + event.self_cpu_time_total / 1e6
    return seconds


def print_matmul_bound(ours: Callable, theirs: Callable, batches: list[torch.Tensor], rounds: int) -> None:
    """How far gptlite could go if all but its matrix multiplies took no time, against transformers' step.

    Also the operators that take the rest of gptlite's step, largest first.
    """
    bounds, shares, rest = [], [], {}
    for ids in batches[-rounds:]:
        ours_s, theirs_s = operator_seconds(ours, ids), operator_seconds(theirs, ids)
        ours_mm = sum(t for name, t in ours_s.items() if name in MATMULS)
        theirs_mm = sum(t for name, t in theirs_s.items() if name in MATMULS)
        bounds.append(sum(theirs_s.values()) / ours_mm)
        shares.append((ours_mm / sum(ours_s.values()), theirs_mm / sum(theirs_s.values())))
        for name, t in ours_s.items():
            if name not in MATMULS:
                rest.setdefault(name, []).append(t / sum(ours_s.values()))
    print(f"  matrix multiplies: {statistics.median(s for s, _ in shares):.0%} of a gptlite step, "
          f"{statistics.median(t for _, t in shares):.0%} of a transformers step; transformers' step / gptlite's "
          f"matrix multiplies alone = {statistics.median(bounds):.2f}x (rounds {min(bounds):.2f}-{max(bounds):.2f}x), "
          "the ratio if nothing else took time", flush=True)
    largest = sorted(rest.items(), key=lambda item: -statistics.median(item[1]))[:8]
    print("  the rest of a gptlite step, largest first: "
          + ", ".join(f"{name.removeprefix('aten::')} {statistics.median(s):.1%}" for name, s in largest), flush=True)


def end_to_end(
    precision: str, batches: list[torch.Tensor], rounds: int, their_step, **overrides
) -> tuple[Measurement, list, list]:
    """`gptlite-train` itself at the benchmark's shape, its steps alternating with steps of `their_step`.

    ``overrides`` are TrainConfig fields that replace the 124M shape's (e.g. a smaller model, ``compile``).

    gptlite-train's steady-state tokens/s is its own report. The other side's step runs between two of
    gptlite-train's steps, outside them: gptlite-train times a step from its start to its end.
    """
    from gptlite.training import loop, session
    from gptlite.training.config import TrainConfig
    from gptlite.training.monitoring import Progress

    batch_size, context_length = batches[0].shape
    ours, theirs = [], []
    pending = iter(batches * (rounds + 1))

    class Interleaved(Progress):
        def end_step(self, *args, **kwargs) -> None:
            ours.append(time.perf_counter() - self._started)
            super().end_step(*args, **kwargs)
            theirs.append(timed(their_step, next(pending)))

    with tempfile.TemporaryDirectory() as out:
        settings = dict(
            emb_dim=768, n_layers=12, n_heads=12, qkv_bias=True, tie_word_embeddings=True, drop_rate=0.1,
            context_length=context_length, batch_size=batch_size, max_steps=rounds + 1, eval_freq=10**9, eval_iter=1,
            mixed_precision="bf16" if precision == "bf16" else "no", output_dir=out, sample_tokens=1,
        )
        config = TrainConfig.from_flat({**settings, **overrides})
        original, session.Progress = session.Progress, Interleaved
        try:
            result = loop.train(config)
        finally:
            session.Progress = original
    # Both sides' first step pays for warm-up: gptlite-train excludes its own, and so does the ratio here.
    measurement = Measurement(f"gptlite-train {precision} b{batch_size}", result.tokens_per_second, float("nan"))
    return measurement, ours[1:], theirs[1:]


def as_trained(model):
    """A fresh gptlite of `model`'s shape as gptlite-train builds it, sped up for training (gptlite.speedups)."""
    from gptlite.training.config import TrainConfig
    from gptlite.training.runtime import build_model

    cfg = model.config
    config = TrainConfig.from_flat(dict(
        emb_dim=cfg.emb_dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, qkv_bias=cfg.qkv_bias,
        tie_word_embeddings=cfg.tie_word_embeddings, drop_rate=cfg.drop_rate, context_length=cfg.context_length))
    trained = build_model(config)
    assert sum(p.numel() for p in trained.parameters()) == sum(p.numel() for p in model.parameters())
    return trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--rounds", type=int, default=4, help="measured steps per side")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--context-length", type=int, default=256)
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the gptlite-train measurement")
    parser.add_argument("--matmul-bound", action="store_true",
                        help="profile the two best settings: the share of matrix multiplies, and the ratio they bound")
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
    ours = as_trained(ours)
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
            torch.randint(0, cfg.vocab_size, (batch_size, args.context_length))
            for _ in range(args.warmup + args.rounds)
        ]
        sides = {
            f"{side} {precision} b{batch_size}": (model, precision)
            for side, model in ((THEIRS, theirs), ("gptlite", ours))
            for precision in precisions
        }
        results, seconds = measure_interleaved(sides, batches, args.warmup)
        best = {}
        for m in results:
            mfu(m)
            side = "gptlite" if m.name.startswith("gptlite") else THEIRS
            if m.tokens_per_s > best.get(side, Measurement("", 0, 0)).tokens_per_s:
                best[side] = m
        print(f"batch {batch_size}: gptlite best / transformers best = "
              f"{ratio_text(seconds[best['gptlite'].name], seconds[best[THEIRS].name])} "
              f"({best['gptlite'].name} vs {best[THEIRS].name})", flush=True)
        if args.matmul_bound:
            _, our_precision = sides[best["gptlite"].name]
            _, their_precision = sides[best[THEIRS].name]
            print_matmul_bound(make_step(ours, our_precision), make_step(theirs, their_precision), batches, args.rounds)
        if not args.no_end_to_end:
            # transformers' best setting again, its steps alternating with gptlite-train's.
            _, precision = sides[best[THEIRS].name]
            their_step = make_step(theirs, precision)
            e2e, ours_s, theirs_s = end_to_end(precisions[-1], batches, args.rounds, their_step)
            mfu(e2e)
            print(f"batch {batch_size}: gptlite-train {precisions[-1]} / {best[THEIRS].name}, alternating steps = "
                  f"{ratio_text(ours_s, theirs_s)} ({batches[0].numel() / statistics.median(theirs_s):.1f} "
                  f"tok/s for transformers meanwhile)", flush=True)

    # The matmul peak of a shared 2-core VM moves with its neighbours (AMX units are shared by sibling
    # hyperthreads): measured again at the end, the higher figure is the fairer denominator.
    peak = max(peak, matmul_peak_flops(peak_dtype))
    print(f"\nMFU against the higher {str(peak_dtype)[6:]} matmul peak (start or end): {peak / 1e12:.3f} TFLOP/s")
    for m in measured:
        print(f"  {m.name:<44} MFU {m.tokens_per_s * flops_per_token / peak:.1%}")


if __name__ == "__main__":
    main()
