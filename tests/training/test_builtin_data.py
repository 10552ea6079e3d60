"""``--data the-verdict``: the book's text fetched once into the cache, checked, resumable, and a clear line offline.

Nothing here reaches the internet: downloads come from a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import urllib.error

import pytest

from gptlite import downloads
from gptlite.downloads import DownloadError, sha256_of
from gptlite.training import builtin_data
from gptlite.training.builtin_data import BUILTIN_TEXTS, builtin_text
from gptlite.training.cli import main
from gptlite.training.sources import resolve_files
from tests.conftest import SHARED_DATA, LocalServer

TEXT = ("I had always thought Jack Gisburn rather a cheap genius--though a good fellow enough.\n" * 50).encode()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty gptlite cache, and no HF_HUB_OFFLINE from the environment."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "xdg" / "gptlite" / "data"


def serve_as_the_verdict(monkeypatch, server: LocalServer, data: bytes = TEXT, sha256: str | None = None) -> None:
    entry = dataclasses.replace(BUILTIN_TEXTS["the-verdict"], url=server.url("/the-verdict.txt"), size=len(data),
                                sha256=sha256 or hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(builtin_data.BUILTIN_TEXTS, "the-verdict", entry)


def test_the_registered_size_and_checksum_are_the_books_file():
    verdict = SHARED_DATA / "the-verdict.txt"
    if not verdict.exists():
        pytest.skip(f"{verdict} not present")
    entry = BUILTIN_TEXTS["the-verdict"]
    assert (entry.size, entry.sha256) == (verdict.stat().st_size, sha256_of(verdict))
    assert entry.url == ("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/"
                         "ch02/01_main-chapter-code/the-verdict.txt")


def test_fetched_once_resumed_after_a_cut_and_then_read_from_the_cache(cache, monkeypatch):
    with LocalServer({"/the-verdict.txt": TEXT}) as server:
        serve_as_the_verdict(monkeypatch, server)
        server.cut_after = 1000
        with pytest.raises(DownloadError, match="downloaded 1000 bytes"):
            resolve_files(["the-verdict"])
        assert resolve_files(["the-verdict"]) == [(cache / "the-verdict.txt").resolve()]
        assert (cache / "the-verdict.txt").read_bytes() == TEXT
        assert server.requests[-1] == ("GET", "/the-verdict.txt", "bytes=1000-")
        server.requests.clear()
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # cached: offline is fine, and nothing is asked
        assert builtin_text("the-verdict") == cache / "the-verdict.txt"
        assert server.requests == []


def test_a_download_with_the_wrong_checksum_is_refused(cache, monkeypatch):
    with LocalServer({"/the-verdict.txt": TEXT}) as server:
        serve_as_the_verdict(monkeypatch, server, sha256="0" * 64)
        with pytest.raises(DownloadError, match="SHA-256 .* expected 0{64}; it was deleted"):
            builtin_text("the-verdict")
    assert not cache.exists()  # the bad file is deleted, and the folders made for it


def test_a_local_file_or_folder_of_that_name_wins(tmp_path, cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "the-verdict").mkdir()
    (tmp_path / "the-verdict" / "mine.txt").write_text("my own verdict", encoding="utf-8")
    monkeypatch.setattr(downloads, "_urlopen", lambda *a, **k: pytest.fail("the network was used"))
    assert resolve_files(["the-verdict"]) == [(tmp_path / "the-verdict" / "mine.txt").resolve()]


@pytest.mark.parametrize("recipe", ["book-ch5", "book-appendix-d"])
def test_offline_and_not_cached_is_one_line_and_exit_code_1(recipe, tmp_path, cache, monkeypatch, capsys):
    """Both book recipes train on the-verdict by default; offline, they say so and how to pass a local copy."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(downloads, "_urlopen", lambda *a, **k: pytest.fail("the network was used"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--recipe", recipe, "--output-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "tokens")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("gptlite-train: error: --data the-verdict: HF_HUB_OFFLINE is set")
    assert "pass it with --data PATH/the-verdict.txt" in err and BUILTIN_TEXTS["the-verdict"].url in err


def test_unreachable_and_not_cached_says_so(cache, monkeypatch):
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(downloads, "_urlopen", unreachable)
    with pytest.raises(DownloadError, match=r"cannot fetch https://\S+ \(.*Network is unreachable\) and .* is not "
                                            r"cached yet; retry online .* or download .* --data PATH/the-verdict.txt"):
        builtin_text("the-verdict")
    assert not cache.parent.parent.exists()  # the cache folders it made for the download went again


def test_a_missing_the_verdict_txt_points_to_the_built_in_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="data path the-verdict.txt does not exist; --data the-verdict fetches"):
        resolve_files(["the-verdict.txt"])
