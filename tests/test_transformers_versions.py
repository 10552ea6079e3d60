"""Remote code on the transformers versions users have: a saved folder loads and generates on the floor (4.54) and
the last 4.x as on the installed 5.x; below the floor, loading fails with one line naming the version needed.

Each version gets a venv of its own, created once per test run: the installed torch's version (unpacked once, then
hard-linked into each venv), then that transformers from PyPI with the dependencies it resolves (packages of the main
environment, made for the newest transformers, must not leak in: transformers 5.25 brings `kernels`, which 4.54's
huggingface_hub cannot import). The child process is the remote-code test's: gptlite is hidden, HF_HOME is fresh.
Skipped only when pip cannot reach the package index.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlite.compat import MIN_TRANSFORMERS
from tests.conftest import (
    CHILD,
    NEW_TOKENS,
    PROMPT,
    check_every_auto_class,
    run_child,
    saved_folder_and_expected_tokens,
)

pytestmark = pytest.mark.slow

FLOOR = "4.54.1"  # the lowest minor that works (MIN_TRANSFORMERS), at its last patch release
LAST_4X = "4.57.6"
BELOW_FLOOR = "4.53.3"


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def transformers_venv(tmp_path_factory):
    """python of a venv holding transformers==version; one venv per version per test run."""
    root = tmp_path_factory.mktemp("transformers-venvs")

    def new_venv(name: str) -> tuple[Path, Path]:
        subprocess.run([sys.executable, "-m", "venv", str(root / name)], check=True)
        python = root / name / "bin" / "python"
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
        return python, Path(site)

    @functools.cache
    def torch_site() -> Path:
        """site-packages of a venv holding the installed torch's version, installed once (unpacking takes ~25 s)."""
        python, site = new_venv("torch")
        reachable = _pip(python, "index", "versions", "transformers")
        if reachable.returncode != 0:
            pytest.skip(f"pip cannot reach the package index: {reachable.stderr.strip()[-300:]}")
        # The installed torch (a plain requirement would pull another build) with its own dependencies.
        installed = _pip(python, "install", "--quiet", f"torch=={torch.__version__.split('+')[0]}")
        assert installed.returncode == 0, installed.stderr[-3000:]
        return site

    @functools.cache
    def python_with(version: str) -> Path:
        torch_files = torch_site()
        python, site = new_venv(version)
        # torch's installed files, hard-linked (the same files pip wrote, with their metadata), then that
        # transformers with the dependencies of its own time: a venv as its users have it.
        for entry in torch_files.iterdir():
            if not (site / entry.name).exists():
                subprocess.run(["cp", "-al", str(entry), str(site / entry.name)], check=True)
        installed = _pip(python, "install", "--quiet", f"transformers=={version}")
        assert installed.returncode == 0, installed.stderr[-3000:]
        return python

    return python_with


def test_the_floor_is_the_minimum_compat_declares():
    assert FLOOR.startswith(".".join(map(str, MIN_TRANSFORMERS)) + ".")
    assert BELOW_FLOOR.startswith(f"{MIN_TRANSFORMERS[0]}.{MIN_TRANSFORMERS[1] - 1}.")


@pytest.mark.parametrize("version", [FLOOR, LAST_4X])
def test_a_saved_folder_generates_the_same_tokens_on_transformers_4(tmp_path, transformers_venv, version):
    python = transformers_venv(version)
    folder, expected = saved_folder_and_expected_tokens(tmp_path)
    result = run_child(CHILD, tmp_path, str(folder), PROMPT, str(NEW_TOKENS), python=str(python))
    assert result.returncode == 0, result.stderr[-4000:]
    child = json.loads(result.stdout.strip().splitlines()[-1])
    assert child["input_ids"] == expected["input_ids"]
    assert child["output"] == expected["output"]


@pytest.mark.parametrize("version", [FLOOR, LAST_4X])
def test_every_auto_class_and_batched_generation_on_transformers_4(tmp_path, transformers_venv, version):
    check_every_auto_class(tmp_path, python=str(transformers_venv(version)))


def test_below_the_floor_loading_names_the_version_needed(tmp_path, transformers_venv):
    python = transformers_venv(BELOW_FLOOR)
    folder, _ = saved_folder_and_expected_tokens(tmp_path)
    result = run_child(CHILD, tmp_path, str(folder), PROMPT, str(NEW_TOKENS), python=str(python))
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    needed = ".".join(map(str, MIN_TRANSFORMERS))
    assert last_line == (
        f"ImportError: gptlite models need transformers >= {needed} (this is {BELOW_FLOOR}): "
        f"pip install -U 'transformers>={needed}'"
    )
