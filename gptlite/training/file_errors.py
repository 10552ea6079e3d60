"""Where a data file is broken: the byte offset of text that is not UTF-8, the line of malformed JSON, the row
whose text is not a string.

🤗 ``datasets`` reads the files (the fast path stays theirs); its errors name neither the file nor the line
(``DatasetGenerationError``, or a ``UnicodeDecodeError`` at a position inside some chunk). When it fails, or
when the text column it produced is not text, the file is scanned here to find the first culprit, and the
result is one :class:`~gptlite.errors.InputFileError` line: ``FILE, line N: ...``.
"""

from __future__ import annotations

import codecs
import json
import logging
from pathlib import Path
from typing import Any

from gptlite.errors import InputFileError, one_line

__all__ = ["find_table_error", "locate_table_error", "read_utf8_text", "text_value_error", "utf8_error"]

_CHUNK = 1 << 20


def _drop_json_failure_log(record: logging.LogRecord) -> bool:
    # datasets' json builder logs "Failed to load JSON from file ..." before raising; the error it raises is
    # translated into one line here, so its log line would only be a second, vaguer, report of the same thing.
    return not str(record.msg).startswith("Failed to load JSON from file")


logging.getLogger("datasets.packaged_modules.json.json").addFilter(_drop_json_failure_log)


def utf8_error(path: Path) -> InputFileError | None:
    """The first byte of `path` that is not UTF-8, as an error naming the file, byte offset and line; else None."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, newlines = 0, 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                # err.start counts from the bytes the decoder still held from the previous chunk.
                held = len(err.object) - len(chunk)
                at = offset - held + err.start
                line = newlines + err.object.count(b"\n", 0, err.start) + 1
                return InputFileError(
                    f"{path}: not UTF-8 text: byte 0x{err.object[err.start]:02x} at byte offset {at} (line {line}); "
                    "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                )
            if not chunk:
                return None
            offset += len(chunk)
            newlines += chunk.count(b"\n")


def read_utf8_text(path: Path) -> str:
    """The text of `path` read as the book reads a file (text mode, UTF-8); not UTF-8: an error naming the byte."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise utf8_error(path) or InputFileError(f"{path}: not UTF-8 text ({err})") from None


def _describe(value: Any) -> str:
    """``42 (a number)``: the value as JSON, shortened, and what kind of value it is."""
    if isinstance(value, bool):
        kind = "a boolean"
    elif isinstance(value, (int, float)):
        kind = "a number"
    else:
        kind = {list: "a list", dict: "an object", str: "a string"}.get(type(value), type(value).__name__)
    shown = json.dumps(value, default=str)
    return f"{shown[:40]}{'...' if len(shown) > 40 else ''} ({kind})"


def text_value_error(where: str, column: str, value: Any) -> InputFileError:
    """The error for a document whose text column holds `value` (not a string)."""
    return InputFileError(
        f"{where}: column {column!r} holds {_describe(value)}, not a string; every document must be text"
    )


def _json_lines_error(path: Path, column: str) -> InputFileError | None:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.decode("utf-8")  # utf8_error ran first
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                return InputFileError(f"{path}, line {number}: not valid JSON (column {err.colno}: {err.msg})")
            if not isinstance(row, dict):
                return InputFileError(f"{path}, line {number}: expected a JSON object per line, got {_describe(row)}")
            if row.get(column) is not None and not isinstance(row[column], str):
                return text_value_error(f"{path}, line {number}", column, row[column])
    return None


def _json_document_error(path: Path, column: str) -> InputFileError | None:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        return InputFileError(f"{path}, line {err.lineno} column {err.colno}: not valid JSON ({err.msg})")
    if isinstance(rows, list):
        for i, row in enumerate(rows):
            if isinstance(row, dict) and row.get(column) is not None and not isinstance(row[column], str):
                return text_value_error(f"{path}, item {i} of the array", column, row[column])
    return None


def _json_error(path: Path, column: str) -> InputFileError | None:
    # datasets' json builder reads JSON Lines, and .json files holding one array of objects.
    with open(path, "rb") as f:
        start = f.read(_CHUNK).lstrip()[:1]
    if start == b"[":
        return _json_document_error(path, column)
    return _json_lines_error(path, column)


def find_table_error(path: Path, fmt: str, column: str) -> InputFileError | None:
    """The first line of `path` that is not UTF-8, not JSON, or whose text is not a string; None if none is."""
    found = utf8_error(path) if fmt in ("json", "csv") else None
    if found is None and fmt == "json":
        found = _json_error(path, column)
    return found


def locate_table_error(path: Path, fmt: str, column: str, err: BaseException | None = None) -> InputFileError:
    """Why datasets could not read `path` (or read a non-text column), naming the file and the line.

    `err` is what datasets raised, if anything; it is only quoted when the scan finds nothing more precise.
    """
    found = find_table_error(path, fmt, column)
    if found is not None:
        return found
    if isinstance(err, InputFileError):
        return err
    cause = err
    while cause is not None and cause.__cause__ is not None:  # DatasetGenerationError wraps the real one
        cause = cause.__cause__
    why = one_line(cause) if cause is not None else "unreadable"
    return InputFileError(f"{path}: cannot be read as {fmt} ({why})")
