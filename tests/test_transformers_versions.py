"""Remote code on the transformers versions users have: a saved folder loads and generates on the floor (4.54) and
the last 4.x as on the installed 5.x; below the floor, loading fails with one line naming the version needed.

Each version gets a venv of its own, created once per test run: the installed torch's version, then that transformers
from PyPI with the dependencies it resolves (packages of the main environment, made for the newest transformers,
must not leak in: transformers 5.25 brings `kernels`, which 4.54's huggingface_hub cannot import). The child process
is the remote-code test's: gptlite is hidden, HF_HOME is fresh. Skipped only when pip cannot reach the package index.
"""

from __future__ import annotations

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
    made: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("transformers-venvs")

    def python_with(version: str) -> Path:
        if version not in made:
            venv = root / version
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            python = venv / "bin" / "python"
            reachable = _pip(python, "index", "versions", "transformers")
            if reachable.returncode != 0:
                pytest.skip(f"pip cannot reach the package index: {reachable.stderr.strip()[-300:]}")
            # The installed torch first (a plain requirement would pull another build), then that transformers
            # with the dependencies of its own time: a venv as its users have it.
            for requirement in (f"torch=={torch.__version__.split('+')[0]}", f"transformers=={version}"):
                installed = _pip(python, "install", "--quiet", requirement)
                assert installed.returncode == 0, installed.stderr[-3000:]
            made[version] = python
        return made[version]

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
