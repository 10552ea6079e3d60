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


# -- the Hub, faked at huggingface_hub's boundary (tests/test_hub.py and the training push) --------------------


class FakeHub:
    """Records what would have been sent: one entry per commit, {path_in_repo: bytes}."""

    def __init__(self, existing_readme: Path | None = None):
        self.existing_readme = existing_readme
        self.created: list[dict] = []
        self.commits: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub import RepoUrl

        self.created.append({"repo_id": repo_id, **kwargs})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, **kwargs):
        # The files live in a temporary folder that push_to_hub deletes afterwards: read them now.
        from huggingface_hub import CommitInfo

        files = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        self.commits.append({"repo_id": repo_id, "files": files, **kwargs})
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{'0' * 40}",
            commit_message=kwargs.get("commit_message") or "",
            commit_description=kwargs.get("commit_description") or "",
            oid="0" * 40,
        )

    def hf_hub_download(self, repo_id, filename, **kwargs):
        from huggingface_hub.errors import EntryNotFoundError

        if self.existing_readme is None:
            raise EntryNotFoundError(f"{filename} not found in {repo_id}")
        return str(self.existing_readme)

    @property
    def files(self) -> dict[str, bytes]:
        assert len(self.commits) == 1
        return self.commits[0]["files"]

    def readme(self) -> str:
        return self.files["README.md"].decode("utf-8")

    def materialize(self, folder: Path) -> Path:
        """The committed files as a local folder, as a download of the repository would give."""
        for name, data in self.files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        return folder


@pytest.fixture
def hub(monkeypatch):
    """The Hub, faked: ``HfApi.create_repo`` / ``create_commit`` (what transformers' ``push_to_hub`` calls) record
    the commit's files, ``hf_hub_download`` of the existing README answers "none" or a local one, and any other
    network access fails the test (sockets cannot connect)."""
    import socket

    import transformers.modeling_utils
    import transformers.utils.hub
    from huggingface_hub import HfApi

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)

    fake = FakeHub()
    # Bound methods of `fake`: set on the class, they are called without the HfApi instance.
    monkeypatch.setattr(HfApi, "create_repo", fake.create_repo)
    monkeypatch.setattr(HfApi, "create_commit", fake.create_commit)
    for unexpected in ("upload_folder", "upload_file", "create_branch"):
        monkeypatch.setattr(HfApi, unexpected, lambda *a, _name=unexpected, **kw: pytest.fail(f"unexpected {_name}"))
    # Transformers releases that call huggingface_hub's module-level functions (methods bound to a default HfApi at
    # import) bypass the class patches above: patch those names too where they exist.
    # (transformers 5.4's save_pretrained imports create_repo straight into modeling_utils.)
    for module in (transformers.utils.hub, transformers.modeling_utils):
        for name in ("create_repo", "create_commit"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, getattr(fake, name))
    monkeypatch.setattr("huggingface_hub.repocard.hf_hub_download", fake.hf_hub_download)
    return fake
