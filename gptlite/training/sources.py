"""Where training text comes from: local files, folders and globs, Hub datasets, or the built-in corpus.

A :class:`TextSource` turns into documents (one string each) in two ways: :meth:`TextSource.parts` gives
🤗 ``datasets.Dataset`` objects to tokenize with ``Dataset.map``; :meth:`TextSource.iter_documents`
yields the same documents one at a time for streaming. Both list documents in the same order.

* A plain text file (``.txt``, ``.md``, ..., or any explicitly named file with another suffix) is one
  document, read like the book reads ``the-verdict.txt`` (``open(path, encoding="utf-8").read()``).
* A JSONL/JSON, CSV or Parquet file gives one document per row, from its ``text_column``.
* A folder is searched recursively for the suffixes above (hidden files and folders skipped); a glob
  (``*``, ``?``, ``[``; ``**`` recurses) keeps the matches with those suffixes. Both are sorted.
* A built-in name (``the-verdict``, see :mod:`gptlite.training.builtin_data`) is its cached file.
* With neither files nor a Hub dataset, the source is the built-in corpus (:func:`default_corpus`).

`datasets` is imported where a source reads through it (tables, Hub datasets, the tokenizing map): a run or an
evaluation whose corpus is already in the token cache never does, and the import costs 0.5 s measured on top
of torch and transformers.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics

from gptlite.downloads import DownloadError
from gptlite.errors import InputFileError, one_line
from gptlite.training.builtin_data import BUILTIN_TEXTS, builtin_text
from gptlite.training.file_errors import find_table_error, locate_table_error, read_utf8_text, text_value_error

__all__ = [
    "TABLE_FORMATS",
    "TEXT_SUFFIXES",
    "TextSource",
    "default_corpus",
    "resolve_files",
    "single_document",
    "unwrap_prose",
]

TEXT_SUFFIXES: tuple[str, ...] = (".txt", ".text", ".md", ".markdown", ".rst")
TABLE_FORMATS: dict[str, str] = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_KNOWN_SUFFIXES = (*TEXT_SUFFIXES, *TABLE_FORMATS)


def default_corpus() -> list[str]:
    """The built-in corpus: CPython's ``pydoc_data.topics.topics`` (about 390 KB of English once its layout is
    removed), one document per topic (see :func:`plain_topic`).

    Topics are ordered by name, so the corpus is the same on every run of a given Python version. This is
    what ``gptlite-train`` trains on when given no data.
    """

    return [plain_topic(topics[name]) for name in sorted(topics)]


_UNDERLINE = re.compile(r"^([*=\-^~#])\1+$")
_QUOTED_CODE = re.compile(r'"(\S[^"\n]{0,38}?)"')  # pydoc sets code in quotes: "for", "__init__()"
_LINE_MARKER = re.compile(r"^(?:[*\-] |>>> |\.\.\. |\d+\. )")  # bullets, numbered items, doctest prompts
_GRID_TABLE = ("|", "+-", "+=")


def plain_topic(text: str) -> str:
    """A pydoc topic's lines without their layout, as the built-in corpus holds it.

    Its prose paragraphs are unwrapped (:func:`unwrap_prose`); then indentation, aligning spaces and blank
    lines go, and so do title underlines and grid-table rows; bullets, item numbers and doctest prompts leave
    their lines, and code leaves pydoc's quotes (``"for"`` -> ``for``). A 6-layer model decoding greedily falls
    into the likeliest token that follows itself, and the layout's are the likeliest: trained on the layout,
    the main job's samples were the prompt and then 49 newlines (without blank lines, spaces of indentation;
    without those, bullets).
    """
    lines = []
    for line in unwrap_prose(text).split("\n"):
        line = _LINE_MARKER.sub("", " ".join(line.split()))
        if line and not _UNDERLINE.match(line) and not line.startswith(_GRID_TABLE):
            lines.append(line)
    return _QUOTED_CODE.sub(r"\1", "\n".join(lines))


def unwrap_prose(text: str) -> str:
    """Join each plain paragraph of ``text`` into one line with single spaces; keep every other block as it is.

    pydoc's topics are hard-wrapped at about 70 columns with two spaces after each sentence: a paragraph whose
    lines all start at column 0 is joined, so that a bullet or item number that wrapping put at the start
    of a line is not taken for one. Indented blocks (code, lists) and titles with their underline keep their
    layout.
    """
    blocks = []
    for block in text.split("\n\n"):
        lines = block.split("\n")
        if all(line and not line[0].isspace() for line in lines) and not any(_UNDERLINE.match(x) for x in lines):
            block = re.sub(r" {2,}", " ", " ".join(lines))
        blocks.append(block)
    return "\n\n".join(blocks)


def _has_known_suffix(path: Path) -> bool:
    return path.suffix.lower() in _KNOWN_SUFFIXES


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def resolve_files(specs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files, folders and globs into a sorted-per-spec, de-duplicated list of absolute file paths.

    Raises:
        FileNotFoundError: naming the path when it does not exist, or the folder/glob when it matches
            no file with a supported suffix.
    """
    files: list[Path] = []
    for spec in specs:
        text = os.fspath(spec)
        path = Path(text).expanduser()
        if glob.has_magic(text):
            found = [Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)]
            matched = sorted(p for p in found if p.is_file() and _has_known_suffix(p))
            if not matched:
                raise FileNotFoundError(f"no data files match {text!r} (looked for {', '.join(_KNOWN_SUFFIXES)})")
        elif path.is_dir():
            matched = sorted(
                p for p in path.rglob("*") if p.is_file() and _has_known_suffix(p) and not _is_hidden(p, path)
            )
            if not matched:
                raise FileNotFoundError(f"data folder {text} contains no files ending in {', '.join(_KNOWN_SUFFIXES)}")
        elif path.is_file():
            matched = [path]
        elif text in BUILTIN_TEXTS:  # --data the-verdict: the book's text, fetched into the cache once
            matched = [builtin_text(text)]
        else:
            hint = "; --data the-verdict fetches the book's text" if path.name == "the-verdict.txt" else ""
            raise FileNotFoundError(f"data path {text} does not exist{hint}")
        files.extend(p.resolve() for p in matched)
    return list(dict.fromkeys(files))


def read_text_file(path: Path) -> str:
    # Text mode, as the book does: universal newlines turn "\r\n" into "\n". Not UTF-8: an error naming the byte.
    return read_utf8_text(path)


def _missing_column_error(path: Path | str, column: str, columns: Sequence[str] | None) -> KeyError:
    have = ", ".join(columns) if columns else "none"
    return KeyError(f"{path} has no text column {column!r} (columns: {have}); set text_column / --text-column")


@dataclass(frozen=True)
class TextSource:
    """A corpus: local ``files`` (already resolved), a Hub ``dataset``, or, with neither, the built-in corpus."""

    files: tuple[Path, ...] = ()
    """Resolved local files (see :func:`resolve_files`)."""
    dataset: str | None = None
    """Hub dataset name (or a local dataset script/folder) for ``datasets.load_dataset``."""
    dataset_config: str | None = None
    """Hub dataset configuration name."""
    dataset_split: str = "train"
    """Split of the Hub dataset to read."""
    text_column: str = "text"
    """Column holding the text in tables and Hub datasets."""
    hf_cache_dir: str | None = None
    """``cache_dir`` passed to ``datasets.load_dataset`` (None: the 🤗 datasets default)."""

    @property
    def is_default(self) -> bool:
        return not self.files and self.dataset is None

    def describe(self) -> str:
        """A short human-readable name for messages."""
        if self.dataset is not None:
            cfg = f" ({self.dataset_config})" if self.dataset_config else ""
            return f"dataset {self.dataset}{cfg} split {self.dataset_split}"
        if self.files:
            return str(self.files[0]) if len(self.files) == 1 else f"{len(self.files)} files"
        return "the built-in corpus (pydoc_data.topics)"

    def fingerprint(self) -> list:
        """What identifies this corpus's content, for the token cache key.

        Local files: path, size and modification time. Built-in corpus: a hash of its text (it changes
        with the Python version). Hub dataset: name, config, split and the loaded dataset's fingerprint.
        """
        base = ["text_column", self.text_column]
        if self.dataset is not None:
            ds = self._load_hub(streaming=False)
            return [*base, "hub", self.dataset, self.dataset_config, self.dataset_split, ds._fingerprint]
        if self.files:
            stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in self.files]
            return [*base, "files", stats]
        digest = hashlib.sha256("\x00".join(default_corpus()).encode("utf-8")).hexdigest()
        return [*base, "pydoc_data.topics", digest]

    # -- map-style ------------------------------------------------------------------------------

    def parts(self):
        """Documents as ``datasets.Dataset`` objects, in order, each with a ``text`` or a ``path`` column.

        A ``path`` row stands for a whole text file, read by the tokenizing map (in its worker process).
        """
        import datasets

        if self.dataset is not None:
            return [self._select_text(self._load_hub(streaming=False), self.describe())]
        if not self.files:
            return [datasets.Dataset.from_dict({"text": default_corpus()})]
        parts, run = [], []  # consecutive plain-text files become one "path" part
        for path in self.files:
            fmt = TABLE_FORMATS.get(path.suffix.lower())
            if fmt is None:
                run.append(str(path))
                continue
            if run:
                parts.append(datasets.Dataset.from_dict({"path": run}))
                run = []
            try:
                ds = datasets.load_dataset(fmt, data_files=[str(path)], split="train", cache_dir=self.hf_cache_dir)
            except (datasets.exceptions.DatasetGenerationError, ValueError) as err:  # not OSError: missing, disk
                raise locate_table_error(path, fmt, self.text_column, err) from None
            parts.append(_checked_text(self._select_text(ds, path), path, fmt, self.text_column))
        if run:
            parts.append(datasets.Dataset.from_dict({"path": run}))
        return parts

    def _select_text(self, ds, where):
        if self.text_column not in (ds.column_names or ()):
            raise _missing_column_error(where, self.text_column, ds.column_names)
        ds = ds.select_columns([self.text_column])
        return ds.rename_column(self.text_column, "text") if self.text_column != "text" else ds

    def _load_hub(self, streaming: bool):
        import datasets

        try:
            with _quiet_hub_retries():
                return datasets.load_dataset(
                    self.dataset,
                    self.dataset_config,
                    split=self.dataset_split,
                    streaming=streaming,
                    cache_dir=None if streaming else self.hf_cache_dir,
                )
        except ConnectionError as err:  # offline, or HF_HUB_OFFLINE set, and nothing cached
            raise DownloadError(f"--dataset {self.dataset}: {one_line(err)}; retry online (with HF_HUB_OFFLINE "
                                "unset), or train on local files with --data") from None

    def open_stream(self) -> None:
        """Reach a Hub dataset once before training, so that an unreachable Hub is one line at set-up, not an
        error inside the first step (a stream is opened lazily, when iterated)."""
        if self.dataset is not None:
            self._load_hub(streaming=True)

    # -- streaming ------------------------------------------------------------------------------

    def iter_documents(self) -> Iterator[str]:
        """Yield the documents one at a time, in the same order as :meth:`parts`, without loading them all."""
        if self.dataset is not None:
            yield from self._iter_rows(self._load_hub(streaming=True), self.describe())
        elif not self.files:
            yield from default_corpus()
        else:
            for path in self.files:
                fmt = TABLE_FORMATS.get(path.suffix.lower())
                if fmt is None:
                    yield read_text_file(path)
                else:
                    yield from self._iter_file_rows(path, fmt)

    def _iter_file_rows(self, path: Path, fmt: str) -> Iterator[str]:
        import datasets

        try:
            ds = datasets.load_dataset(fmt, data_files=[str(path)], split="train", streaming=True)
            yield from self._iter_rows(ds, path)
        except (datasets.exceptions.DatasetGenerationError, ValueError) as err:  # found while streaming
            raise locate_table_error(path, fmt, self.text_column, err) from None

    def _iter_rows(self, ds, where) -> Iterator[str]:
        for i, row in enumerate(ds):
            if self.text_column not in row:
                raise _missing_column_error(where, self.text_column, list(row))
            text = row[self.text_column]
            if text is not None and not isinstance(text, str):
                raise text_value_error(f"{where}, row {i}", self.text_column, text)
            yield text or ""


@contextmanager
def _quiet_hub_retries() -> Iterator[None]:
    # huggingface_hub logs each retry of an unreachable Hub ("Retrying in 1s [Retry 1/5].", ten lines in all)
    # before the error that gptlite reports in one line.
    logger = logging.getLogger("huggingface_hub.utils._http")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _checked_text(ds, path: Path, fmt: str, column: str):
    """`ds` (its text column renamed ``text``) if every document is a string of valid UTF-8; else the error
    naming the file and the first bad line or row (datasets keeps numbers as numbers, and keeps bytes that
    are not UTF-8 until Python decodes them, mid-tokenization)."""
    import datasets
    import pyarrow as pa

    feature = ds.features["text"]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        try:
            for chunk in ds.data.column("text").chunks:
                chunk.validate(full=True)  # checks UTF-8, at Arrow's speed
        except pa.ArrowInvalid as err:
            raise locate_table_error(path, fmt, column, err) from None
        return ds
    found = find_table_error(path, fmt, column)  # JSON: the line; any table: bytes that are not UTF-8
    if found is not None:
        raise found
    for i, text in enumerate(ds["text"]):
        if text is not None and not isinstance(text, str):
            # CSV: line 1 is the header (a quoted field spanning lines would shift this count).
            raise text_value_error(f"{path}, line {i + 2}" if fmt == "csv" else f"{path}, row {i}", column, text)
    raise InputFileError(f"{path}: column {column!r} has type {feature}, not text")


def single_document(parts) -> str | None:
    """The text if ``parts`` (from :meth:`TextSource.parts`) hold exactly one document, else None."""
    if len(parts) != 1 or parts[0].num_rows != 1:
        return None
    row = parts[0][0]
    return (row["text"] or "") if "text" in row else read_text_file(Path(row["path"]))
