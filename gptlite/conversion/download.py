"""Fetching checkpoints: Hub snapshots through huggingface_hub, OpenAI's release from its public blobs.

Both resume partial downloads (OpenAI's through :mod:`gptlite.downloads`), check sizes, and fail at once
with a clear message when offline (`HF_HUB_OFFLINE=1`) or when the network cannot be reached; a complete
cached copy is used offline.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

from gptlite.downloads import DownloadError, cache_root, download, download_folder, is_offline

__all__ = ["OPENAI_SIZES", "DownloadError", "hub_snapshot", "is_offline", "openai_checkpoint"]

# OpenAI's download_model.py (and the book's gpt_download.py) fetch from here: models/<size>/<file>.
OPENAI_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
OPENAI_SIZES = ("124M", "355M", "774M", "1558M")
# Only what conversion reads: the .meta graph is TensorFlow's, and the BPE files ship with gptlite.
OPENAI_FILES = ("checkpoint", "hparams.json", "model.ckpt.index", "model.ckpt.data-00000-of-00001")


def hub_snapshot(repo_id: str, cache_dir: str | Path | None = None) -> Path:
    """Download (or find in the cache) a GPT-2 repo's config.json and weights; return the local folder.

    safetensors weights are preferred; `pytorch_model.bin` is fetched only when a repo has none.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = is_offline()

    def fetch(patterns: list[str]) -> Path:
        try:
            return Path(snapshot_download(
                repo_id, allow_patterns=patterns, cache_dir=cache_dir, local_files_only=offline
            ))
        except (RepositoryNotFoundError, HFValidationError) as err:
            raise DownloadError(f"{repo_id!r} is neither a local folder nor a Hub model ({err})") from None
        except (LocalEntryNotFoundError, ConnectionError, OSError) as err:
            why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
            raise DownloadError(
                f"cannot fetch {repo_id!r}: {why} and it is not in the local cache. Pass a local checkpoint "
                f"folder, or retry online. ({type(err).__name__}: {err})"
            ) from None

    folder = fetch(["config.json", "*.safetensors", "model.safetensors.index.json"])
    if not any(folder.glob("*.safetensors")):
        folder = fetch(["config.json", "pytorch_model.bin"])
    return folder


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
