"""Time and peak memory of `from_hf` on a randomly initialised 124M GPT-2 checkpoint.

    python -m benchmarks.bench_convert [--layout safetensors|bin] [--dtype bfloat16] [--keep DIR]

The checkpoint is made in a temporary folder by one child process; a second, fresh child process does
only the conversion and reports its wall time and peak resident set size (`ru_maxrss`, which includes
the interpreter with torch and transformers imported, and any memory-mapped checkpoint pages it touched).
Goal on the 2-CPU benchmark machine: at most 10 s and at most 1.5x the checkpoint's size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

MAKE = textwrap.dedent("""
    import sys, torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config())  # GPT-2 124M: 12 layers, 768 wide, tied head
    folder = sys.argv[1]
    if sys.argv[2] == "bin":
        model.config.save_pretrained(folder)
        state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
        torch.save(state, folder + "/pytorch_model.bin")
    else:
        model.save_pretrained(folder)
""")

CONVERT = textwrap.dedent("""
    import json, resource, sys, time
    from gptlite.conversion import from_hf
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    from_hf(sys.argv[1], sys.argv[2], dtype=sys.argv[3] if sys.argv[3] != "-" else None)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"seconds": seconds, "peak_kib": peak, "after_imports_kib": before}))
""")


def _folder_size(folder: Path, names: tuple[str, ...]) -> int:
    return sum((folder / name).stat().st_size for name in names if (folder / name).is_file())


def run(layout: str, dtype: str | None, work: Path) -> dict[str, float]:
    src, out = work / "hf", work / "lite"
    src.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", MAKE, str(src), layout], check=True, capture_output=True)
    checkpoint = _folder_size(src, ("model.safetensors", "pytorch_model.bin"))

    done = subprocess.run(
        [sys.executable, "-c", CONVERT, str(src), str(out), dtype or "-"], check=True, capture_output=True, text=True
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    mib = 1024 * 1024
    return {
        "checkpoint_mib": checkpoint / mib,
        "seconds": report["seconds"],
        "peak_rss_mib": report["peak_kib"] / 1024,
        "rss_after_imports_mib": report["after_imports_kib"] / 1024,
        "peak_over_checkpoint": report["peak_kib"] * 1024 / checkpoint,
        "output_mib": _folder_size(out, ("model.safetensors",)) / mib,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=("safetensors", "bin"), default="safetensors")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="output dtype")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp dir)")
    args = parser.parse_args(argv)

    if args.keep:
        result = run(args.layout, args.dtype, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-convert-") as work:
            result = run(args.layout, args.dtype, Path(work))
    print(
        f"from_hf, random GPT-2 124M ({args.layout}, {result['checkpoint_mib']:.0f} MiB) -> gptlite "
        f"({args.dtype or 'same dtype'}, {result['output_mib']:.0f} MiB)"
    )
    print(f"  wall time : {result['seconds']:.2f} s (goal <= 10 s)")
    print(
        f"  peak RSS  : {result['peak_rss_mib']:.0f} MiB = {result['peak_over_checkpoint']:.2f}x the "
        f"checkpoint (goal <= 1.5x); {result['rss_after_imports_mib']:.0f} MiB of it is the interpreter "
        f"with torch and transformers imported"
    )


if __name__ == "__main__":
    main()
