"""Tokenizing a corpus larger than memory into the sharded token cache, against tiktoken's raw speed.

    python -m benchmarks.bench_tokenize [--sizes-mb 64 16] [--rounds 2] [--procs N]
    python -m benchmarks.bench_tokenize --sizes-mb 1024 256      # the issue's measurement (>= 1 GB)

It writes a generated corpus per size (1 MB text files of English words drawn from CPython's pydoc
topics, so bytes per token are those of prose), then alternates two sides, round by round:

* tiktoken raw: ``encode_ordinary_batch(texts, num_threads=1)`` over every file of the same corpus, timing
  the encoding only (the file reads are not timed): the speed of one core with no overhead at all.
* gptlite: ``load_token_splits`` into an empty cache, in a fresh process (its peak RSS is its own and
  its workers'), on every usable core; timed from the call to the renamed cache entry.

It prints gptlite's tokens/s per core over tiktoken's, the peak RSS at each size (flat: the cache is
written in shards as tokenizing goes), the bytes per token on disk, and the time the training DataLoader
takes per batch from the memory-mapped shards against a 124M training step (one bf16 step measured here
at context 256 batch 8; the GPU figure from the book's A100 study, 142,156 tokens/s, for context 1024).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import rotated

FILE_BYTES = 1 << 20
BOOK_A100_TOKENS_PER_S = 142_156  # the book's appendix-D training-speed study, 124M at context 1024, A100


def write_corpus(folder: Path, size_mb: int, seed: int = 0) -> list[Path]:
    """``size_mb`` files of about 1 MB: lines of 12 words drawn from the pydoc topics' words."""
    from pydoc_data.topics import topics

    words = " ".join(topics.values()).split()
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(size_mb):
        lines, size = [], 0
        while size < FILE_BYTES:
            line = " ".join(rng.choices(words, k=12))
            lines.append(line)
            size += len(line) + 1
        path = folder / f"{i:05d}.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def tiktoken_raw(paths: list[Path]) -> tuple[float, int]:
    """Seconds spent in ``encode_ordinary_batch`` (one thread) over the files, and the tokens it gave."""
    from gptlite.tokenization import get_tokenizer

    encoding = get_tokenizer()
    seconds, tokens = 0.0, 0
    for start in range(0, len(paths), 8):
        texts = [p.read_text(encoding="utf-8") for p in paths[start : start + 8]]
        begin = time.perf_counter()
        encoded = encoding.encode_ordinary_batch(texts, num_threads=1)
        seconds += time.perf_counter() - begin
        tokens += sum(map(len, encoded))
    return seconds, tokens


def gptlite_in_fresh_process(corpus: Path, cache: Path, procs: int | None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_tokenize", "--child", str(corpus), str(cache)]
    if procs:
        cmd += ["--procs", str(procs)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"tokenizing process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(corpus: Path, cache: Path, procs: int | None) -> None:
    from gptlite.training.data import DataConfig, load_token_splits
    from gptlite.training.token_cache import usable_cores

    config = DataConfig(data=[str(corpus)], train_ratio=1.0, cache_dir=str(cache), num_proc=procs)
    begin = time.perf_counter()
    train, _ = load_token_splits(config)
    seconds = time.perf_counter() - begin
    kib = 1024  # ru_maxrss is in KiB on Linux
    files = [p for p in cache.rglob("*.npy")]
    print(json.dumps({
        "seconds": seconds, "tokens": len(train), "procs": procs or usable_cores(),
        "rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib / 2**20,
        "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib / 2**20,
        "disk_bytes": sum(p.stat().st_size for p in files), "shards": len(files),
    }))


def loader_seconds_per_batch(cache_corpus: Path, cache: Path, context: int, batch: int, n_batches: int = 200) -> float:
    """Median time the shuffled training DataLoader takes to give one batch from the (warm) memory-mapped shards."""
    from gptlite.training.data import DataConfig, build_dataloaders

    config = DataConfig(data=[str(cache_corpus)], train_ratio=1.0, cache_dir=str(cache), context_length=context)
    loader, _ = build_dataloaders(config, batch_size=batch, seed=0)
    times, batches = [], iter(loader)
    while len(times) < n_batches:
        begin = time.perf_counter()
        try:
            next(batches)
        except StopIteration:  # a small corpus: another epoch
            batches = iter(loader)
            continue
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def step_seconds_124m(context: int = 256, batch: int = 8) -> float:
    """One gptlite 124M training step (bf16 autocast where native, else fp32), after one warm-up step."""
    import torch

    from benchmarks.bench_train import as_trained, make_step
    from benchmarks.common import gpt124m_pair
    from gptlite.training.throughput import cpu_has_native_bf16

    ours, _ = gpt124m_pair(context)
    ours = as_trained(ours)
    step = make_step(ours, "bf16" if cpu_has_native_bf16() else "fp32")
    ids = torch.randint(0, 50257, (batch, context))
    step(ids)
    begin = time.perf_counter()
    step(ids)
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[64, 16], help="corpus sizes (two: RSS is flat)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per size, each running both sides")
    parser.add_argument("--procs", type=int, default=None, help="tokenizing processes (default: every usable core)")
    parser.add_argument("--work-dir", default=None, help="where the corpora and caches go (default: a temp folder)")
    parser.add_argument("--no-step", action="store_true", help="skip measuring a 124M training step")
    parser.add_argument("--child", nargs=2, metavar=("CORPUS", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), args.procs)
        return

    work = Path(tempfile.mkdtemp(prefix="gptlite-bench-tokenize-", dir=args.work_dir))
    print(f"{os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} usable; corpora in {work}", flush=True)
    try:
        rows, last = [], None
        for size in args.sizes_mb:
            corpus = work / f"corpus-{size}mb"
            begin = time.perf_counter()
            paths = write_corpus(corpus, size)
            corpus_bytes = sum(p.stat().st_size for p in paths)
            print(f"\n{size} MB corpus: {len(paths)} files, {corpus_bytes / 1e6:,.0f} MB "
                  f"(generated in {time.perf_counter() - begin:.0f} s)", flush=True)
            raw, ours = [], []
            for round_index in range(args.rounds):
                for side in rotated(["tiktoken", "gptlite"], round_index):
                    if side == "tiktoken":
                        seconds, tokens = tiktoken_raw(paths)
                        raw.append(tokens / seconds)
                        print(f"  tiktoken raw, 1 thread: {tokens:,} tokens, {tokens / seconds:,.0f} tokens/s",
                              flush=True)
                    else:
                        cache = work / f"cache-{size}mb"
                        shutil.rmtree(cache, ignore_errors=True)
                        result = gptlite_in_fresh_process(corpus, cache, args.procs)
                        per_core = result["tokens"] / result["seconds"] / result["procs"]
                        ours.append(per_core)
                        print(f"  gptlite cache, {result['procs']} processes: {result['tokens']:,} tokens in "
                              f"{result['seconds']:.1f} s, {per_core:,.0f} tokens/s per core; peak RSS "
                              f"{result['rss_self_mb']:,.0f} MB main, {result['rss_worker_mb']:,.0f} MB largest "
                              f"worker; {result['disk_bytes'] / result['tokens']:.4f} bytes/token on disk in "
                              f"{result['shards']} shard(s)", flush=True)
                        last = (corpus, cache, result)
            ratio = statistics.median(ours) / statistics.median(raw)
            rows.append((size, ratio, min(o / r for o, r in zip(ours, raw)), max(o / r for o, r in zip(ours, raw)),
                         last[2]))
            print(f"{size} MB: gptlite per core / tiktoken raw per core = {ratio:.2f}x", flush=True)
            if size != args.sizes_mb[-1]:  # keep disk use at one corpus
                shutil.rmtree(corpus, ignore_errors=True)

        print("\nsummary")
        for size, ratio, low, high, result in rows:
            print(f"  {size:>6} MB: per-core speed {ratio:.2f}x tiktoken raw (rounds {low:.2f}-{high:.2f}x), "
                  f"peak RSS {result['rss_self_mb']:,.0f} MB main + {result['rss_worker_mb']:,.0f} MB per worker, "
                  f"{result['disk_bytes'] / result['tokens']:.4f} bytes/token")
        corpus, cache, _ = last
        for context, batch in ((256, 8), (1024, 16)):
            per_batch = loader_seconds_per_batch(corpus, cache, context, batch)
            gpu_step = batch * context / BOOK_A100_TOKENS_PER_S
            line = (f"  loader, context {context} batch {batch}: {per_batch * 1e3:.3f} ms per batch = "
                    f"{per_batch / gpu_step:.3%} of a 124M A100 step ({gpu_step * 1e3:.0f} ms, the book's figure)")
            if context == 256 and not args.no_step:
                cpu_step = step_seconds_124m(context, batch)
                line += f", {per_batch / cpu_step:.4%} of a 124M step measured here ({cpu_step:.2f} s)"
            print(line, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
