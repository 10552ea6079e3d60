import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import gptlite.tokenization as tokenization
from gptlite.tokenization import EOT_ID, EOT_TOKEN, get_tokenizer
from gptlite.training import token_cache
from gptlite.training.data import (
    DataConfig,
    build_dataloaders,
    build_datasets,
    load_token_splits,
    tokenize_documents,
)
from gptlite.training.sources import default_corpus, resolve_files
from gptlite.training.windows import TokenWindows, num_windows
from reference.book_loop import GPTDatasetV1
from tests.training.conftest import generated_text, joined

VERDICT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "the-verdict.txt"


def book_loaders(text_data: str, batch_size: int = 2, context: int = 256):
    # Chapter 5: character split at 90%, then create_dataloader_v1 for each side.
    split_idx = int(0.90 * len(text_data))
    tokenizer = get_tokenizer()
    train = GPTDatasetV1(text_data[:split_idx], tokenizer, context, context)
    val = GPTDatasetV1(text_data[split_idx:], tokenizer, context, context)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0)
    val_loader = DataLoader(val, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=0)
    return train_loader, val_loader


def assert_same_loaders(ours, book):
    ours_batches, book_batches = list(ours), list(book)
    assert len(ours_batches) == len(book_batches)
    for (x, y), (bx, by) in zip(ours_batches, book_batches):
        assert x.dtype == bx.dtype == torch.int64
        assert torch.equal(x, bx) and torch.equal(y, by)


def check_book_parity(path: Path, tmp_path: Path, train_batches: int | None = None, val_batches: int | None = None):
    text = path.read_text(encoding="utf-8")
    config = DataConfig(data=[str(path)], context_length=256, stride=256, train_ratio=0.9, cache_dir=str(tmp_path))
    torch.manual_seed(123)
    book_train, book_val = book_loaders(text)
    book_order = list(book_train)
    torch.manual_seed(123)
    train, val = build_dataloaders(config, batch_size=2)  # seed=None: global RNG, as the book
    ours_order = list(train)
    if train_batches is not None:
        assert len(train) == train_batches and len(val) == val_batches
    assert len(ours_order) == len(book_order) > 0
    for (x, y), (bx, by) in zip(ours_order, book_order):
        assert torch.equal(x, bx) and torch.equal(y, by)
    assert_same_loaders(val, book_val)
    # Windows in dataset order equal GPTDatasetV1's, inputs and shifted targets.
    assert [tuple(t.tolist() for t in w) for w in train.dataset] == [
        tuple(t.tolist() for t in w) for w in book_train.dataset
    ]


@pytest.mark.skipif(not VERDICT.exists(), reason=f"{VERDICT} not present")
def test_the_verdict_matches_the_book(tmp_path):
    check_book_parity(VERDICT, tmp_path, train_batches=9, val_batches=1)
    config = DataConfig(data=[str(VERDICT)], context_length=256, cache_dir=str(tmp_path))
    train, val = build_dataloaders(config, batch_size=2)
    assert [x.shape for x, _ in train] == [torch.Size([2, 256])] * 9
    assert [x.shape for x, _ in val] == [torch.Size([2, 256])]


def test_generated_text_matches_the_book(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text(generated_text(6000), encoding="utf-8")
    check_book_parity(path, tmp_path / "cache")


def test_windows_strict_bound_and_targets():
    ids = np.arange(11, dtype=np.uint16)
    assert len(TokenWindows(ids[:5], 4, 4)) == 1  # exactly max_length + 1 tokens: one window
    assert len(TokenWindows(ids[:4], 4, 4)) == 0
    windows = TokenWindows(ids, max_length=4, stride=2)
    assert len(windows) == len(range(0, 11 - 4, 2)) == num_windows(11, 4, 2) == 4
    x, y = windows[3]
    assert x.tolist() == [6, 7, 8, 9] and y.tolist() == [7, 8, 9, 10]
    assert x.dtype == torch.int64
    assert windows[-1][0].tolist() == x.tolist()
    with pytest.raises(IndexError):
        windows[4]


def write_tables(folder: Path, docs: list[str]) -> dict[str, Path]:
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    jsonl = folder / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    csv = folder / "docs.csv"
    pd.DataFrame({"id": range(len(docs)), "body": docs}).to_csv(csv, index=False)
    parquet = folder / "docs.parquet"
    pd.DataFrame({"text": docs, "n": range(len(docs))}).to_parquet(parquet)
    return {"jsonl": jsonl, "csv": csv, "parquet": parquet}


DOCS = ["First document, about painting.", "Second one:\nwith a newline, and commas", "Third."]


@pytest.mark.parametrize(("kind", "column"), [("jsonl", "text"), ("csv", "body"), ("parquet", "text")])
def test_table_sources_use_the_text_column(tmp_path, kind, column):
    path = write_tables(tmp_path / "data", DOCS)[kind]
    config = DataConfig(data=[str(path)], text_column=column, train_ratio=1.0, cache_dir=str(tmp_path / "c"))
    train_ids, val_ids = load_token_splits(config)
    assert val_ids is None
    assert train_ids.tolist() == joined(DOCS)
    assert train_ids.tolist().count(EOT_ID) == len(DOCS) - 1


def test_missing_text_column_names_file_and_column(tmp_path):
    path = write_tables(tmp_path / "data", DOCS)["csv"]
    config = DataConfig(data=[str(path)], cache_dir=str(tmp_path / "c"))  # the CSV's column is "body"
    with pytest.raises(KeyError, match=r"docs\.csv has no text column 'text' \(columns: id, body\)"):
        load_token_splits(config)


def test_missing_paths_are_named(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt does not exist"):
        build_dataloaders(DataConfig(data=[str(missing)], cache_dir=str(tmp_path)), batch_size=2)
    with pytest.raises(FileNotFoundError, match=r"no data files match .*\*\.md"):
        resolve_files([str(tmp_path / "*.md")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty contains no files"):
        resolve_files([tmp_path / "empty"])


def test_folder_and_glob_sources(tmp_path):
    root = tmp_path / "corpus"
    (root / "b" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "a.txt").write_text("alpha", encoding="utf-8")
    (root / "b" / "c.md").write_text("gamma", encoding="utf-8")
    (root / "b" / "deeper" / "d.txt").write_text("delta", encoding="utf-8")
    (root / ".hidden" / "x.txt").write_text("hidden", encoding="utf-8")
    (root / "b" / "image.png").write_bytes(b"\x89PNG")
    files = resolve_files([root])
    assert [p.relative_to(root).as_posix() for p in files] == ["a.txt", "b/c.md", "b/deeper/d.txt"]
    assert [p.name for p in resolve_files([str(root / "**" / "*.txt")])] == ["a.txt", "d.txt"]
    # Duplicates across specs are read once.
    assert len(resolve_files([root, str(root / "a.txt")])) == 3

    config = DataConfig(data=[str(root)], train_ratio=1.0, cache_dir=str(tmp_path / "c"))
    train_ids, _ = load_token_splits(config)
    assert train_ids.tolist() == joined(["alpha", "gamma", "delta"])
    config = DataConfig(data=[str(root / "b" / "**" / "*.*")], train_ratio=1.0, cache_dir=str(tmp_path / "c"))
    assert load_token_splits(config)[0].tolist() == joined(["gamma", "delta"])


def test_multi_document_split_is_by_tokens(tmp_path):
    docs = [generated_text(300, seed=s) for s in range(5)]
    for i, doc in enumerate(docs):
        (tmp_path / f"{i}.txt").write_text(doc, encoding="utf-8")
    config = DataConfig(data=[str(tmp_path / "*.txt")], train_ratio=0.9, cache_dir=str(tmp_path / "c"))
    train_ids, val_ids = load_token_splits(config)
    stream = joined(docs)
    cut = int(0.9 * len(stream))
    assert train_ids.tolist() == stream[:cut] and val_ids.tolist() == stream[cut:]


def test_literal_endoftext_as_text_or_special(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(f"before{EOT_TOKEN}after", encoding="utf-8")
    enc = get_tokenizer()
    common = {"data": [str(path)], "train_ratio": 1.0, "cache_dir": str(tmp_path / "c")}
    as_text, _ = load_token_splits(DataConfig(**common))
    assert EOT_ID not in as_text.tolist()
    assert as_text.tolist() == enc.encode_ordinary(f"before{EOT_TOKEN}after")
    as_special, _ = load_token_splits(DataConfig(**common, eot_as_special=True))
    assert as_special.tolist() == enc.encode("before") + [EOT_ID] + enc.encode("after")


def test_tiny_corpus_errors_give_the_numbers(tmp_path):
    path = tmp_path / "tiny.txt"
    text = generated_text(1200)
    path.write_text(text, encoding="utf-8")
    enc = get_tokenizer()
    split_idx = int(0.9 * len(text))
    n_train, n_val = len(enc.encode(text[:split_idx])), len(enc.encode(text[split_idx:]))
    assert n_val < 257 < n_train
    config = DataConfig(data=[str(path)], context_length=256, cache_dir=str(tmp_path / "c"))
    expected = (
        f"validation split has {n_val} tokens, fewer than one window of context_length+1 = 257 tokens; "
        "lower --context-length or raise the validation share"
    )
    with pytest.raises(ValueError, match=expected.replace("+", r"\+")):
        build_dataloaders(config, batch_size=1)
    config = DataConfig(data=[str(path)], context_length=n_train, cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=f"training split has {n_train} tokens, .* = {n_train + 1} tokens"):
        build_datasets(config)
    # Enough tokens for windows but not for one full training batch.
    config = DataConfig(data=[str(path)], context_length=64, cache_dir=str(tmp_path / "c"))
    n_windows = num_windows(n_train, 64, 64)
    with pytest.raises(ValueError, match=f"gives {n_windows} window.*one batch of {n_windows + 1}"):
        build_dataloaders(config, batch_size=n_windows + 1)


def test_second_run_uses_the_cache(tmp_path, monkeypatch):
    path = tmp_path / "story.txt"
    path.write_text(generated_text(3000), encoding="utf-8")
    config = DataConfig(data=[str(path)], cache_dir=str(tmp_path / "c"))
    calls = []
    original = tokenization.get_tokenizer

    def counting():
        calls.append(1)
        return original()

    monkeypatch.setattr(token_cache, "get_tokenizer", counting)  # where the tokenizing map finds it
    first = load_token_splits(config)
    assert calls, "the first run should tokenize"

    def forbidden():
        raise AssertionError("tokenizer called on a cache hit")

    monkeypatch.setattr(token_cache, "get_tokenizer", forbidden)
    second = load_token_splits(config)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert len(list((tmp_path / "c").iterdir())) == 1

    # Changing the file (size and mtime) invalidates the entry.
    path.write_text(generated_text(3000) + "One more line.\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="cache hit"):
        load_token_splits(config)


def stream_windows(dataset) -> list[tuple[list[int], list[int]]]:
    return [(x.tolist(), y.tolist()) for x, y in dataset]


def test_streaming_yields_the_same_windows(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        (data / f"{i}.txt").write_text(generated_text(400, seed=i), encoding="utf-8")
    tables = write_tables(tmp_path / "tables", [generated_text(200, seed=10 + i) for i in range(3)])
    val = tmp_path / "val.txt"
    val.write_text(generated_text(500, seed=99), encoding="utf-8")
    common = {
        "data": [str(data), str(tables["jsonl"])],
        "validation_data": [str(val)],
        "context_length": 32,
        "stride": 24,  # overlapping windows exercise the streaming buffer
        "cache_dir": str(tmp_path / "c"),
    }
    train_map, val_map = build_datasets(DataConfig(**common))
    train_stream, val_stream = build_datasets(DataConfig(**common, streaming=True), shuffle=False)
    assert len(train_map) > 10
    assert stream_windows(train_stream) == stream_windows(train_map)
    assert stream_windows(val_stream) == stream_windows(val_map)

    # Shuffled streaming: same windows, other order, reproducible with the seed.
    shuffled = build_datasets(DataConfig(**common, streaming=True, shuffle_buffer=8), seed=3)[0]
    once, again = stream_windows(shuffled), stream_windows(shuffled)
    assert once == again and once != stream_windows(train_map)
    assert sorted(once) == sorted(stream_windows(train_map))

    loader, _ = build_dataloaders(DataConfig(**common, streaming=True), batch_size=4, seed=0)
    assert all(x.shape == (4, 32) for x, _ in loader)


def test_streaming_split_by_documents_and_tiny_error(tmp_path):
    docs = [f"document number {i} " * 20 for i in range(20)]
    for i, doc in enumerate(docs):
        (tmp_path / f"{i:02d}.txt").write_text(doc, encoding="utf-8")
    config = DataConfig(data=[str(tmp_path / "*.txt")], streaming=True, context_length=16, stride=16)
    train, val = build_datasets(config, shuffle=False)
    expected_val = TokenWindows(np.array(joined([docs[9], docs[19]])), 16, 16)
    expected_train = TokenWindows(np.array(joined([d for i, d in enumerate(docs) if i % 10 != 9])), 16, 16)
    assert stream_windows(val) == stream_windows(expected_val)
    assert stream_windows(train) == stream_windows(expected_train)

    tiny = DataConfig(data=[str(tmp_path / "00.txt")], streaming=True, context_length=1000)
    train, _ = build_datasets(tiny, shuffle=False)
    n_tokens = len(get_tokenizer().encode(docs[0]))
    with pytest.raises(ValueError, match=f"training split has {n_tokens} tokens"):
        list(train)
    # Exactly context_length + 1 tokens: one window, ending on the stream's last token (strict bound).
    exact = DataConfig(data=[str(tmp_path / "00.txt")], streaming=True, context_length=n_tokens - 1)
    windows = stream_windows(build_datasets(exact, shuffle=False)[0])
    assert len(windows) == 1 and windows[0][1][-1] == get_tokenizer().encode(docs[0])[-1]


def test_seeded_shuffle_uses_its_own_generator(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text(generated_text(8000), encoding="utf-8")
    config = DataConfig(data=[str(path)], context_length=16, cache_dir=str(tmp_path / "c"))
    torch.manual_seed(1)
    first = [x for x, _ in build_dataloaders(config, batch_size=4, seed=7)[0]]
    torch.manual_seed(2)
    second = [x for x, _ in build_dataloaders(config, batch_size=4, seed=7)[0]]
    assert all(torch.equal(a, b) for a, b in zip(first, second)) and len(first) > 5
    third = [x for x, _ in build_dataloaders(config, batch_size=4, seed=8)[0]]
    assert not all(torch.equal(a, b) for a, b in zip(first, third))


def test_multiprocess_tokenization_matches_single_process():
    docs = [generated_text(200, seed=s) for s in range(8)]
    single = tokenize_documents([docs])
    multi = tokenize_documents([docs], num_proc=2)
    assert single.dtype == np.uint16
    assert np.array_equal(single, multi) and single.tolist() == joined(docs)


def test_default_corpus(tmp_path):
    docs = default_corpus()
    assert len(docs) > 50 and 300_000 < sum(map(len, docs)) < 500_000
    # No layout whose tokens a small model repeats when decoding greedily: blank lines, indentation, bullets.
    lines = [line for doc in docs for line in doc.split("\n")]
    assert all(line and line == line.strip() and "  " not in line and not line.startswith("* ") for line in lines)
    assert any(doc.startswith("The for statement\nThe for statement is used to iterate over") for doc in docs)
    train, val = build_dataloaders(DataConfig(context_length=256, cache_dir=str(tmp_path)), batch_size=8, seed=0)
    assert len(train) > 20 and len(val) > 2
    x, y = next(iter(train))
    assert x.shape == (8, 256) and torch.equal(x[:, 1:], y[:, :-1])


def test_config_validation():
    with pytest.raises(ValueError, match=r"--train-ratio must be in \(0, 1\], got 0.0"):
        DataConfig(train_ratio=0.0)
    with pytest.raises(ValueError, match="--context-length must be a positive integer, got 0"):
        DataConfig(context_length=0)
    with pytest.raises(ValueError, match="either --data"):
        DataConfig(data=["a.txt"], dataset="wikitext")
    assert DataConfig(data="a.txt").data == ["a.txt"]
    assert DataConfig(context_length=8).window_stride == 8


# -- broken data files: one line naming the file and the line or byte ---------------------------------------------

BROKEN_FILES = {
    "malformed-json-line": ("bad.jsonl", b'{"text": "one"}\n{"text": "two"\n{"text": "three"}\n',
                            "bad.jsonl, line 2: not valid JSON (column 1: Expecting ',' delimiter)"),
    "text-is-a-number": ("num.jsonl", b'{"text": "one"}\n\n{"text": 42}\n',
                         "num.jsonl, line 3: column 'text' holds 42 (a number), not a string"),
    "every-text-a-number": ("nums.jsonl", b'{"text": 41}\n{"text": 42}\n',
                            "nums.jsonl, line 1: column 'text' holds 41 (a number), not a string"),
    "text-is-a-list": ("list.jsonl", b'{"text": "one"}\n{"text": [1, 2]}\n',
                       "list.jsonl, line 2: column 'text' holds [1, 2] (a list), not a string"),
    "csv-number": ("num.csv", b"text\n12\n13\n", "num.csv, line 2: column 'text' holds 12 (a number), not a string"),
    "latin-1-text": ("latin1.txt", b"fine line\ncaf\xe9 au lait\n",
                     "latin1.txt: not UTF-8 text: byte 0xe9 at byte offset 13 (line 2)"),
    "latin-1-jsonl": ("latin1.jsonl", b'{"text": "fine"}\n{"text": "caf\xe9"}\n',
                      "latin1.jsonl: not UTF-8 text: byte 0xe9 at byte offset 30 (line 2)"),
}


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "streaming"])
@pytest.mark.parametrize("case", list(BROKEN_FILES))
def test_a_broken_data_file_is_one_error_naming_file_and_place(tmp_path, case, streaming):
    from gptlite.errors import InputFileError

    name, content, message = BROKEN_FILES[case]
    if streaming and case == "csv-number":  # a streamed CSV row has an index, not a line number
        message = "num.csv, row 0: column 'text' holds 12 (a number), not a string"
    (tmp_path / name).write_bytes(content)
    config = DataConfig(data=[str(tmp_path / name)], context_length=2, train_ratio=1.0, streaming=streaming,
                        cache_dir=str(tmp_path / "cache"))
    with pytest.raises(InputFileError) as err:
        train_ds, _ = build_datasets(config)
        list(train_ds)  # streaming reads as it goes
    assert str(err.value).startswith(str(tmp_path / name)) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_not_utf8_offsets_are_exact_across_read_chunks(tmp_path, monkeypatch):
    import gptlite.training.file_errors as file_errors

    monkeypatch.setattr(file_errors, "_CHUNK", 5)  # multi-byte characters straddle chunk boundaries
    data = "aé\nbcdé€\n".encode() + b"x\xff"
    (tmp_path / "t.txt").write_bytes(data)
    error = file_errors.utf8_error(tmp_path / "t.txt")
    offset = data.index(b"\xff")  # 14: "é" and "€" are 2 and 3 bytes
    assert f"byte 0xff at byte offset {offset} (line 3)" in str(error) and offset == 14
    (tmp_path / "ok.txt").write_bytes("é€".encode() * 7)
    assert file_errors.utf8_error(tmp_path / "ok.txt") is None
