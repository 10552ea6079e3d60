import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptlite.folders import (
    FolderRefused,
    FolderWriteError,
    atomic_folder,
    check_output_folder,
    is_disk_full,
    process_alive,
)


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def make_folder(folder: Path, text: str) -> None:
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text(text)
    (folder / "sub" / "weights.bin").write_bytes(text.encode() * 100)


def test_a_new_folder_appears_only_when_the_block_ends(tmp_path):
    final = tmp_path / "out"
    with atomic_folder(final) as tmp:
        make_folder(tmp, "new")
        assert not final.exists() and tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-")
    assert tree_hashes(final) == {"config.json": hashlib.sha256(b"new").hexdigest(),
                                  "sub/weights.bin": hashlib.sha256(b"new" * 100).hexdigest()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_existing_folder_is_replaced_whole(tmp_path):
    final = tmp_path / "out"
    make_folder(final, "old")
    (final / "only-in-old").write_text("x")
    with atomic_folder(final) as tmp:
        make_folder(tmp, "new")
        assert (final / "config.json").read_text() == "old"
    assert sorted(tree_hashes(final)) == ["config.json", "sub/weights.bin"]
    assert (final / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("failure", [RuntimeError("bad tensor"), KeyboardInterrupt()])
def test_a_failure_leaves_the_previous_folder_byte_identical(tmp_path, failure):
    final = tmp_path / "out"
    make_folder(final, "old")
    before = tree_hashes(final)
    with pytest.raises(type(failure)), atomic_folder(final) as tmp:
        make_folder(tmp, "new")
        raise failure
    assert tree_hashes(final) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_full_disk_says_so_and_names_both_folders(tmp_path):
    final = tmp_path / "out"
    make_folder(final, "old")
    before = tree_hashes(final)
    with pytest.raises(FolderWriteError) as info, atomic_folder(final) as tmp:
        (tmp / "config.json").write_text("new")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "model.safetensors"))
    assert str(info.value) == f"No space left on device while writing {final}; {final} is intact"
    assert info.value.errno == errno.ENOSPC
    assert tree_hashes(final) == before


def test_torch_zip_writer_and_safetensors_disk_full_messages_are_recognised():
    assert is_disk_full(RuntimeError("SafetensorError: I/O error: No space left on device (os error 28)"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0") from inner
    except RuntimeError as err:
        assert is_disk_full(err)
    assert not is_disk_full(RuntimeError("shape mismatch"))


def test_a_sibling_left_by_a_killed_writer_is_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.tmp-{int(dead.stdout)}"
    stale.mkdir()
    live = tmp_path / f".out.tmp-{os.getppid()}"  # a live process's sibling is left alone
    live.mkdir()
    assert not process_alive(int(dead.stdout)) and process_alive(os.getppid())
    with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "f").write_text("x")
    assert not stale.exists() and live.exists()


def test_output_checks_refuse_what_would_destroy_something(tmp_path):
    src = tmp_path / "models" / "a"
    make_folder(src, "src")
    with pytest.raises(FolderRefused, match=r"output folder .*a is the input .*a; write to another folder"):
        check_output_folder(src, inputs=[src])
    with pytest.raises(FolderRefused, match="contains the input"):
        check_output_folder(tmp_path / "models", inputs=[src])
    (tmp_path / "file").write_text("x")
    with pytest.raises(FolderRefused, match="exists and is not a folder"):
        check_output_folder(tmp_path / "file")
    other = tmp_path / "other"
    make_folder(other, "mine")
    with pytest.raises(FolderRefused, match=r"other is not empty and does not hold a gptlite model; pass --overwrite"):
        check_output_folder(other, describe="a gptlite model")
    assert check_output_folder(other, overwrite=True) == other
    assert check_output_folder(other, is_previous_output=lambda f: (f / "config.json").read_text() == "mine") == other
    (tmp_path / "empty").mkdir()
    assert check_output_folder(tmp_path / "empty") == tmp_path / "empty"
    assert check_output_folder(tmp_path / "new", inputs=[tmp_path / "missing"]) == tmp_path / "new"


def test_a_real_full_disk_under_torch_save_keeps_the_previous_folder(small_tmpfs):
    import torch

    final = small_tmpfs / "out"
    final.mkdir()
    (final / "weights.pt").write_bytes(b"old" * 1000)
    before = tree_hashes(final)
    with pytest.raises(FolderWriteError, match=f"^No space left on device while writing {final}; {final} is intact$"):
        with atomic_folder(final) as tmp:
            torch.save(torch.zeros(1 << 20), tmp / "weights.pt")  # 4 MiB into a 1 MiB disk
    assert tree_hashes(final) == before
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["out"]
