"""Training texts known by name: ``--data the-verdict`` is the book's ``the-verdict.txt``, fetched on first use.

The file is downloaded once from the book's GitHub repository into gptlite's cache
(``$XDG_CACHE_HOME/gptlite/data`` or ``~/.cache/gptlite/data``), resumed if interrupted, and kept only if
its size and SHA-256 are the book's. A name is a built-in text only when no file or folder of that name
exists, so a local ``the-verdict`` folder still means that folder.
"""

from __future__ import annotations

import urllib.error
from dataclasses import dataclass
from pathlib import Path

from gptlite.downloads import DownloadError, cache_root, download, download_folder, is_offline

__all__ = ["BUILTIN_TEXTS", "BuiltinText", "builtin_text"]


@dataclass(frozen=True)
class BuiltinText:
    """A text file gptlite fetches by name: where from, and the size and digest it must have."""

    filename: str
    url: str
    size: int
    sha256: str


BUILTIN_TEXTS: dict[str, BuiltinText] = {
    # Edith Wharton's short story (public domain), the text chapters 2 and 5 and appendix D train on.
    "the-verdict": BuiltinText(
        filename="the-verdict.txt",
        url="https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt",
        size=20_479,
        sha256="b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
    ),
}


def builtin_text(name: str, cache_dir: str | Path | None = None) -> Path:
    """The local path of built-in text ``name``, downloaded into ``<cache>/data/`` on first use.

    Raises:
        KeyError: for a name that is not a built-in text.
        DownloadError: offline (``HF_HUB_OFFLINE``) or unreachable with no cached copy, or a bad download;
            the message says how to pass a local copy instead.
    """
    text = BUILTIN_TEXTS[name]
    dest = cache_root(cache_dir) / "data" / text.filename
    if dest.is_file() and dest.stat().st_size == text.size:
        return dest
    local_copy = f"download {text.url} yourself and pass it with --data PATH/{text.filename}"
    if is_offline():
        raise DownloadError(f"--data {name}: HF_HUB_OFFLINE is set and {dest} is not cached yet; {local_copy}")
    try:
        with download_folder(dest.parent):
            download(text.url, dest, size=text.size, sha256=text.sha256)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"--data {name}: {text.url} answered HTTP {err.code} {err.reason}; {local_copy}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"--data {name}: cannot fetch {text.url} ({reason}) and {dest} is not cached yet; "
                            f"retry online (a partial download resumes), or {local_copy}") from None
    return dest
