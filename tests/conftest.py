import os
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Tiny configs use bos/eos 50256 beyond their vocabulary on purpose (GPT-2's ids); transformers warns.
warnings.filterwarnings("ignore", message=".*must be `None` or an integer within the vocabulary.*")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (marked cuda)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(no_gpu)


@pytest.fixture
def verdict_text() -> str:
    path = SHARED_DATA / "the-verdict.txt"
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path.read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size)`` mounts a tmpfs of ``size`` (e.g. "1m") under tmp_path and returns it; skips where
    mounting is not allowed (needs root). Unmounted at the end."""
    mounted = []

    def mount(size: str) -> Path:
        point = tmp_path / f"tmpfs-{len(mounted)}"
        point.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                                               capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        # Lazy: a failed torch.save may keep its file open until the exception is collected.
        result = subprocess.run(["umount", "-l", str(point)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


@pytest.fixture
def small_tmpfs(tmpfs):
    """A 1 MiB tmpfs."""
    return tmpfs("1m")
