"""The GPU benchmark, one run of under 8 minutes on one H100/H200: the CUDA tests, training, decoding, FSDP2.

    python -m benchmarks.gpu              # on a CUDA machine
    python -m benchmarks.gpu --dry-run    # on CPU, tiny sizes, about a minute: keeps this script working
                                          # (tests/benchmarks/test_gpu_dry_run.py runs it)

1. ``pytest -m cuda``: the tests marked ``cuda`` (tests/test_cuda.py), which skip on machines without a GPU.
2. Training at 124M, context 1024, bf16 autocast, batch 16: gptlite eager and ``torch.compile(model)``
   against transformers' GPT2LMHeadModel eager and compiled, their steps alternating (bench_train's
   rounds); tokens/s, MFU against the GPU's datasheet bf16 peak, and gptlite's best over transformers'
   best. Then ``gptlite-train`` itself, eager and with ``--compile``, its steps alternating with
   transformers' best.
3. Greedy decoding, 200 new tokens, batch 1 and 8, bf16 (and fp32 batch 1, where the tokens must equal
   transformers'): gptlite's ``generate`` against GPT2LMHeadModel's, alternating (bench_generate's rounds).
4. FSDP2 through an accelerate config file (``distributed_type: FSDP``, ``fsdp_version: 2``) on every
   visible GPU, against the same run without FSDP on one: the step losses must agree. On CPU accelerate
   cannot shard (it would run DDP), so the dry run checks that gptlite refuses the config instead.

Status: prepared, unmeasured. It was written in a session without a GPU; only ``--dry-run`` has run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import bench_generate, bench_train
from benchmarks.common import gpt_pair, ratio_text
from gptlite.speedups import speed_up
from gptlite.training.throughput import device_peak_flops, model_flops_per_token

THEIRS = "transformers GPT2LMHeadModel"
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Sizes:
    """What one run measures: the real one, or the dry run's tiny version."""

    emb_dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    context_length: int = 1024
    batch_size: int = 16
    warmup: int = 3  # compilation happens in the warm-up steps
    rounds: int = 10
    new_tokens: int = 200
    decode_rounds: int = 3
    compile_backend: str = "inductor"

    @classmethod
    def dry_run(cls) -> Sizes:
        # backend "eager": dynamo traces the model (the torch.compile path) without inductor's minute of codegen.
        return cls(emb_dim=64, n_layers=2, n_heads=2, context_length=64, batch_size=2, warmup=1, rounds=2,
                   new_tokens=8, decode_rounds=1, compile_backend="eager")

    @property
    def shape(self) -> dict:
        return {"emb_dim": self.emb_dim, "n_layers": self.n_layers, "n_heads": self.n_heads}


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_cuda_tests() -> bool:
    section("CUDA-marked tests (pytest -m cuda)")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"],
                          cwd=REPO)
    # 5: no test collected. Without a GPU every cuda test is skipped, which pytest reports as success.
    print(f"pytest exit status {done.returncode}", flush=True)
    return done.returncode == 0


def measure_training(sizes: Sizes, device: torch.device) -> None:
    section(f"training: bf16 autocast, context {sizes.context_length}, batch {sizes.batch_size}, "
            f"{sizes.rounds} alternating rounds")
    ours, theirs = gpt_pair(sizes.context_length, drop_rate=0.0, **sizes.shape)
    ours = speed_up(ours.to(device), training=True)  # as gptlite-train trains: the fused loss
    theirs.to(device)
    compiled = {name: torch.compile(model, backend=sizes.compile_backend) for name, model in
                (("gptlite", ours), (THEIRS, theirs))}
    sides = {
        f"{THEIRS} eager": (theirs, "bf16"),
        f"{THEIRS} torch.compile": (compiled[THEIRS], "bf16"),
        "gptlite eager": (ours, "bf16"),
        "gptlite torch.compile": (compiled["gptlite"], "bf16"),
    }
    vocab = ours.config.vocab_size
    batches = [torch.randint(0, vocab, (sizes.batch_size, sizes.context_length), device=device)
               for _ in range(sizes.warmup + sizes.rounds)]
    measured, seconds = bench_train.measure_interleaved(sides, batches, sizes.warmup)
    peak, peak_source = device_peak_flops(device, "bf16")
    flops_per_token = model_flops_per_token(ours, sizes.context_length)
    print(f"MFU against {peak / 1e12:.0f} TFLOP/s ({peak_source}); {flops_per_token / 1e9:.2f} GFLOP per token")
    for m in measured:
        print(f"  {m.name:<44} {m.tokens_per_s:>12,.0f} tok/s   MFU {m.tokens_per_s * flops_per_token / peak:6.1%}")
    best = {side: max((m for m in measured if m.name.startswith(side)), key=lambda m: m.tokens_per_s)
            for side in ("gptlite", THEIRS)}
    print(f"gptlite best / transformers best = {ratio_text(seconds[best['gptlite'].name], seconds[best[THEIRS].name])}"
          f" ({best['gptlite'].name} vs {best[THEIRS].name})", flush=True)

    # gptlite-train itself, alternating with transformers' best setting.
    their_step = bench_train.make_step(sides[best[THEIRS].name][0], "bf16")
    variants = {"eager": {}, "--compile": {"compile": True}}
    for label, overrides in variants.items():
        e2e, ours_s, theirs_s = bench_train.end_to_end("bf16", batches, sizes.rounds, their_step,
                                                       **sizes.shape, **overrides)
        print(f"  gptlite-train {label:<30} {e2e.tokens_per_s:>12,.0f} tok/s   "
              f"MFU {e2e.tokens_per_s * flops_per_token / peak:6.1%}; / {best[THEIRS].name}, alternating = "
              f"{ratio_text(ours_s, theirs_s)}", flush=True)


def measure_decoding(sizes: Sizes, device: torch.device) -> None:
    section(f"greedy decoding: {sizes.new_tokens} new tokens, generate(), alternating calls")
    ours, theirs = bench_generate.matched_pair(context_length=1024, **sizes.shape)
    ours.to(device)
    theirs.to(device)
    for dtype, batch_sizes in ((torch.bfloat16, (1, 8)), (torch.float32, (1,))):
        ours.to(dtype)
        theirs.to(dtype)
        for batch_size in batch_sizes:
            prompts = torch.randint(0, 50257, (batch_size, 8), generator=torch.Generator().manual_seed(batch_size))
            prompts = prompts.to(device)
            names = [f"{side} {str(dtype)[6:]} b{batch_size}" for side in (THEIRS, "gptlite")]
            measured, outputs, seconds = bench_generate.measure_interleaved(
                dict(zip(names, (theirs, ours))), prompts, sizes.new_tokens, sizes.decode_rounds)
            for m in measured:
                print(f"  {m.name:<44} {m.tokens_per_s:>10,.1f} tok/s", flush=True)
            same = "identical tokens" if torch.equal(outputs[names[0]], outputs[names[1]]) else "tokens differ"
            print(f"{str(dtype)[6:]} batch {batch_size}: gptlite / transformers = "
                  f"{ratio_text(seconds[names[1]], seconds[names[0]])}, {same}", flush=True)


FSDP2_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: {num_processes}
mixed_precision: bf16
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: TransformerBlock
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_reshard_after_forward: true
  fsdp_cpu_ram_efficient_loading: false
"""


def check_fsdp2(dry_run: bool) -> bool:
    section("FSDP2 through an accelerate config file")
    gpus = torch.cuda.device_count()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config_file = tmp / "fsdp2.yaml"
        config_file.write_text(FSDP2_CONFIG.format(num_processes=max(gpus, 1)))
        # Tiny model, built-in corpus; batches of 4 per process, so that the plain run with
        # --grad-accum = GPUs takes the same batches per step.
        flags = ["--emb-dim", "64", "--n-layers", "2", "--n-heads", "2", "--context-length", "64",
                 "--batch-size", "4", "--max-steps", "8", "--eval-freq", "4", "--eval-iter", "2",
                 "--mixed-precision", "bf16", "--sample-tokens", "2", "--cache-dir", str(tmp / "tokens")]
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
                  "-m", "gptlite.training", *flags, "--output-dir", str(tmp / "fsdp")]
        fsdp = subprocess.run(launch, cwd=REPO, capture_output=True, text=True)
        if dry_run:
            refused = fsdp.returncode != 0 and "asks for FSDP" in fsdp.stderr
            print("on CPU gptlite refuses the FSDP config (accelerate would run DDP): "
                  f"{'yes' if refused else 'NO'}", flush=True)
            if not refused:
                print(fsdp.stderr[-3000:])
            return refused
        if fsdp.returncode != 0:
            print(f"FSDP2 run failed:\n{fsdp.stderr[-5000:]}", flush=True)
            return False
        plain = subprocess.run([sys.executable, "-m", "gptlite.training", *flags, "--grad-accum", str(max(gpus, 1)),
                                "--output-dir", str(tmp / "plain")], cwd=REPO, capture_output=True, text=True)
        if plain.returncode != 0:
            print(f"plain run failed:\n{plain.stderr[-5000:]}", flush=True)
            return False
        a, b = (json.loads((tmp / run / "history.json").read_text()) for run in ("fsdp", "plain"))
        diff = max(abs(x - y) for x, y in zip(a["step_loss"], b["step_loss"]))
        ok = len(a["step_loss"]) == len(b["step_loss"]) == 8 and diff < 2e-2  # bf16: reductions ordered differently
        print(f"FSDP2 on {gpus} GPU(s) against one process with --grad-accum {max(gpus, 1)}: largest step-loss "
              f"difference {diff:.2e} over 8 steps -> {'agree' if ok else 'DISAGREE'}", flush=True)
        return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on whatever device there is (CPU: seconds)")
    parser.add_argument("--only", nargs="+", choices=["tests", "train", "decode", "fsdp"],
                        default=["tests", "train", "decode", "fsdp"])
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        parser.error("no CUDA GPU here: run it on one, or with --dry-run to check the script on CPU")
    device = torch.device("cuda" if cuda else "cpu")
    sizes = Sizes.dry_run() if args.dry_run else Sizes()
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"torch {torch.__version__} on {name}{' (dry run: tiny sizes)' if args.dry_run else ''}", flush=True)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # what gptlite-train does on CUDA; bf16 sides unaffected
    started = time.perf_counter()
    ok = True
    if "tests" in args.only:
        ok &= run_cuda_tests()
    if "train" in args.only:
        measure_training(sizes, device)
    if "decode" in args.only:
        measure_decoding(sizes, device)
    if "fsdp" in args.only:
        ok &= check_fsdp2(args.dry_run)
    print(f"\n{'all checks passed' if ok else 'SOME CHECKS FAILED'}; {time.perf_counter() - started:.0f} s", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
