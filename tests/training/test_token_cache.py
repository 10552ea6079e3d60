"""The sharded token cache gives exactly the windows of the single in-memory array it replaced."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

import gptlite.training.token_cache as token_cache
from gptlite.errors import InputFileError
from gptlite.training.data import DataConfig, build_dataloaders, load_token_splits
from gptlite.training.token_cache import ShardWriter, TokenShards, encode_parts, tokenize_documents
from gptlite.training.windows import TokenWindows, collate_windows
from tests.training.conftest import generated_text, joined


def windows(ds) -> list[tuple[list[int], list[int]]]:
    return [(x.tolist(), y.tolist()) for x, y in ds]


def shards_of(ids: np.ndarray, folder, shard_tokens: int) -> TokenShards:
    writer = ShardWriter(folder, "s", shard_tokens)
    for piece in np.array_split(ids, 5):  # writes of several sizes, not aligned with the shards
        writer.write(piece)
    return TokenShards(writer.close())


def test_slices_across_shards_equal_the_joined_array(tmp_path):
    ids = np.arange(100, dtype=np.uint16)
    stream = shards_of(ids, tmp_path, shard_tokens=7)
    assert len(stream.paths) == 15 and len(stream) == 100 and stream.dtype == np.uint16
    rng = np.random.default_rng(0)
    for _ in range(200):
        i, j = sorted(rng.integers(-5, 110, size=2))
        assert np.array_equal(stream[i:j], ids[i:j]), (i, j)
    assert stream[6] == 6 and stream[7] == 7 and stream[-1] == 99
    assert np.array_equal(stream[::3], ids[::3]) and np.array_equal(np.asarray(stream), ids)
    with pytest.raises(IndexError):
        stream[100]
    sub = stream.range(5, 60)
    assert sub.tolist() == ids[5:60].tolist() and np.array_equal(sub[3:20], ids[8:25])
    assert pickle.loads(pickle.dumps(sub)).tolist() == sub.tolist()  # DataLoader workers reopen the maps
    with pytest.raises(ValueError, match="outside"):
        stream.range(10, 101)


def test_shards_hold_two_bytes_per_token(tmp_path):
    stream = shards_of(np.arange(1000, dtype=np.uint16), tmp_path, shard_tokens=256)
    assert [len(np.load(p, mmap_mode="r")) for p in stream.paths] == [256, 256, 256, 232]
    header = 128  # numpy's .npy header for a 1-D array
    assert [p.stat().st_size for p in stream.paths] == [header + 2 * n for n in (256, 256, 256, 232)]
    empty = ShardWriter(tmp_path, "empty").close()
    assert len(TokenShards(empty)) == 0


@pytest.mark.parametrize("shard_tokens", [11, 64])
def test_sharded_cache_gives_the_in_memory_windows(tmp_path, shard_tokens):
    docs = [generated_text(300, seed=s) for s in range(6)]
    for i, doc in enumerate(docs):
        (tmp_path / f"{i}.txt").write_text(doc, encoding="utf-8")
    config = DataConfig(data=[str(tmp_path / "*.txt")], train_ratio=0.9, context_length=16, stride=5,
                        cache_dir=str(tmp_path / "c"))
    train, val = load_token_splits(config, shard_tokens=shard_tokens)
    assert isinstance(train, TokenShards) and len(train.paths) > 1
    # The old path: every document's ids joined in memory, cut at 90% of the tokens.
    stream = tokenize_documents([docs], num_proc=1)
    assert stream.tolist() == joined(docs)
    cut = int(0.9 * len(stream))
    for shards, array in ((train, stream[:cut]), (val, stream[cut:])):
        assert windows(TokenWindows(shards, 16, 5)) == windows(TokenWindows(array, 16, 5))
    # The shuffled, seeded loaders give the same batches too.
    loader, _ = build_dataloaders(config, batch_size=4, seed=3)
    reference = torch.utils.data.DataLoader(TokenWindows(stream[:cut], 16, 5), batch_size=4, shuffle=True,
                                            drop_last=True, generator=torch.Generator().manual_seed(3))
    pairs = list(zip(loader, reference))
    assert len(pairs) == len(reference) > 10
    assert all(torch.equal(x, rx) and torch.equal(y, ry) for (x, y), (rx, ry) in pairs)


def test_workers_tokenize_in_order_in_small_tasks(tmp_path, monkeypatch):
    monkeypatch.setattr(token_cache, "TASK_BYTES", 2000)  # many tasks: exercises ordering and the in-flight bound
    docs = [generated_text(100 + 40 * s, seed=s) for s in range(30)]
    paths = []
    for i, doc in enumerate(docs[:12]):
        paths.append(tmp_path / f"{i:02d}.txt")
        paths[-1].write_text(doc, encoding="utf-8")
    import datasets

    parts = [datasets.Dataset.from_dict({"path": [str(p) for p in paths]}), docs[12:]]
    assert len(list(token_cache._tasks(token_cache._as_datasets(parts)))) > 8
    chunks = list(encode_parts(parts, num_proc=2))
    assert len(chunks) > 8 and all(c.dtype == np.uint16 for c in chunks)
    assert np.concatenate(chunks).tolist() == joined(docs)


def test_failed_tokenization_leaves_no_cache_entry(tmp_path, monkeypatch):
    path = tmp_path / "story.txt"
    path.write_text(generated_text(3000), encoding="utf-8")
    config = DataConfig(data=[str(path)], cache_dir=str(tmp_path / "c"))
    original = token_cache.ShardWriter.close

    def fail_after_the_train_split(self):
        paths = original(self)
        if self.name == "val":
            raise OSError(28, "No space left on device")
        return paths

    monkeypatch.setattr(token_cache.ShardWriter, "close", fail_after_the_train_split)
    with pytest.raises(OSError, match="No space left"):
        load_token_splits(config, shard_tokens=16)
    assert list((tmp_path / "c").iterdir()) == []  # neither an entry nor its hidden temporary folder
    monkeypatch.undo()
    train, val = load_token_splits(config, shard_tokens=16)
    assert len(train) > 16 and len(val) > 0 and len(list((tmp_path / "c").iterdir())) == 1


@pytest.mark.parametrize("sharded", [False, True])
def test_a_batch_read_at_once_is_the_windows_read_one_by_one(tmp_path, sharded):
    ids = np.random.default_rng(0).integers(0, 50257, 500).astype(np.uint16)
    stream = shards_of(ids, tmp_path, shard_tokens=37) if sharded else ids  # windows cross the shards' edges
    windows = TokenWindows(stream, max_length=16, stride=9)
    indices = [3, 0, len(windows) - 1, 17, 3, -1]
    batch = windows.__getitems__(indices)
    expected = [windows[i] for i in indices]
    inputs, targets = collate_windows(batch)
    assert inputs.dtype == torch.int64 and inputs.shape == (6, 16) and inputs.is_contiguous()
    assert torch.equal(inputs, torch.stack([x for x, _ in expected]))
    assert torch.equal(targets, torch.stack([y for _, y in expected]))
    # Any other collate function sees the usual list of (input_ids, target_ids) and stacks the same batch.
    assert len(batch) == 6 and all(torch.equal(x, e) for (x, _), e in zip(batch, (x for x, _ in expected)))
    for got, want in zip(default_collate(batch), (inputs, targets)):
        assert torch.equal(got, want)
    with pytest.raises(IndexError, match=f"window {len(windows)} out of range"):
        windows.__getitems__([0, len(windows)])


def test_the_training_loader_batches_equal_a_plain_dataloaders(tmp_path):
    windows = TokenWindows(np.arange(3000, dtype=np.uint16), max_length=32, stride=32)
    ours = DataLoader(windows, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1),
                      collate_fn=collate_windows)
    plain = DataLoader(windows, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1))
    for (x, y), (px, py) in zip(ours, plain, strict=True):
        assert torch.equal(x, px) and torch.equal(y, py)


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_a_broken_shard_is_one_error_that_names_it_and_the_folder_to_delete(tmp_path, damage):
    shard = shards_of(np.arange(100, dtype=np.uint16), tmp_path, shard_tokens=64).paths[0]
    if damage == "truncated":
        Path(shard).write_bytes(Path(shard).read_bytes()[:100])
    else:
        Path(shard).write_bytes(b"garbage")
    with pytest.raises(InputFileError) as caught:
        TokenShards([shard])
    message = str(caught.value)
    assert message.startswith(f"{shard}: not a readable token shard (") and "\n" not in message
    assert message.endswith(f"delete the folder {Path(shard).parent} and the run tokenizes its data again")
