"""Resumable, checked downloads into gptlite's cache: the one place gptlite itself touches the network.

Used by conversion (OpenAI's GPT-2 release), by training (the book's ``the-verdict.txt``) and, for Hub models,
by loading and conversion alike (:func:`hub_snapshot`, through ``huggingface_hub``). A file is
fetched to ``<name>.part``, resumed with a ``Range`` request when a partial copy exists, and renamed to
its final name only after its size (and, when known, its SHA-256) matched, so a file under its final
name is complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

from gptlite.folders import move_into_place

__all__ = ["DownloadError", "cache_root", "download", "download_folder", "hub_snapshot", "is_offline", "sha256_of"]

_CHUNK = 1 << 20
_TIMEOUT = 30


class DownloadError(OSError):
    """A file could not be fetched (offline, unreachable, unknown, or a size or checksum mismatch)."""


def is_offline() -> bool:
    """True when HF_HUB_OFFLINE asks for no network access (read at call time, unlike huggingface_hub)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` if given, else ``$XDG_CACHE_HOME/gptlite``, else ``~/.cache/gptlite``."""
    if cache_dir is not None:
        return Path(cache_dir)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "gptlite" if xdg else Path.home() / ".cache" / "gptlite"


@contextmanager
def download_folder(folder: Path) -> Iterator[Path]:
    """Make ``folder`` (and its missing parents) for downloads; if the block fails, remove again those this call
    made that are still empty, so a failed first download leaves no empty cache folders (a partial ``.part``
    file keeps its folder, to resume)."""
    created = [path for path in (folder, *folder.parents) if not path.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for path in created:  # innermost first
            try:
                path.rmdir()
            except OSError:  # not empty
                break
        raise


def _urlopen(request: urllib.request.Request, timeout: float):
    """The one place that touches the network (tests replace it)."""
    return urllib.request.urlopen(request, timeout=timeout)


def _remote_size(url: str) -> int:
    with _urlopen(urllib.request.Request(url, method="HEAD"), _TIMEOUT) as response:
        length = response.headers.get("Content-Length")
    if length is None:
        raise DownloadError(f"{url}: the server did not say how large the file is")
    return int(length)


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, size: int | None = None, sha256: str | None = None) -> None:
    """Fetch ``url`` to ``dest``, resuming ``dest.part`` with a Range request, then check size and checksum.

    ``size`` (bytes) is asked of the server with a HEAD request when not given. With ``sha256``, a
    finished download whose digest differs is deleted and reported, so the next run starts afresh.
    Network errors propagate as ``urllib.error.URLError`` / ``HTTPError`` for the caller to word.
    """
    size = _remote_size(url) if size is None else size
    if dest.is_file() and dest.stat().st_size == size:
        return
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if have > size:
        part.unlink()
        have = 0
    if have < size:
        headers = {"Range": f"bytes={have}-"} if have else {}
        with _urlopen(urllib.request.Request(url, headers=headers), _TIMEOUT) as response:
            # 206: the server resumed where we asked; 200: it sent the whole file again.
            mode = "ab" if have and response.status == 206 else "wb"
            with open(part, mode) as f:
                shutil.copyfileobj(response, f, _CHUNK)
    got = part.stat().st_size
    if got != size:
        raise DownloadError(f"{url}: downloaded {got} bytes, expected {size}; run again to resume")
    if sha256 is not None:
        digest = sha256_of(part)
        if digest != sha256:
            part.unlink()
            raise DownloadError(f"{url}: the downloaded file's SHA-256 is {digest}, expected {sha256}; "
                                "it was deleted, run again to fetch it afresh")
    move_into_place(part, dest)


def hub_snapshot(repo_id: str, cache_dir: str | Path | None = None) -> Path:
    """Download (or find in the cache) a GPT-2 repo's config.json and weights; return the local folder.

    safetensors weights are preferred; `pytorch_model.bin` is fetched only when a repo has none.
    """
    offline = is_offline()

    def fetch(patterns: list[str]) -> Path:
        try:
            return Path(huggingface_hub.snapshot_download(
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
