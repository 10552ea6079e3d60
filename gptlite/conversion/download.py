"""Fetching OpenAI's GPT-2 release from its public blobs (Hub snapshots: :func:`gptlite.downloads.hub_snapshot`).

Partial downloads resume (through :mod:`gptlite.downloads`), sizes are checked, and a fetch fails at once with a
clear message when offline (`HF_HUB_OFFLINE=1`) or when the network cannot be reached; a complete cached copy is
used offline.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

from ..downloads import DownloadError, cache_root, download, download_folder, is_offline

__all__ = ["OPENAI_SIZES", "DownloadError", "is_offline", "openai_checkpoint"]

# OpenAI's download_model.py (and the book's gpt_download.py) fetch from here: models/<size>/<file>.
OPENAI_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
OPENAI_SIZES = ("124M", "355M", "774M", "1558M")
# Only what conversion reads: the .meta graph is TensorFlow's, and the BPE files ship with gptlite.
OPENAI_FILES = ("checkpoint", "hparams.json", "model.ckpt.index", "model.ckpt.data-00000-of-00001")


def openai_checkpoint(size: str, cache_dir: str | Path | None = None) -> Path:
    """OpenAI's GPT-2 release for `size` (124M, 355M, 774M, 1558M) in a local folder, downloaded if needed.

    Files are kept under `cache_dir` (default: $XDG_CACHE_HOME/gptlite or ~/.cache/gptlite) in
    `openai-gpt2/<size>`. A finished file is renamed from `<name>.part` only after its size matched the
    server's, so an existing file is complete.
    """
    if size not in OPENAI_SIZES:
        raise DownloadError(f"unknown OpenAI GPT-2 size {size!r}; choose one of {', '.join(OPENAI_SIZES)}")
    folder = cache_root(cache_dir) / "openai-gpt2" / size
    missing = [name for name in OPENAI_FILES if not (folder / name).is_file()]
    if is_offline():
        if missing:
            raise DownloadError(
                f"cannot fetch OpenAI's GPT-2 {size}: HF_HUB_OFFLINE is set and {folder} lacks "
                f"{', '.join(missing)}. Pass a local checkpoint folder, or retry online."
            )
        return folder
    with download_folder(folder):
        for name in OPENAI_FILES:
            _fetch_openai_file(f"{OPENAI_URL}/{size}/{name}", folder / name, size)
    return folder


def _fetch_openai_file(url: str, dest: Path, size: str) -> None:
    try:
        download(url, dest)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(
            f"cannot fetch OpenAI's GPT-2 {size} from {url}: {reason}. Check the connection and run "
            f"again (finished files are kept and partial ones resume), or pass a local folder."
        ) from None
