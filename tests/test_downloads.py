"""gptlite.downloads against a real HTTP server on 127.0.0.1: resume with Range, size and SHA-256 checks."""

from __future__ import annotations

import hashlib

import pytest

from gptlite.downloads import DownloadError, cache_root, download, sha256_of
from tests.conftest import LocalServer

DATA = bytes(range(256)) * 40  # 10,240 bytes


def test_download_resumes_a_cut_download_and_keeps_the_finished_file(tmp_path):
    dest = tmp_path / "blob.bin"
    with LocalServer({"/blob.bin": DATA}) as server:
        server.cut_after = 3000
        with pytest.raises(DownloadError, match=r"downloaded 3000 bytes, expected 10240; run again to resume"):
            download(server.url("/blob.bin"), dest, size=len(DATA), sha256=hashlib.sha256(DATA).hexdigest())
        assert not dest.exists() and (tmp_path / "blob.bin.part").stat().st_size == 3000

        download(server.url("/blob.bin"), dest, size=len(DATA), sha256=hashlib.sha256(DATA).hexdigest())
        assert dest.read_bytes() == DATA and not (tmp_path / "blob.bin.part").exists()
        assert server.requests[-1] == ("GET", "/blob.bin", "bytes=3000-")

        server.requests.clear()
        download(server.url("/blob.bin"), dest, size=len(DATA))  # complete: nothing is fetched
        assert server.requests == []
        download(server.url("/blob.bin"), dest)  # without a size: the server is asked, with HEAD only
        assert [method for method, _, _ in server.requests] == ["HEAD"]


def test_a_bad_checksum_is_an_error_and_the_file_is_not_kept(tmp_path):
    dest = tmp_path / "blob.bin"
    wrong = hashlib.sha256(b"something else").hexdigest()
    with LocalServer({"/blob.bin": DATA}) as server:
        with pytest.raises(DownloadError, match=f"SHA-256 is {hashlib.sha256(DATA).hexdigest()}, expected {wrong}"):
            download(server.url("/blob.bin"), dest, size=len(DATA), sha256=wrong)
    assert not dest.exists() and not (tmp_path / "blob.bin.part").exists()


def test_sha256_and_cache_root(tmp_path, monkeypatch):
    (tmp_path / "f").write_bytes(DATA)
    assert sha256_of(tmp_path / "f") == hashlib.sha256(DATA).hexdigest()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "gptlite"
    assert cache_root(tmp_path / "mine") == tmp_path / "mine"
